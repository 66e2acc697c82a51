"""absld-repro: Anti-Bias Soft Label Distillation and its baselines, reproducibly."""

__version__ = "0.1.0"
