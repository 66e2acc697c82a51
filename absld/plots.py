"""Figures (matplotlib, PNG): what people would rather look at than read."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .io import atomic_path  # noqa: E402


def save(fig: "plt.Figure", path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)


def plot_temperatures(rows: Sequence[dict], class_names: Sequence[str], path: str | Path,
                      title: str = "ABSLD class-wise temperatures") -> None:
    """tau_adv and tau_nat per class over epochs (the temperatures used during each epoch)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for k, name in enumerate(class_names):
        series = [r for r in rows if int(r["class"]) == k]
        epochs = [int(r["epoch"]) for r in series]
        for ax, key in zip(axes, ("tau_adv", "tau_nat")):
            ax.plot(epochs, [float(r[key]) for r in series], color=cmap(k % cmap.N), label=name, lw=1.6)
    for ax, key in zip(axes, ("adversarial term  τ_adv", "natural term  τ_nat")):
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("temperature used during the epoch")
    if len(class_names) <= 20:
        axes[1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.suptitle(title)
    save(fig, path)


def plot_training(history: Sequence[dict], path: str | Path, title: str) -> None:
    """Loss and running train accuracies (adversarial / natural) per epoch."""
    epochs = [int(r["epoch"]) for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o", ms=3, color="tab:blue")
    ax_loss.set_title("training loss")
    for key, label, color in (("train_acc_adv", "on x' (adversarial)", "tab:red"),
                              ("train_acc_nat", "on x (natural)", "tab:green"),
                              ("select_pgd_avg", "selection PGD avg", "tab:purple"),
                              ("select_pgd_worst", "selection PGD worst class", "tab:gray")):
        if all(key in r for r in history):
            ax_acc.plot(epochs, [r[key] for r in history], marker="o", ms=3, color=color, label=label)
    ax_acc.set_title("accuracy")
    ax_acc.set_ylim(0, 1)
    if ax_acc.lines:
        ax_acc.legend(fontsize=8, frameon=False)
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    save(fig, path)
