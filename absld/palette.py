"""One colour per method (and the teacher), for every figure and chart: the matplotlib PNGs of the
distill, evaluate and analyze stages and the Vega-Lite templates of ``dvc plots`` (.dvc/plots/,
generated from this table by :mod:`absld.charts`), so that a model keeps its colour everywhere.

Related methods share a hue family: the RSLAD family blues, the adversarial-training baselines
greens, FRL oranges; ABSLD is the red one and the teacher grey.
"""

from __future__ import annotations

from .vocab import METHOD_LABELS

TEACHER = "teacher"
TEACHER_LABEL = "Teacher"

COLORS: dict[str, str] = {
    TEACHER: "#555555",
    "absld": "#d62728",
    "rslad": "#1f77b4",
    "ard": "#17becf",
    "iad": "#9467bd",
    "adaad": "#e377c2",
    "sat": "#2ca02c",
    "trades": "#98c73a",
    "fair_rslad": "#393b79",
    "fair_ard": "#0e7c86",
    "fair_iad": "#5b3a8c",
    "reweighted_rslad": "#6baed6",
    "frl_rw": "#ff7f0e",
    "frl_rwrm": "#c7a000",
    "cfa": "#8c564b",
    "wat": "#637939",
    "dafa": "#bcbd22",
    "trix": "#7b4173",
    "b_mtard": "#e7969c",
}
"""Hex colour of the teacher and of every method of :data:`absld.vocab.METHOD_LABELS`, in table order."""

FALLBACK = "#7f7f7f"
"""The colour of a label that names no method (a caller's own label)."""


def color(method: str | None) -> str:
    """The colour of ``method`` (a params name; None or ``teacher``: the teacher's)."""
    return COLORS[TEACHER if method is None else method]


def label_colors() -> dict[str, str]:
    """``{display label: colour}``: ``Teacher`` and each method's label (``ABSLD``, ``FRL-RW``...),
    the names the tables, the figures and the plot data give the models, in table order."""
    return {TEACHER_LABEL: COLORS[TEACHER], **{label: COLORS[name] for name, label in METHOD_LABELS.items()}}


def color_of_label(label: str) -> str:
    """The colour of a row label: a method's label (or ``<label> seed S`` / ``<label> (…)``), else
    :data:`FALLBACK`."""
    colors = label_colors()
    if label in colors:
        return colors[label]
    for known in sorted(colors, key=len, reverse=True):  # "FRL-RWRM" before "FRL-RW"
        if label.startswith(known + " "):
            return colors[known]
    return FALLBACK
