"""The charts of `dvc plots show/diff` and the matplotlib figures read without the README: one palette
by method in both, titles and labelled axes, whole epochs, intervals, revisions side by side."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

import matplotlib.colors
import pytest
import yaml

from absld import charts, palette
from absld.vocab import METHOD_LABELS
from tests.conftest import REPO

PLACEHOLDERS = {"<DVC_METRIC_DATA>", "<DVC_METRIC_TITLE>", "<DVC_METRIC_X>", "<DVC_METRIC_Y>",
                "<DVC_METRIC_X_LABEL>", "<DVC_METRIC_Y_LABEL>"}


def committed(name: str) -> dict[str, Any]:
    return json.loads((REPO / ".dvc" / "plots" / f"{name}.json").read_text())


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping inside a template."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(node=value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def encodings(template: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for node in walk(template):
        if isinstance(node.get("encoding"), dict):
            yield node["encoding"]


def dvc_plots() -> list[tuple[str, dict[str, Any]]]:
    return [next(iter(entry.items())) for entry in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]]


# --------------------------------------------------------------------------------------------------
# the palette and the templates
def test_the_palette_gives_the_teacher_and_every_method_its_own_colour():
    assert list(palette.COLORS) == [palette.TEACHER, *METHOD_LABELS]
    colors = list(palette.COLORS.values())
    assert len(set(c.lower() for c in colors)) == len(colors) and palette.FALLBACK not in colors
    assert all(matplotlib.colors.is_color_like(c) for c in colors)
    assert palette.color_of_label("FRL-RWRM seed 2") == palette.COLORS["frl_rwrm"]  # not FRL-RW's
    assert palette.color_of_label("ABSLD") == palette.color("absld") and palette.color_of_label("x") == palette.FALLBACK


@pytest.mark.parametrize("name", list(charts.TEMPLATES))
def test_committed_templates_are_the_generated_ones(name):
    """.dvc/plots/ holds what `python -m absld.charts` writes: rerun it after changing the palette."""
    assert (REPO / ".dvc" / "plots" / f"{name}.json").read_text() == charts.render(name), \
        f".dvc/plots/{name}.json is stale: run `python -m absld.charts`"


def test_every_template_dvc_yaml_names_is_generated_and_every_plot_is_titled_and_labelled():
    assert sorted(p.stem for p in (REPO / ".dvc" / "plots").glob("*.json")) == sorted(charts.TEMPLATES)
    for plot, spec in dvc_plots():
        assert spec["template"] in charts.TEMPLATES, plot  # not DVC's `linear`: loss and accuracy on one axis
        assert spec.get("title") and not spec["title"].startswith("plots/"), plot
        assert spec.get("x_label") and spec.get("y_label"), plot


@pytest.mark.parametrize("name", list(charts.TEMPLATES))
def test_a_model_has_its_palette_colour_in_every_template(name):
    """Every colour keyed by a model or a method has the palette's fixed domain and range, so that a
    model's colour does not depend on which models a run or a revision has."""
    template = committed(name)
    colors = palette.label_colors()
    keyed = [e["color"] for e in encodings(template) if isinstance(e.get("color"), dict)
             and e["color"].get("field") in ("model", "method")]
    for color in keyed:
        assert color["scale"]["domain"] == list(colors)
        assert color["scale"]["range"] == list(colors.values())
    constant = [node["color"] for node in walk(template) if node.get("type") == "line" and "color" in node]
    if name == "teacher":
        assert constant and set(constant) == {palette.color(None)}
    else:
        assert keyed or name == "temperatures", name  # the temperatures are coloured by class
    placeholders = {v for node in walk(template) for v in node.values() if isinstance(v, str) and v.startswith("<DVC")}
    assert placeholders <= PLACEHOLDERS and "<DVC_METRIC_TITLE>" in json.dumps(template)


@pytest.mark.parametrize("name", ["curves", "teacher", "temperatures"])
def test_epoch_axes_tick_whole_epochs(name):
    xs = [e["x"] for e in encodings(committed(name)) if "x" in e]
    assert xs and all(x["field"] == "<DVC_METRIC_X>" for x in xs)
    for x in xs:
        assert x["axis"]["tickMinStep"] == 1 and x["axis"]["format"] == "d", name


def test_loss_and_accuracy_have_their_own_axes():
    for name in ("teacher", "curves"):
        panels = committed(name)["hconcat"]
        titles = [p["encoding"]["y"]["title"] for p in panels]
        assert titles[0] == "loss" and titles[1] == "<DVC_METRIC_Y_LABEL>", name
        assert panels[1]["encoding"]["y"]["scale"]["domain"] == [0, 1]


def test_revisions_sit_side_by_side_or_in_one_panel():
    """No template stacks revisions as rows: class-wise bars get a column per revision, curves a dash,
    points a marker shape."""
    for name in charts.TEMPLATES:
        template = committed(name)
        assert not any(node.get("row", {}).get("field") == "rev" for node in walk(template) if isinstance(node.get("row"), dict)), name
    classwise = committed("classwise")
    assert "datum.rev" in classwise["transform"][0]["calculate"] and classwise["facet"]["column"]["field"] == "panel"
    assert [e["strokeDash"]["field"] for e in encodings(committed("curves"))] == ["rev", "rev"]
    assert any(e.get("shape", {}).get("field") == "rev" for e in encodings(committed("tradeoff")))


# --------------------------------------------------------------------------------------------------
# the plot data has what the templates read
def fields_read(template: dict[str, Any], x: str, y: str) -> set[str]:
    """The data columns a template reads (its placeholders resolved, DVC's and its own computed
    fields left out)."""
    computed = {"rev", "panel", "temperature", "value", "field", "dvc_inferred_y_value"}
    for node in walk(template):
        for transform in node.get("transform", []) if isinstance(node.get("transform"), list) else []:
            computed |= set(transform.get("as", [])) if isinstance(transform.get("as"), list) else {transform.get("as")}
    out = set()
    for node in walk(template):
        field = node.get("field")
        if isinstance(field, str):
            out.add({"<DVC_METRIC_X>": x, "<DVC_METRIC_Y>": y}.get(field, field))
        for transform in node.get("transform", []) if isinstance(node.get("transform"), list) else []:
            out |= set(transform.get("fold", []))
    return out - computed


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def analyzed_plots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_analyze import invoke, make_project

    root = make_project(tmp_path_factory.mktemp("charts"), methods=("absld", "rslad", "frl_rwrm"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = invoke("analyze")
        assert result.exit_code == 0, result.output
    return root


def test_the_plot_data_has_every_field_its_template_reads(analyzed_plots):
    for plot, spec in dvc_plots():
        if plot == "teacher training":  # results/teacher/train_log.csv, DVC's several-y form
            continue
        path = analyzed_plots / plot
        files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
        assert files, plot
        needed = fields_read(committed(spec["template"]), spec["x"], spec["y"])
        for file in files:
            rows = read(file)
            filled = {c for c in rows[0] if any(r[c] != "" for r in rows)}  # a column of empty cells is none
            assert needed <= filled, f"{file.name} lacks {sorted(needed - filled)} ({spec['template']} reads them)"


def test_class_accuracies_and_tradeoff_points_carry_their_intervals(analyzed_plots):
    from tests.test_analyze import fairness_of

    fairness = fairness_of(analyzed_plots)
    pgd = next(a for a in fairness["teacher"] if a.startswith("pgd"))  # the PGD column, whatever its key
    (path,) = [p for p in (analyzed_plots / "plots/analyze/classwise").glob("*.csv") if read(p)[0]["attack"].startswith("PGD")]
    rows = read(path)
    (label,) = {r["attack"] for r in rows}
    assert {r["interval"] for r in rows} == {"95 % exact binomial interval"}
    for r in rows:
        assert 0.0 <= float(r["lo"]) <= float(r["accuracy"]) <= float(r["hi"]) <= 1.0, r
    assert any(float(r["hi"]) - float(r["lo"]) > 0.05 for r in rows)
    # 20 images per class: an exact interval of k/20 hits
    from scipy import stats

    teacher = [r for r in rows if r["model"] == "Teacher"]
    k = round(20 * float(teacher[0]["accuracy"]))
    expected = (stats.beta.ppf(0.025, k, 21 - k) if k else 0.0, stats.beta.ppf(0.975, k + 1, 20 - k) if k < 20 else 1.0)
    assert (float(teacher[0]["lo"]), float(teacher[0]["hi"])) == pytest.approx(expected, abs=1e-5)
    points = {(r["model"], r["attack"]): r for r in read(analyzed_plots / "plots/analyze/tradeoff.csv")}
    entry = fairness["frl_rwrm/seed0"][pgd]
    point = points[("FRL-RWRM", label)]
    assert (float(point["avg_lo"]), float(point["avg_hi"])) == pytest.approx(entry["avg_ci"], abs=1e-5)
    assert (float(point["nsd_lo"]), float(point["nsd_hi"])) == pytest.approx(entry["nsd_ci"], abs=1e-5)
    assert point["interval"] == "95 % bootstrap interval"
    labels = set(palette.label_colors())
    assert {r["model"] for r in rows} <= labels and {m for m, _ in points} <= labels  # the colour scale's domain


def test_class_intervals_over_seeds_are_t_intervals(tmp_path, monkeypatch):
    from absld.fairness import seed_summary
    from tests.test_analyze import fairness_of, invoke, make_project

    root = make_project(tmp_path, methods=("absld",), seeds=(0, 1))
    monkeypatch.chdir(root)
    assert invoke("analyze").exit_code == 0
    rows = [r for r in read(root / "plots/analyze/classwise/clean.csv") if r["model"] == "ABSLD"]
    fairness = fairness_of(root)
    for k, r in enumerate(rows):
        ci = seed_summary([fairness[f"absld/seed{s}"]["clean"]["class_acc"][k] for s in (0, 1)])["ci"]
        expected = [min(max(v, 0.0), 1.0) for v in ci]
        assert (float(r["lo"]), float(r["hi"])) == pytest.approx(expected, abs=1e-5)
        assert r["interval"] == "95 % t-interval over 2 seeds"


# --------------------------------------------------------------------------------------------------
# the matplotlib figures use the same palette and whole epochs
@pytest.fixture()
def saved(monkeypatch) -> list:
    from absld import figures
    from absld.analyze import plots as analyze_plots
    from absld.evaluate import plots as evaluate_plots
    from absld.train import plots as train_plots

    out: list = []
    for module in (figures, analyze_plots, evaluate_plots, train_plots):
        monkeypatch.setattr(module, "save", lambda fig, path: out.append(fig))
    return out


def rgb(color: Any) -> tuple[float, float, float]:
    return tuple(round(c, 4) for c in matplotlib.colors.to_rgb(color))  # type: ignore[return-value]


def test_analysis_figures_colour_each_model_by_its_method(saved):
    from absld.analyze.plots import plot_class_accuracy, plot_fairness_tradeoff

    labels = ["Teacher", "RSLAD", "ABSLD", "Someone's own"]  # another order than the palette's
    acc = {label: {"pgd": [0.2 + 0.1 * i, 0.5]} for i, label in enumerate(labels)}
    plot_class_accuracy(["a", "b"], acc, [("pgd", "PGD")], "unused.png")
    bars = {c.get_label(): rgb(c.patches[0].get_facecolor()) for c in saved[0].axes[0].containers}
    assert bars["Teacher"] == rgb(palette.color(None))
    assert bars["RSLAD"] == rgb(palette.color("rslad")) and bars["ABSLD"] == rgb(palette.color("absld"))
    assert bars["Someone's own"] not in {rgb(c) for c in palette.COLORS.values()}
    points = {label: {"pgd": (0.3, (0.2, 0.4), 0.5, (0.4, 0.6))} for label in labels}
    plot_fairness_tradeoff(points, [("pgd", "PGD")], "unused.png")
    lines = {c.get_label(): rgb(c.lines[0].get_color()) for c in saved[1].axes[0].containers}  # errorbar containers
    assert lines["ABSLD"] == rgb(palette.color("absld")) and lines["Teacher"] == rgb(palette.color(None))


def test_a_models_own_figures_wear_its_colour(saved):
    from absld.evaluate.plots import plot_classwise
    from absld.train.plots import plot_training

    plot_classwise({"clean": [0.9, 0.8], "pgd": [0.4, 0.3], "worst": [0.3, 0.2]}, ["a", "b"], "unused.png",
                   title="cfa/seed0", method="cfa")
    shades = [rgb(c.patches[0].get_facecolor()) for c in saved[0].axes[0].containers]
    assert shades[-1] == rgb(palette.color("cfa")) and len(set(shades)) == 3  # light (clean) to full (worst)
    history = [{"epoch": e, "train_loss": 1.0 / e, "train_acc_adv": 0.1 * e} for e in (1, 2, 3)]
    plot_training(history, "unused.png", title="SAT", method="sat")
    assert rgb(saved[1].axes[0].lines[0].get_color()) == rgb(palette.color("sat"))


def test_figures_tick_whole_epochs(saved):
    from absld.figures import plot_temperatures
    from absld.train.plots import plot_class_state, plot_training

    history = [{"epoch": e, "train_loss": 1.0 / e, "train_acc_adv": 0.1 * e} for e in (1, 2, 3)]
    plot_training(history, "unused.png", title="t")
    rows = [{"epoch": e, "class": k, "tau_adv": 1.0 + 0.01 * e * k, "tau_nat": 1.0, "w": 0.1 * k} for e in (1, 2, 3)
            for k in range(2)]
    plot_temperatures(rows, ["a", "b"], "unused.png")
    plot_class_state(rows, ["w"], ["a", "b"], "unused.png", title="t")
    for fig in saved:
        for ax in fig.axes:
            fig.canvas.draw()
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)
    assert len(saved) == 3
