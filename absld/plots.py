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
        points = [(int(r["epoch"]), r[key]) for r in history if key in r]  # selection: its epochs only
        if points:
            ax_acc.plot(*zip(*points), marker="o", ms=3, color=color, label=label)
    ax_acc.set_title("accuracy")
    ax_acc.set_ylim(0, 1)
    if ax_acc.lines:
        ax_acc.legend(fontsize=8, frameon=False)
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    save(fig, path)


# --------------------------------------------------------------------------------------------------
# analysis figures (absld analyze)
import math  # noqa: E402
from collections.abc import Mapping  # noqa: E402

TradeoffPoint = tuple[float, tuple[float, float] | None, float | None, tuple[float, float] | None]
"""(avg, (avg_lo, avg_hi) or None, nsd or None, (nsd_lo, nsd_hi) or None), fractions."""


def _model_colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_class_accuracy(class_names: Sequence[str], accuracies: Mapping[str, Mapping[str, Sequence[float]]],
                        attacks: Sequence[tuple[str, str]], path: str | Path,
                        title: str = "Class-wise accuracy") -> None:
    """Grouped bars of class-wise accuracy (%), one panel per attack, one bar colour per model.

    ``accuracies``: ``{model label: {attack: [acc_k for each class]}}`` (fractions);
    ``attacks``: ``[(attack key, column label), ...]`` in panel order. With more than 20 classes the
    bars become markers (one per model and class) so that the panel stays legible.
    """
    import numpy as np

    labels = list(accuracies)
    colors = _model_colors(len(labels))
    num_classes = len(class_names)
    x = np.arange(num_classes)
    many = num_classes > 20
    width = 0.8 / max(len(labels), 1)
    fig_width = 24.0 if many else min(max(10.0, 0.09 * num_classes * len(labels) + 4), 30.0)
    fig, axes = plt.subplots(len(attacks), 1, figsize=(fig_width, 2.6 * len(attacks) + 0.8), sharex=True,
                             squeeze=False)
    for ax, (attack, attack_name) in zip(axes[:, 0], attacks):
        for i, (label, color) in enumerate(zip(labels, colors)):
            acc = accuracies[label].get(attack)
            if acc is None:
                continue
            values = 100 * np.asarray(acc, dtype=float)
            if many:
                ax.plot(x, values, ls="none", marker="o", ms=3, color=color, label=label)
            else:
                ax.bar(x - 0.4 + width * (i + 0.5), values, width=width, color=color, label=label)
        ax.set_ylabel(f"{attack_name}\naccuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    bottom = axes[-1, 0]
    bottom.set_xticks(x)
    bottom.set_xticklabels(class_names, rotation=90 if many else 30, ha="center" if many else "right",
                           fontsize=6 if many else 9)
    bottom.set_xlim(-0.6, num_classes - 0.4)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)


def _error_bar(value: float, interval: tuple[float, float] | None, scale: float = 1.0,
               bounds: tuple[float, float] = (0.0, math.inf)) -> list[list[float]] | None:
    """matplotlib's asymmetric error ``[[below], [above]]`` of an interval clipped to ``bounds`` (the
    statistic's range: accuracies in [0, 1], NSD >= 0); None when it is missing or NaN."""
    if interval is None or not all(v is not None and math.isfinite(v) for v in interval):
        return None
    low, high = max(interval[0], bounds[0]), min(interval[1], bounds[1])
    return [[scale * max(value - low, 0.0)], [scale * max(high - value, 0.0)]]


def plot_fairness_tradeoff(points: Mapping[str, Mapping[str, TradeoffPoint]], attacks: Sequence[tuple[str, str]],
                           path: str | Path, title: str = "Accuracy against unfairness",
                           annotate_max: int = 6) -> None:
    """NSD against Avg per model, one panel per attack, with error bars from the intervals.

    ``points``: ``{model label: {attack: (avg, (avg_lo, avg_hi) | None, nsd | None, (nsd_lo, nsd_hi) | None)}}``
    (fractions; Avg is shown in %). Better models sit to the right (accurate) and low (fair). Error
    bars are clipped to the statistics' ranges; points are labelled in place when there are at most
    ``annotate_max`` models (otherwise colour and marker, in the legend, tell them apart).
    """
    labels = list(points)
    colors = _model_colors(len(labels))
    markers = "osD^v<>pXh*"
    ncols = min(3, len(attacks))
    nrows = math.ceil(len(attacks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.9 * nrows), squeeze=False)
    for ax, (attack, attack_name) in zip(axes.flat, attacks):
        for i, (label, color) in enumerate(zip(labels, colors)):
            point = points[label].get(attack)
            if point is None or point[2] is None or not math.isfinite(point[2]):
                continue
            avg, avg_ci, nsd_value, nsd_ci = point
            xerr = _error_bar(avg, avg_ci, scale=100.0, bounds=(0.0, 1.0))
            yerr = _error_bar(nsd_value, nsd_ci)
            ax.errorbar([100 * avg], [nsd_value], xerr=xerr, yerr=yerr, fmt=markers[i % len(markers)],
                        color=color, ms=6, capsize=2.5, elinewidth=1, label=label)
            if len(labels) > annotate_max:
                continue
            # labels fan out per model so that coinciding points stay readable
            ax.annotate(label, (100 * avg, nsd_value), textcoords="offset points", xytext=(5, 5 - 9 * (i % 4)),
                        fontsize=7, color=color)
        ax.set_title(attack_name)
        ax.set_xlabel("Avg accuracy (%)  → more accurate")
        ax.set_ylabel("NSD  ↓ fairer")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(attacks):]:
        ax.set_visible(False)
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)


def plot_classwise(class_acc: dict[str, Sequence[float]], class_names: Sequence[str], path: str | Path,
                   title: str) -> None:
    """Grouped bars of class-wise accuracy: one group per class, one bar per attack (dict order)."""
    import numpy as np

    names = list(class_acc)
    positions = np.arange(len(class_names))  # (C,)
    width = 0.8 / max(len(names), 1)
    fig_width = min(60.0, max(8.0, len(class_names) * (0.25 + 0.12 * len(names))))
    fig, ax = plt.subplots(figsize=(fig_width, 4.2))
    cmap = plt.get_cmap("tab10")
    for a, name in enumerate(names):
        offsets = positions - 0.4 + width * (a + 0.5)  # (C,) bar a of every group
        ax.bar(offsets, class_acc[name], width=width, color=cmap(a % cmap.N), label=name)
    rotate = len(class_names) > 6
    ax.set_xticks(positions)
    ax.set_xticklabels(class_names, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_ylim(0, 1)
    ax.set_ylabel("class-wise accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.set_title(title)
    save(fig, path)
