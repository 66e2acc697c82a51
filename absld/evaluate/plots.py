"""The evaluation's figure of one model: class-wise accuracy under every attack."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .. import palette  # noqa: E402
from ..figures import CLASSES_SHOWN, save, select_classes, shades, short_label, _label_groups, _mark_gap, describe_selection  # noqa: E402
from ..labels import Protocol, attack_label, headline_attack  # noqa: E402


def plot_classwise(class_acc: dict[str, Sequence[float]], class_names: Sequence[str], path: str | Path,
                   title: str, *, classes_shown: int = CLASSES_SHOWN, ranking: Sequence[float] | None = None,
                   ranked_by: str | None = None, protocol: Protocol | None = None,
                   method: str | None = None) -> None:
    """Grouped bars of class-wise accuracy: one group per class, one bar per attack (dict order),
    labelled by :func:`absld.labels.attack_label` of ``protocol`` (a non-standard AutoAttack: AA*),
    in shades of the model's colour (:mod:`absld.palette`; ``method`` None: the teacher's), light
    for the first (clean) to full for the last (the worst case).

    With more than ``2 * classes_shown`` classes only the :func:`select_classes` of ``ranking`` are
    drawn (default: the model's own accuracy in its :func:`absld.labels.headline_attack`, the PGD column), worst
    left and best right, with a shaded slot saying how many classes lie between."""
    import numpy as np

    names = list(class_acc)
    num_classes = len(class_names)
    if ranking is None and num_classes > 2 * classes_shown and names:
        column = headline_attack(names)
        ranking, ranked_by = class_acc[column], ranked_by or f"this model's {column} accuracy"
    selection = select_classes(ranking if ranking is not None else [0.0] * num_classes, classes_shown)
    slots = selection.slots
    shown = np.asarray([k for k in slots if k is not None], dtype=int)  # (S,) classes drawn
    positions = np.arange(len(slots))  # (S + gap,)
    drawn = positions[[k is not None for k in slots]]  # (S,)
    width = 0.8 / max(len(names), 1)
    fig_width = min(60.0, max(8.0, len(slots) * (0.25 + 0.12 * len(names))))
    fig, ax = plt.subplots(figsize=(fig_width, 4.2))
    colors = shades(palette.color(method), len(names))
    for a, name in enumerate(names):
        offsets = drawn - 0.4 + width * (a + 0.5)  # (S,) bar a of every group
        ax.bar(offsets, np.asarray(class_acc[name], dtype=float)[shown], width=width, color=colors[a], edgecolor="0.3", lw=0.3,
               label=attack_label(name, protocol=protocol))
    ax.set_xticks(positions)
    if selection.gap is None:
        rotate = len(class_names) > 6
        ax.set_xticklabels(class_names, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    else:
        ax.set_xticklabels([short_label(class_names[k]) if k is not None else "⋯" for k in slots], rotation=45,
                           ha="right", rotation_mode="anchor", fontsize=8.5)
        _mark_gap(ax, selection, selection.gap, 0.5)
        _label_groups(ax, selection, list(positions))
        ax.set_xlim(-0.6, len(slots) - 0.4)
        title = f"{title}\n{describe_selection(selection, ranked_by or 'the given ranking')}"
    ax.set_ylim(0, 1)
    ax.set_ylabel("class-wise accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.set_title(title, pad=18 if selection.gap is not None else 6.0)
    save(fig, path)
