"""The Vega-Lite templates of ``dvc plots show`` / ``dvc plots diff`` (.dvc/plots/*.json), built here
so that their colours are :mod:`absld.palette`'s: ``python -m absld.charts`` rewrites them, and a
test holds the committed files to this module.

Every chart reads without the README: a title (``title`` in dvc.yaml's plots, or the chart's own),
labelled axes (``x_label`` / ``y_label`` there), whole epochs on epoch axes, 95 % intervals where the
plot data has them (``lo`` / ``hi`` columns written by ``absld analyze``), and the revisions of a
``dvc plots diff`` side by side (class-wise bars: one column per revision) or overlaid in one panel
(curves: line dash; points: marker shape), never as tall stacked rows. A model's colour is fixed by
its method (domain and range from the palette), the same in every chart, revision and figure.

Placeholders (filled by DVC): ``<DVC_METRIC_DATA>``, ``<DVC_METRIC_TITLE>``, ``<DVC_METRIC_X>``,
``<DVC_METRIC_Y>``, ``<DVC_METRIC_X_LABEL>``, ``<DVC_METRIC_Y_LABEL>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import palette

SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
DATA = {"values": "<DVC_METRIC_DATA>"}
X, Y = "<DVC_METRIC_X>", "<DVC_METRIC_Y>"
X_LABEL, Y_LABEL = "<DVC_METRIC_X_LABEL>", "<DVC_METRIC_Y_LABEL>"
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / ".dvc" / "plots"

EPOCH_AXIS: dict[str, Any] = {"tickMinStep": 1, "format": "d"}
"""Epoch axes tick whole epochs only."""
REVISION = {"field": "rev", "type": "nominal", "title": "experiment"}
DASHED_REVISION = {**REVISION, "legend": {"symbolType": "stroke", "symbolStrokeColor": "#555555", "symbolStrokeWidth": 2}}


def title(subtitle: str | None = None) -> dict[str, Any]:
    """The chart title: dvc.yaml's ``title`` with a line saying how to read it."""
    out: dict[str, Any] = {"text": "<DVC_METRIC_TITLE>", "anchor": "start", "fontSize": 14}
    if subtitle:
        out["subtitle"] = subtitle
        out["subtitleColor"] = "#555555"
    return out


def model_color(field: str = "model", title_text: str = "model") -> dict[str, Any]:
    """Colour by a model's row label (``Teacher``, ``ABSLD``...): the palette's fixed domain and range,
    so that a model keeps its colour whichever models a run has."""
    colors = palette.label_colors()
    return {"field": field, "type": "nominal", "title": title_text, "sort": list(colors),
            "scale": {"domain": list(colors), "range": list(colors.values())}, "legend": {"symbolOpacity": 1}}


def epoch_x() -> dict[str, Any]:
    return {"field": X, "type": "quantitative", "title": X_LABEL, "axis": dict(EPOCH_AXIS),
            "scale": {"nice": False}}


def classwise() -> dict[str, Any]:
    """One chart per attack (plots/analyze/classwise/<attack>.csv): every model's accuracy on each
    class, a dot with its interval, the models side by side within a class; one column per
    revision, headed by the attack and the revision."""
    model_offset = {"field": "model", "type": "nominal", "sort": list(palette.label_colors())}
    y = {"field": Y, "type": "nominal", "sort": None, "title": Y_LABEL}
    color = model_color()
    return {
        "$schema": SCHEMA,
        "data": DATA,
        "title": title("dot: accuracy on the class's test images; line: its 95 % interval (see 'interval')"),
        "transform": [{"calculate": "(isValid(datum.attack) ? 'under ' + datum.attack + ' · ' : '') + datum.rev",
                       "as": "panel"}],
        "facet": {"column": {"field": "panel", "type": "nominal", "title": None, "sort": None,
                             "header": {"labelFontSize": 13, "labelFontWeight": "bold"}}},
        "spec": {
            "width": 260,
            "height": {"step": 6},
            "layer": [
                {"mark": {"type": "rule", "strokeWidth": 1.5, "opacity": 0.6},
                 "encoding": {"y": y, "yOffset": model_offset, "color": color,
                              "x": {"field": "lo", "type": "quantitative"}, "x2": {"field": "hi"}}},
                {"mark": {"type": "point", "filled": True, "size": 30, "opacity": 1, "tooltip": True},
                 "encoding": {"y": y, "yOffset": model_offset, "color": color,
                              "x": {"field": X, "type": "quantitative", "title": X_LABEL,
                                    "scale": {"domain": [0, 1]}, "axis": {"format": "%"}}}},
            ],
        },
    }


def tradeoff() -> dict[str, Any]:
    """Avg against NSD (plots/analyze/tradeoff.csv), one panel per attack, each model a point with
    its intervals on both axes; revisions by marker shape in the same panel."""
    color = model_color()
    whisker = {"type": "rule", "strokeWidth": 1.2, "opacity": 0.8}
    x = {"field": X, "type": "quantitative", "title": X_LABEL, "scale": {"zero": False}, "axis": {"format": "%"}}
    y = {"field": Y, "type": "quantitative", "title": Y_LABEL, "scale": {"zero": False}}
    return {
        "$schema": SCHEMA,
        "data": DATA,
        "title": title("right: more accurate; low: fairer. Whiskers: 95 % intervals of Avg and NSD (see 'interval')"),
        "facet": {"field": "attack", "type": "nominal", "sort": {"field": "order"}, "title": None,
                  "header": {"labelFontSize": 12, "labelFontWeight": "bold"}},
        "columns": 3,
        "spec": {
            "width": 220,
            "height": 200,
            "layer": [
                {"mark": whisker, "encoding": {"x": {**x, "field": "avg_lo"}, "x2": {"field": "avg_hi"},
                                               "y": y, "color": color}},
                {"mark": whisker, "encoding": {"x": x, "y": {**y, "field": "nsd_lo"}, "y2": {"field": "nsd_hi"},
                                               "color": color}},
                {"mark": {"type": "point", "filled": True, "size": 70, "tooltip": True, "opacity": 1},
                 "encoding": {"x": x, "y": y, "color": color, "shape": REVISION}},
            ],
        },
        "resolve": {"scale": {"x": "independent", "y": "independent"}},
    }


def curves() -> dict[str, Any]:
    """Every student's training curves (plots/analyze/training.csv): its loss and, beside it on its
    own axis, ``y`` (the adversarial training accuracy); one line per model, coloured by method,
    revisions by line dash."""
    encoding = {"x": epoch_x(), "color": model_color("method", "method"), "detail": {"field": "model", "type": "nominal"},
                "strokeDash": DASHED_REVISION}
    line = {"type": "line", "tooltip": True, "strokeWidth": 2}
    return {
        "$schema": SCHEMA,
        "data": DATA,
        "title": title("one line per student (method and seed); the loss is each method's own objective"),
        "hconcat": [
            {"title": "training loss", "width": 300, "height": 220, "mark": line,
             "encoding": {**encoding, "y": {"field": "train_loss", "type": "quantitative", "title": "loss",
                                            "scale": {"zero": False}}}},
            {"title": "training accuracy", "width": 300, "height": 220, "mark": line,
             "encoding": {**encoding, "y": {"field": Y, "type": "quantitative", "title": Y_LABEL,
                                            "scale": {"domain": [0, 1]}, "axis": {"format": "%"}}}},
        ],
    }


def teacher() -> dict[str, Any]:
    """The teacher's training log (results/teacher/train_log.csv through dvc.yaml's several ``y``):
    the loss and the accuracy on their own axes, in the teacher's colour; revisions by line dash."""
    loss_filter = "datum.field == 'train_loss'"
    color = palette.color(None)
    line = {"type": "line", "tooltip": True, "color": color, "strokeWidth": 2}
    base = {"x": epoch_x(), "strokeDash": DASHED_REVISION}
    return {
        "$schema": SCHEMA,
        "data": DATA,
        "title": title(),
        "hconcat": [
            {"title": "training loss", "width": 280, "height": 220, "transform": [{"filter": loss_filter}],
             "mark": line,
             "encoding": {**base, "y": {"field": Y, "type": "quantitative", "title": "loss", "scale": {"zero": False}}}},
            {"title": "training accuracy", "width": 280, "height": 220, "transform": [{"filter": f"!({loss_filter})"}],
             "mark": line,
             "encoding": {**base, "y": {"field": Y, "type": "quantitative", "title": Y_LABEL,
                                        "scale": {"domain": [0, 1]}, "axis": {"format": "%"}},
                          "detail": {"field": "field", "type": "nominal"}}},
        ],
    }


def temperatures() -> dict[str, Any]:
    """ABSLD's class-wise temperatures (plots/analyze/temperatures.csv): tau_adv and tau_nat side by
    side, one line per class (and seed); revisions by line dash."""
    names = {"tau_adv": "adversarial term τ_adv", "tau_nat": "natural term τ_nat"}
    label = " : ".join(f"datum.value == '{k}' ? '{v}'" for k, v in names.items()) + " : datum.value"
    return {
        "$schema": SCHEMA,
        "data": DATA,
        "title": title("the temperature of each class's soft labels, used during the epoch"),
        "transform": [{"fold": list(names), "as": ["temperature", "value"]}],
        "facet": {"column": {"field": "temperature", "type": "nominal", "title": None,
                             "header": {"labelExpr": label, "labelFontSize": 12}}},
        "spec": {
            "width": 300,
            "height": 220,
            "mark": {"type": "line", "tooltip": True},
            "encoding": {
                "x": epoch_x(),
                "y": {"field": "value", "type": "quantitative", "title": Y_LABEL, "scale": {"zero": False}},
                "color": {"field": "class", "type": "nominal", "sort": None, "title": "class"},
                "detail": {"field": "seed", "type": "nominal"},
                "strokeDash": DASHED_REVISION,
            },
        },
    }


TEMPLATES = {"classwise": classwise, "tradeoff": tradeoff, "curves": curves, "teacher": teacher,
             "temperatures": temperatures}
"""The templates dvc.yaml's plots name (``template: <name>``)."""


def render(name: str) -> str:
    """The file text of template ``name`` (what .dvc/plots/<name>.json must hold)."""
    return json.dumps(TEMPLATES[name](), indent=2, ensure_ascii=False) + "\n"


def write_templates(folder: Path = TEMPLATES_DIR) -> list[Path]:
    """Write every template into ``folder``; return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in TEMPLATES:
        path = folder / f"{name}.json"
        path.write_text(render(name), encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_templates():
        print(written)
