"""Figures (matplotlib, PNG): what people would rather look at than read."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .config import AnalyzeConfig  # noqa: E402
from .io import atomic_path  # noqa: E402

CLASSES_SHOWN: int = AnalyzeConfig.model_fields["classes_shown"].default
"""``analyze.classes_shown``'s default: with more than twice this many classes, per-class figures
show this many worst and this many best classes (see :func:`select_classes`)."""


def save(fig: "plt.Figure", path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# many classes: which ones a per-class figure or table shows
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


_PGD_COLUMN = re.compile(r"^pgd\d+$")


def ranking_column(columns: Sequence[str]) -> str:
    """The column a figure of one model ranks classes by: the PGD column (the papers' main
    robustness number), else ``aa``, else the last column before ``worst`` (as
    :func:`absld.report.headline_attack`)."""
    pgd = [c for c in columns if _PGD_COLUMN.match(c)]
    if pgd:
        return pgd[-1]
    if "aa" in columns:
        return "aa"
    rest = [c for c in columns if c != "worst"]
    return rest[-1] if rest else columns[-1]


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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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
from collections.abc import Mapping  # noqa: E402

TradeoffPoint = tuple[float, tuple[float, float] | None, float | None, tuple[float, float] | None]
"""(avg, (avg_lo, avg_hi) or None, nsd or None, (nsd_lo, nsd_hi) or None), fractions."""


def _model_colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


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
    colors = _model_colors(len(labels))
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
                   title: str, *, classes_shown: int = CLASSES_SHOWN, ranking: Sequence[float] | None = None,
                   ranked_by: str | None = None) -> None:
    """Grouped bars of class-wise accuracy: one group per class, one bar per attack (dict order).

    With more than ``2 * classes_shown`` classes only the :func:`select_classes` of ``ranking`` are
    drawn (default: the model's own accuracy in its :func:`ranking_column`, the PGD column), worst
    left and best right, with a shaded slot saying how many classes lie between."""
    import numpy as np

    names = list(class_acc)
    num_classes = len(class_names)
    if ranking is None and num_classes > 2 * classes_shown and names:
        column = ranking_column(names)
        ranking, ranked_by = class_acc[column], ranked_by or f"this model's {column} accuracy"
    selection = select_classes(ranking if ranking is not None else [0.0] * num_classes, classes_shown)
    slots = selection.slots
    shown = np.asarray([k for k in slots if k is not None], dtype=int)  # (S,) classes drawn
    positions = np.arange(len(slots))  # (S + gap,)
    drawn = positions[[k is not None for k in slots]]  # (S,)
    width = 0.8 / max(len(names), 1)
    fig_width = min(60.0, max(8.0, len(slots) * (0.25 + 0.12 * len(names))))
    fig, ax = plt.subplots(figsize=(fig_width, 4.2))
    cmap = plt.get_cmap("tab10")
    for a, name in enumerate(names):
        offsets = drawn - 0.4 + width * (a + 0.5)  # (S,) bar a of every group
        ax.bar(offsets, np.asarray(class_acc[name], dtype=float)[shown], width=width, color=cmap(a % cmap.N),
               label=name)
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


STATE_LABELS = {
    "w_nat": "natural-term weight w0_k (FRL)", "w_boundary": "boundary-term weight w1_k (FRL)",
    "eps_255": "training radius ε_k (×255)", "beta": "TRADES β_k", "train_robust_acc": "robust training accuracy t_k",
    "val_robust_acc": "validation PGD accuracy",
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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ranked = describe_selection(selection, f"the last {STATE_LABELS.get(keys[0], keys[0])}", ("lowest", "highest"))
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False,
                       ncol=1 if len(shown) <= 12 else 2)
    fig.suptitle(title + (f"\n{ranked}" if ranked else ""), fontsize=10, y=1.08 if ranked else 1.02)
    save(fig, path)
