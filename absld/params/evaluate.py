"""``evaluate``: the attacks of the evaluation and their settings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    model_validator,
)

from ..vocab import AA_ATTACK_NAMES, AutoAttackName
from .common import NonNegInt, Pixels, PosInt, Radius, Section, _distinct


class FgsmConfig(Section):
    gauss_std: Annotated[float, Field(ge=0)] = 0.001
    """Start x + gauss_std * N(0, I), as the reference evaluation code."""


class PgdEvalConfig(Section):
    step: Pixels = 2 / 255
    steps: PosInt = 20


class CwEvalConfig(Section):
    step: Pixels = 2 / 255
    steps: PosInt = 20
    kappa: Annotated[float, Field(ge=0)] = 50.0


class AutoAttackConfig(Section):
    backend: Literal["pyautoattack", "torchattacks"] = "pyautoattack"
    """pyautoattack: Croce & Hein's reference code (report this); torchattacks: a cross-check."""
    version: Literal["standard", "rand", "custom"] = "standard"
    attacks: list[AutoAttackName] | None = None
    """The attacks of version custom, in order (e.g. [apgd-ce, apgd-t] on a CPU)."""
    batch_size: PosInt = 500
    n_samples: PosInt | None = None
    """AutoAttack (and so the worst case) only on the first n evaluated images (null: all of
    them); the other attacks still cover evaluate.n_samples. For CPU studies: AA costs ~10-100x PGD."""

    @model_validator(mode="after")
    def _custom_needs_attacks(self) -> "AutoAttackConfig":
        if self.version == "custom" and not self.attacks:
            raise ValueError(f"version custom needs a list of attacks from {', '.join(AA_ATTACK_NAMES)}")
        if self.version != "custom" and self.attacks:
            raise ValueError(f"attacks {self.attacks} are only used with version custom (got {self.version})")
        return self


EvalAttack = Literal["fgsm", "pgd", "cw", "aa"]


class EvaluateConfig(Section):
    n_samples: PosInt | None = None
    """Evaluate the first n test images in test-set order (null: all)."""
    batch_size: PosInt = 256
    eps: Radius = 8 / 255
    seed: NonNegInt = 0
    """Seeds every random start (per sample, so results do not depend on batching) and AutoAttack."""
    amp: bool = False
    """bf16 autocast (runtime.amp on CUDA) for clean, FGSM, PGD and CW and their verdicts; false
    (default): float32 throughout, as the reference evaluations. AutoAttack always runs in float32."""
    cascade: bool = False
    """true: each attack only on the samples robust to every earlier one (per-attack columns then
    mean 'robust to this and all earlier attacks'); false: every attack on every clean-correct
    sample. correct_worst is the same either way."""
    attacks: Annotated[list[EvalAttack], AfterValidator(lambda v: _distinct(v, "attacks", True))] = Field(default_factory=lambda: ["fgsm", "pgd", "cw", "aa"])
    fgsm: FgsmConfig = Field(default_factory=FgsmConfig)
    pgd: PgdEvalConfig = Field(default_factory=PgdEvalConfig)
    cw: CwEvalConfig = Field(default_factory=CwEvalConfig)
    aa: AutoAttackConfig = Field(default_factory=AutoAttackConfig)
