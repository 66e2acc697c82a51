"""Figure helpers every stage's figures share (matplotlib, PNG), and the class-wise temperature curves
that both the distill stage (one student) and the analysis (every ABSLD seed) draw.

With many classes (CIFAR-100, Tiny-ImageNet) a per-class figure shows the worst and the best classes
only (:func:`select_classes`); the omitted middle is marked.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.colors

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from dataclasses import dataclass  # noqa: E402

from . import palette  # noqa: E402
from .params import AnalyzeConfig  # noqa: E402
from .io import atomic_path  # noqa: E402


CLASSES_SHOWN: int = AnalyzeConfig.model_fields["classes_shown"].default
"""``analyze.classes_shown``'s default: with more than twice this many classes, per-class figures
show this many worst and this many best classes (see :func:`select_classes`)."""


def save(fig: "plt.Figure", path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)


@dataclass(frozen=True)
class ClassSelection:
    """The classes a per-class figure or table shows, in display order.

    ``indices``: the classes shown (every class, in class order, when nothing is omitted);
    ``gap``: None when every class is shown, else the position in ``indices`` where the omitted
    middle classes would sit: ``indices[:gap]`` are the worst classes (lowest score first) and
    ``indices[gap:]`` the best (highest score last)."""

    indices: tuple[int, ...]
    num_classes: int
    gap: int | None = None

    @property
    def omitted(self) -> int:
        """How many classes are not shown."""
        return self.num_classes - len(self.indices)

    @property
    def worst(self) -> tuple[int, ...]:
        return self.indices if self.gap is None else self.indices[:self.gap]

    @property
    def best(self) -> tuple[int, ...]:
        return () if self.gap is None else self.indices[self.gap:]

    @property
    def slots(self) -> list[int | None]:
        """The display positions: the shown classes with None where the omitted ones would sit."""
        if self.gap is None:
            return list(self.indices)
        return [*self.worst, None, *self.best]

    @property
    def marker(self) -> str:
        """The visible marker for the omitted middle ("… 80 classes omitted …"; '' when none)."""
        return f"… {self.omitted} classes omitted …" if self.omitted else ""


def select_classes(scores: Sequence[float], classes_shown: int = CLASSES_SHOWN) -> ClassSelection:
    """The classes a per-class figure or table shows, given one ranking score per class.

    At most ``2 * classes_shown`` classes: every class, in class order. More: the ``classes_shown``
    classes with the lowest score (the worst, lowest first) and the ``classes_shown`` with the
    highest (the best, highest last); ties are broken by class index (the lower index ranks lower),
    and a NaN score (a class with no evaluated sample) ranks lowest. The callers' scores are class
    accuracies (:func:`pipeline.analyze` ranks by the reference method's accuracy under the headline
    attack, the mean over its seeds), so "worst" means least accurate."""
    if classes_shown < 1:
        raise ValueError(f"classes_shown must be >= 1, got {classes_shown}")
    num_classes = len(scores)
    if num_classes <= 2 * classes_shown:
        return ClassSelection(tuple(range(num_classes)), num_classes)
    keys = [(float(s) if math.isfinite(float(s)) else -math.inf, k) for k, s in enumerate(scores)]
    order = [k for _, k in sorted(keys)]  # lowest first; ties by class index
    return ClassSelection(tuple(order[:classes_shown] + order[-classes_shown:]), num_classes, gap=classes_shown)


def describe_selection(selection: ClassSelection, ranked_by: str, names: tuple[str, str] = ("worst", "best")) -> str:
    """The selection in words for a title or caption ('' when every class is shown): "the 10 worst
    and the 10 best of 100 classes, ranked by <ranked_by>; 80 classes omitted"."""
    if selection.gap is None:
        return ""
    return (f"the {len(selection.worst)} {names[0]} and the {len(selection.best)} {names[1]} of "
            f"{selection.num_classes} classes, ranked by {ranked_by}; {selection.omitted} classes omitted")


def short_label(name: str, limit: int = 22) -> str:
    """A class name shortened for a tick label or legend: a long WordNet-style name ("goldfish,
    Carassius auratus") keeps its first synonym, and anything still over ``limit`` characters is cut
    with "…"."""
    if len(name) > limit and ", " in name:
        name = name.split(", ")[0]
    return name if len(name) <= limit else name[: limit - 1].rstrip() + "…"


def _mark_gap(ax: "plt.Axes", selection: ClassSelection, position: float, y: float) -> None:
    """Shade the slot of the omitted classes and write the marker in it."""
    ax.axvspan(position - 0.5, position + 0.5, color="0.92", zorder=0, lw=0)
    ax.text(position, y, selection.marker, rotation=90, ha="center", va="center", fontsize=7.5, color="0.25")


def _label_groups(ax: "plt.Axes", selection: ClassSelection, positions: Sequence[float],
                  names: tuple[str, str] = ("worst", "best")) -> None:
    """"10 worst classes" / "10 best classes" above the two groups of a gapped axis."""
    gap = selection.gap or 0
    worst, best = positions[:gap], positions[gap + 1:]
    for group, name in ((worst, names[0]), (best, names[1])):
        if len(group):
            ax.text((group[0] + group[-1]) / 2, 1.02, f"{len(group)} {name} classes", transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=8.5, color="0.25")


def class_series(rows: Sequence[dict], keys: Sequence[str], num_classes: int) -> tuple[list[int], dict]:
    """The epochs of long rows (epoch, class, <key>...) and, per key, an (epochs, classes) array of
    its values (NaN where a row lacks it)."""
    import numpy as np

    epochs = sorted({int(r["epoch"]) for r in rows})
    at = {e: i for i, e in enumerate(epochs)}
    tables = {key: np.full((len(epochs), num_classes), np.nan) for key in keys}
    for r in rows:
        for key, table in tables.items():
            value = r.get(key)
            if value is not None and value != "":
                table[at[int(r["epoch"])], int(r["class"])] = float(value)
    return epochs, tables


def _draw_band(ax: "plt.Axes", epochs: Sequence[int], table, num_classes: int) -> None:
    """The min-max band and the median over every class of an (epochs, classes) table."""
    import numpy as np

    with np.errstate(all="ignore"):
        low, mid, high = np.nanmin(table, axis=1), np.nanmedian(table, axis=1), np.nanmax(table, axis=1)
    ax.fill_between(epochs, low, high, color="0.8", alpha=0.7, lw=0, label=f"min–max over all {num_classes} classes")
    ax.plot(epochs, mid, color="0.2", ls="--", lw=1.4, label=f"median over all {num_classes} classes")


def plot_temperatures(rows: Sequence[dict], class_names: Sequence[str], path: str | Path,
                      title: str = "ABSLD class-wise temperatures", *, classes_shown: int = CLASSES_SHOWN,
                      ranking: Sequence[float] | None = None, ranked_by: str | None = None) -> None:
    """tau_adv and tau_nat per class over epochs (the temperatures used during each epoch).

    With more than ``2 * classes_shown`` classes one curve per class would be unreadable: the
    figure draws the min-max band and the median over *all* classes per epoch, plus the curves of
    the :func:`select_classes` of ``ranking`` (one score per class, e.g. the class accuracies the
    analysis ranks by, described by ``ranked_by``; worst classes in reds, best in blues). Without a
    ranking the classes are ranked by their tau_adv in the last epoch (lowest and highest shown)."""
    if len(class_names) > 2 * classes_shown:
        _plot_many_temperatures(rows, class_names, path, title, classes_shown, ranking, ranked_by)
        return
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
        integer_epochs(ax)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("temperature used during the epoch")
    if len(class_names) <= 20:
        axes[1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.suptitle(title)
    save(fig, path)


def _plot_many_temperatures(rows: Sequence[dict], class_names: Sequence[str], path: str | Path, title: str,
                            classes_shown: int, ranking: Sequence[float] | None, ranked_by: str | None) -> None:
    """:func:`plot_temperatures` for many classes: band and median over all, the shown classes' curves."""
    import numpy as np

    num_classes = len(class_names)
    epochs, values = class_series(rows, ("tau_adv", "tau_nat"), num_classes)  # (E, C) each
    group_names = ("worst", "best")
    if ranking is None:  # no accuracies: the extremes of the last epoch's tau_adv
        ranking = list(values["tau_adv"][-1]) if epochs else [0.0] * num_classes
        ranked_by = "their τ_adv in the last epoch"
        group_names = ("lowest", "highest")
    selection = select_classes(ranking, classes_shown)
    worst_colors = plt.get_cmap("Reds")(np.linspace(0.95, 0.45, max(len(selection.worst), 1)))
    best_colors = plt.get_cmap("Blues")(np.linspace(0.45, 0.95, max(len(selection.best), 1)))
    colors = {k: c for k, c in zip(selection.worst, worst_colors)} | {k: c for k, c in zip(selection.best, best_colors)}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for ax, key in zip(axes, ("tau_adv", "tau_nat")):
        table = values[key]
        _draw_band(ax, epochs, table, num_classes)
        for k in selection.indices:
            ax.plot(epochs, table[:, k], color=colors[k], lw=1.2,
                    label=f"{short_label(class_names[k])} ({group_names[0] if k in selection.worst else group_names[1]})")
    for ax, key in zip(axes, ("adversarial term  τ_adv", "natural term  τ_nat")):
        ax.set_title(key)
        ax.set_xlabel("epoch")
        integer_epochs(ax)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("temperature used during the epoch")
    handles, names = axes[1].get_legend_handles_labels()
    columns = max(1, math.ceil(len(handles) / 26))
    axes[1].legend(handles, names, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False,
                   ncol=columns, title=f"{len(selection.worst)} {group_names[0]} (reds), "
                   f"{len(selection.best)} {group_names[1]} (blues)", title_fontsize=7.5)
    fig.suptitle(f"{title}\n{describe_selection(selection, ranked_by or 'the given ranking', group_names)}",
                 fontsize=11)
    fig.subplots_adjust(top=0.84)  # the two-line title above the panels' titles
    save(fig, path)


def model_colors(labels: Sequence[str]) -> list[str]:
    """One colour per model label: a method's (or the teacher's) from :mod:`absld.palette`, the same
    in every figure and in the DVC charts; a label naming no method takes the next colour of Set2
    (none of which is a method's)."""
    cmap = plt.get_cmap("Set2")
    known = palette.label_colors()
    out, others = [], 0
    for label in labels:
        color = palette.color_of_label(label)
        if color == palette.FALLBACK and label not in known:
            color, others = matplotlib.colors.to_hex(cmap(others % cmap.N)), others + 1
        out.append(color)
    return out


def shades(color: str, n: int) -> list[tuple[float, float, float]]:
    """``n`` shades of one colour, light to full (a model's colour for its own series: one per attack)."""
    base = matplotlib.colors.to_rgb(color)
    weights = [0.3 + 0.7 * (i + 1) / n for i in range(n)] if n > 1 else [1.0]
    return [tuple(1.0 - w * (1.0 - c) for c in base) for w in weights]  # type: ignore[misc]


def integer_epochs(ax: "plt.Axes") -> None:
    """Epoch ticks at whole epochs only (a 3-epoch run is not ticked at 1.5)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
