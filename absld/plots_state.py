"""temporary: merged into absld/plots.py once the concurrent edit there is done."""
from __future__ import annotations
from pathlib import Path
from typing import Sequence
from matplotlib.ticker import MaxNLocator

from .plots import plt, save


STATE_LABELS = {
    "w_nat": "natural-term weight w0 (FRL)", "w_boundary": "boundary-term weight w1 (FRL)",
    "eps_255": "training radius ε_k (×255)", "beta": "TRADES β_k", "train_robust_acc": "robust training accuracy t_k",
    "val_robust_acc": "validation PGD accuracy",
}


def plot_class_state(rows: Sequence[dict], keys: Sequence[str], class_names: Sequence[str], path: str | Path,
                     title: str, shown: int = 10) -> None:
    """One panel per key of ``rows`` (epoch, class, <key>...), one curve per class: a method's
    class-wise state over epochs (FRL's weights and radii, CFA's radii, betas and accuracies). With
    more than ``2 * shown`` classes, the min-max band and median over all classes, plus the ``shown``
    classes with the highest and lowest final value of the first key."""
    import numpy as np

    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 4.0), squeeze=False)
    axes = axes[0]
    epochs = sorted({int(r["epoch"]) for r in rows})
    num_classes = len(class_names)

    def series(key: str) -> "np.ndarray":  # (epochs, classes); NaN where absent
        table = np.full((len(epochs), num_classes), np.nan)
        where = {e: i for i, e in enumerate(epochs)}
        for r in rows:
            value = r.get(key)
            if value is not None and value != "":
                table[where[int(r["epoch"])], int(r["class"])] = float(value)
        return table

    first = series(keys[0]) if rows else np.zeros((0, num_classes))
    classes = list(range(num_classes))
    many = num_classes > 2 * shown
    if many and len(epochs):
        final = np.nan_to_num(first[-1], nan=-np.inf)
        order = np.argsort(final, kind="stable")
        classes = sorted(set(order[:shown].tolist()) | set(order[-shown:].tolist()))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for ax, key in zip(axes, keys):
        table = series(key)
        if many and len(epochs):
            ax.fill_between(epochs, np.nanmin(table, axis=1), np.nanmax(table, axis=1), color="0.85",
                            label=f"all {num_classes} classes (min–max)")
            ax.plot(epochs, np.nanmedian(table, axis=1), color="0.4", lw=1.2, ls="--", label="median class")
        for j, k in enumerate(classes):
            ax.plot(epochs, table[:, k], color=cmap(j % cmap.N), lw=1.4, marker="o" if len(epochs) < 12 else None,
                    ms=3, label=class_names[k])
        ax.set_title(STATE_LABELS.get(key, key), fontsize=10)
        ax.set_xlabel("after epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    note = (f" — the {shown} classes with the lowest and highest final {STATE_LABELS.get(keys[0], keys[0])}"
            if many else "")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False,
                    ncol=1 if len(classes) <= 20 else 2)
    fig.suptitle(title + note, fontsize=10)
    save(fig, path)
