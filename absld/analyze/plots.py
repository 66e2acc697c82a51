"""The analysis figures: class-wise accuracy of every model, and Avg against NSD."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..figures import CLASSES_SHOWN, save, select_classes, short_label, _label_groups, _mark_gap, describe_selection, model_colors  # noqa: E402


def plot_class_accuracy(class_names: Sequence[str], accuracies: Mapping[str, Mapping[str, Sequence[float]]],
                        attacks: Sequence[tuple[str, str]], path: str | Path,
                        title: str = "Class-wise accuracy", *, classes_shown: int = CLASSES_SHOWN,
                        ranking: Sequence[float] | None = None, ranked_by: str | None = None) -> None:
    """Grouped bars of class-wise accuracy (%), one panel per attack, one bar colour per model.

    ``accuracies``: ``{model label: {attack: [acc_k for each class]}}`` (fractions);
    ``attacks``: ``[(attack key, column label), ...]`` in panel order. With more than
    ``2 * classes_shown`` classes only the :func:`select_classes` of ``ranking`` are drawn (one score
    per class, described by ``ranked_by`` in the title; without one: the mean accuracy over every
    model and panel), worst left and best right, with a shaded slot saying how many classes lie
    between. With more than 20 classes drawn the bars become markers (one per model and class) so
    that the panel stays legible.
    """
    import numpy as np

    labels = list(accuracies)
    colors = model_colors(labels)
    num_classes = len(class_names)
    if ranking is None and num_classes > 2 * classes_shown:
        columns = [accuracies[m][a] for m in labels for a, _ in attacks if accuracies[m].get(a) is not None]
        ranking = list(np.nanmean(np.asarray(columns, dtype=float), axis=0))
        ranked_by = ranked_by or "the mean accuracy over every model and attack shown"
    selection = select_classes(ranking if ranking is not None else [0.0] * num_classes, classes_shown)
    slots = selection.slots
    shown = np.asarray([k for k in slots if k is not None], dtype=int)  # (S,) classes drawn
    x = np.arange(len(slots))
    positions = x[[k is not None for k in slots]]  # (S,) their x positions
    many = len(shown) > 20  # the slot of the omitted classes is not a class
    width = 0.8 / max(len(labels), 1)
    fig_width = 24.0 if many else min(max(10.0, 0.09 * len(slots) * len(labels) + 4), 30.0)
    fig, axes = plt.subplots(len(attacks), 1, figsize=(fig_width, 2.6 * len(attacks) + 0.8), sharex=True,
                             squeeze=False)
    for ax, (attack, attack_name) in zip(axes[:, 0], attacks):
        for i, (label, color) in enumerate(zip(labels, colors)):
            acc = accuracies[label].get(attack)
            if acc is None:
                continue
            values = 100 * np.asarray(acc, dtype=float)[shown]
            if many:
                ax.plot(positions, values, ls="none", marker="o", ms=3, color=color, label=label)
            else:
                ax.bar(positions - 0.4 + width * (i + 0.5), values, width=width, color=color, label=label)
        ax.set_ylabel(f"{attack_name}\naccuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        if selection.gap is not None:
            _mark_gap(ax, selection, selection.gap, 50)
    bottom = axes[-1, 0]
    bottom.set_xticks(x)
    if selection.gap is None:
        bottom.set_xticklabels(class_names, rotation=90 if many else 30, ha="center" if many else "right",
                               fontsize=6 if many else 9)
    else:
        names = [short_label(class_names[k]) if k is not None else "⋯" for k in slots]
        bottom.set_xticklabels(names, rotation=90 if many else 45, ha="center" if many else "right",
                               rotation_mode="default" if many else "anchor", fontsize=7 if many else 8.5)
        _label_groups(axes[0, 0], selection, list(x))
        title = f"{title}\n{describe_selection(selection, ranked_by or 'the given ranking')}"
    bottom.set_xlim(-0.6, len(slots) - 0.4)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)


TradeoffPoint = tuple[float, tuple[float, float] | None, float | None, tuple[float, float] | None]
"""(avg, (avg_lo, avg_hi) or None, nsd or None, (nsd_lo, nsd_hi) or None), fractions."""


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
    colors = model_colors(labels)
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
