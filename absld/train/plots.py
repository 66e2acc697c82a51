"""Training figures of the distill stage: the training curves and a method's class-wise state."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .. import palette  # noqa: E402
from ..figures import (CLASSES_SHOWN, class_series, integer_epochs, save, select_classes, short_label, _draw_band,  # noqa: E402
                       describe_selection)


def plot_training(history: Sequence[dict], path: str | Path, title: str, method: str | None = None) -> None:
    """Loss and running train accuracies (adversarial / natural) per epoch; the loss curve in the
    colour of ``method`` (:mod:`absld.palette`), as in every other figure and chart of that model."""
    epochs = [int(r["epoch"]) for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o", ms=3,
                 color=palette.color(method) if method else "tab:blue")
    ax_loss.set_title("training loss")
    for key, label, color in (("train_acc_adv", "on x' (adversarial)", "tab:red"),
                              ("train_acc_nat", "on x (natural)", "tab:green"),
                              ("select_pgd_avg", "selection PGD avg", "tab:purple"),
                              ("select_pgd_worst", "selection PGD worst class", "tab:gray")):
        points = [(int(r["epoch"]), r[key]) for r in history if key in r]  # selection: its epochs only
        if points:
            ax_acc.plot(*zip(*points), marker="o", ms=3, color=color, label=label)
    ax_acc.set_title("accuracy")
    ax_acc.set_ylim(0, 1)
    if ax_acc.lines:
        ax_acc.legend(fontsize=8, frameon=False)
    ax_loss.set_ylabel("loss (the method's objective)")
    ax_acc.set_ylabel("accuracy")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        integer_epochs(ax)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    save(fig, path)


STATE_LABELS = {
    "w_nat": "natural-term weight w0_k (FRL)", "w_boundary": "boundary-term weight w1_k (FRL)",
    "eps_255": "training radius ε_k (×255)", "beta": "TRADES β_k", "train_robust_acc": "robust training accuracy t_k",
    "val_robust_acc": "validation PGD accuracy",
    "weight": "class weight w_k (WAT)", "val_cost": "validation TRADES loss (WAT)",
    "val_trades_acc": "validation TRADES-attack accuracy",
}


def plot_class_state(rows: Sequence[dict], keys: Sequence[str], class_names: Sequence[str], path: str | Path,
                     title: str, classes_shown: int = CLASSES_SHOWN) -> None:
    """A method's class-wise state over epochs (FRL's weights and radii, CFA's radii, betas and
    accuracies): one panel per key of ``rows`` (epoch, class, <key>...), one curve per class. With
    more than ``2 * classes_shown`` classes: the min-max band and the median over every class, and
    the curves of the classes with the lowest and highest last value of the first key
    (:func:`select_classes`)."""
    import numpy as np

    num_classes = len(class_names)
    epochs, tables = class_series(rows, keys, num_classes)
    last = tables[keys[0]][-1] if epochs else np.zeros(num_classes)
    selection = select_classes(list(last), classes_shown)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 4.0), squeeze=False)
    shown = list(selection.indices)
    cmap = plt.get_cmap("tab10" if len(shown) <= 10 else "tab20")
    for ax, key in zip(axes[0], keys):
        table = tables[key]
        if selection.gap is not None and epochs:
            _draw_band(ax, epochs, table, num_classes)
        for j, k in enumerate(shown):
            ax.plot(epochs, table[:, k], color=cmap(j % cmap.N), lw=1.4, marker="o" if len(epochs) < 12 else None,
                    ms=3, label=short_label(class_names[k]))
        ax.set_title(STATE_LABELS.get(key, key), fontsize=10)
        ax.set_xlabel("after epoch")
        integer_epochs(ax)
        ax.grid(alpha=0.3)
    ranked = describe_selection(selection, f"the last {STATE_LABELS.get(keys[0], keys[0])}", ("lowest", "highest"))
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False,
                       ncol=1 if len(shown) <= 12 else 2)
    fig.suptitle(title + (f"\n{ranked}" if ranked else ""), fontsize=10, y=1.08 if ranked else 1.02)
    save(fig, path)
