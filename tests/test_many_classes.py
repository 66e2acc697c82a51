"""Per-class outputs with 100 classes (CIFAR-100-like): the worst and best classes shown, every
statistic over every class, the full per-class CSV; 10 classes stay as they were."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from absld import figures as figures_module
from absld.analyze import plots as analyze_plots
from absld.analyze.analysis import class_ranking, fairness_table
from absld.analyze.plots import plot_class_accuracy
from absld.analyze.wandb_report import build_wandb_report
from absld.evaluate import plots as evaluate_plots
from absld.evaluate.plots import plot_classwise
from absld.evaluate.records import Records
from absld.figures import plot_temperatures, select_classes
from absld.params import AnalyzeConfig, load_params
from absld.tracking import name_classes
from tests.conftest import REPO
from tests.fixtures import CIFAR10_NAMES
from tests.test_analyze import FAST, first_correct, invoke, labels, make_project, write_manifest, write_params, \
    write_records

CIFAR100_NAMES = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man
maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain
plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake
spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip
turtle wardrobe whale willow_tree wolf woman worm""".split()
C = len(CIFAR100_NAMES)
PER_CLASS = 20
SHOWN = 8  # the project's analyze.classes_shown (the functions' default, 10, is tested directly)
ATTACKS = ("clean", "pgd", "aa")

# ABSLD's PGD-20 class accuracy, by construction free of ties at the ends: the classes of WORST
# are right on 0, 1, ..., 7 of their 20 samples, those of BEST on 13, ..., 20, every other class
# on 10 (the middle). The teacher is right on 15 of 20 everywhere except PLANTED (1 of 20): its
# worst class sits in ABSLD's middle, so no per-class figure or table shows it.
ORDER = np.random.default_rng(7).permutation(C)
WORST = [int(k) for k in ORDER[:SHOWN]]  # worst first
BEST = [int(k) for k in ORDER[SHOWN:2 * SHOWN]]  # lowest of the best first
PLANTED = int(ORDER[50])


def absld_counts() -> list[int]:
    counts = [10] * C
    for rank, k in enumerate(WORST):
        counts[k] = rank
    for rank, k in enumerate(BEST):
        counts[k] = 20 - SHOWN + 1 + rank
    return counts


def teacher_counts() -> list[int]:
    return [1 if k == PLANTED else 15 for k in range(C)]


def write_temperatures_100(root: Path, epochs: int = 3) -> None:
    folder = root / "results" / "distill" / "absld" / "seed0"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["epoch,class,tau_adv,tau_nat,risk_adv,risk_nat,beta"]
    lines += [f"{e},{k},{1 + 0.01 * e * (k - 50) / 50:.4f},{1 - 0.01 * e * (k - 50) / 50:.4f},0.5,0.3,0.1"
              for e in range(1, epochs + 1) for k in range(C)]
    (folder / "temperatures.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def analyzed100(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 100-class project (teacher, ABSLD and RSLAD, one seed) analysed once with classes_shown = 8."""
    root = tmp_path_factory.mktemp("many")
    (root / "references").mkdir()
    (root / "references" / "published.yaml").write_text((REPO / "references" / "published.yaml").read_text())
    write_params(root, **{"distill.methods": ["absld", "rslad"], "seeds": [0], "data.dataset": "cifar100",
                          "profile": "test", "analyze.classes_shown": SHOWN,
                          **{f"analyze.{k}": v for k, v in FAST.items()}})
    write_manifest(root, "cifar100", CIFAR100_NAMES)
    y = labels(PER_CLASS, C)
    rng = np.random.default_rng(1)
    write_records(root, "teacher", y, {"clean": np.ones(len(y), bool), "pgd": first_correct(y, teacher_counts()),
                                       "aa": first_correct(y, teacher_counts())})
    absld = first_correct(y, absld_counts())
    write_records(root, "absld/seed0", y, {"clean": np.ones(len(y), bool), "pgd": absld, "aa": absld})
    rslad = rng.random(len(y)) < 0.6
    write_records(root, "rslad/seed0", y, {"clean": np.ones(len(y), bool), "pgd": rslad, "aa": rslad})
    write_temperatures_100(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = invoke("analyze")
        assert result.exit_code == 0, result.output
        yield root


def is_png(path: Path) -> tuple[int, int]:
    """(width, height) of a valid PNG file (its signature and IHDR chunk)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


@pytest.fixture()
def captured(monkeypatch) -> list:
    """The figures the plot functions save (their tick labels and texts can then be read)."""
    figures: list = []
    for module in (figures_module, analyze_plots, evaluate_plots):  # absld.plots was split; each imports save
        monkeypatch.setattr(module, "save", lambda fig, path: figures.append(fig))
    return figures


def tick_labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [fig._suptitle.get_text() if fig._suptitle else ""]


# --------------------------------------------------------------------------------------------------
# the selection rule
def test_select_classes_picks_exactly_the_k_worst_and_the_k_best():
    scores = np.random.default_rng(3).permutation(C) / C  # distinct scores
    chosen = select_classes(list(scores))  # the default: analyze.classes_shown = 10
    ascending = [int(k) for k in np.argsort(scores)]
    assert chosen.worst == tuple(ascending[:10]) and chosen.best == tuple(ascending[-10:])
    assert chosen.omitted == 80 and chosen.marker == "… 80 classes omitted …"
    assert chosen.slots == [*ascending[:10], None, *ascending[-10:]]
    assert max(scores[list(chosen.worst)]) < min(scores[k] for k in range(C) if k not in chosen.indices) \
        <= max(scores[k] for k in range(C) if k not in chosen.indices) < min(scores[list(chosen.best)])
    three = select_classes(list(scores), 3)
    assert three.indices == tuple(ascending[:3] + ascending[-3:]) and three.omitted == 94


def test_select_classes_breaks_ties_by_class_index_and_ranks_nan_lowest():
    scores = [0.5] * 30
    scores[17], scores[4] = math.nan, 0.1
    chosen = select_classes(scores, 2)
    assert chosen.worst == (17, 4)  # NaN (no sample) first, then the lowest
    assert chosen.best == (28, 29)  # ties: the higher class index ranks higher
    with pytest.raises(ValueError, match="classes_shown"):
        select_classes(scores, 0)


@pytest.mark.parametrize("classes_shown", [5, 10, 50])
def test_ten_classes_are_all_shown_in_class_order(classes_shown):
    chosen = select_classes([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0], classes_shown)
    assert chosen.indices == tuple(range(10)) and chosen.gap is None and chosen.omitted == 0 and chosen.marker == ""


def test_the_param_has_a_default_of_10_is_validated_and_is_in_params_yaml():
    assert AnalyzeConfig().classes_shown == 10
    assert load_params(REPO / "params.yaml").analyze.classes_shown == 10
    assert "classes_shown: 10" in (REPO / "conf" / "config.yaml").read_text()
    with pytest.raises(ValidationError):
        AnalyzeConfig(classes_shown=0)


# --------------------------------------------------------------------------------------------------
# the figure functions
def accuracies_100() -> tuple[dict, list[float]]:
    rng = np.random.default_rng(5)
    acc = {m: {a: list(rng.random(C)) for a in ATTACKS} for m in ("Teacher", "ABSLD", "RSLAD")}
    return acc, acc["ABSLD"]["pgd"]


def test_class_accuracy_figure_shows_the_worst_and_best_of_the_ranking(captured):
    acc, ranking = accuracies_100()
    plot_class_accuracy(CIFAR100_NAMES, acc, [(a, a.upper()) for a in ATTACKS], "unused.png", ranking=ranking,
                        ranked_by="ABSLD's PGD-20 class accuracy")
    fig = captured[0]
    ascending = [int(k) for k in np.argsort(ranking)]
    expected = [CIFAR100_NAMES[k] for k in ascending[:10]] + ["⋯"] + [CIFAR100_NAMES[k] for k in ascending[-10:]]
    assert tick_labels(fig.axes[len(ATTACKS) - 1]) == expected
    shown = "".join(texts(fig))
    assert "… 80 classes omitted …" in shown and "ranked by ABSLD's PGD-20 class accuracy" in shown
    assert "10 worst classes" in shown and "10 best classes" in shown


def test_ten_class_figures_show_every_class_in_order(captured):
    rng = np.random.default_rng(2)
    acc = {m: {a: list(rng.random(10)) for a in ATTACKS} for m in ("Teacher", "ABSLD")}
    plot_class_accuracy(CIFAR10_NAMES, acc, [(a, a.upper()) for a in ATTACKS], "unused.png",
                        ranking=acc["ABSLD"]["pgd"])
    plot_classwise(acc["ABSLD"], CIFAR10_NAMES, "unused.png", title="t")
    assert tick_labels(captured[0].axes[len(ATTACKS) - 1]) == CIFAR10_NAMES
    assert tick_labels(captured[1].axes[0]) == CIFAR10_NAMES
    assert not any("omitted" in t for fig in captured for t in texts(fig))


def test_classwise_figure_of_one_model_ranks_by_its_pgd_column(captured):
    acc, _ = accuracies_100()
    by_attack = acc["RSLAD"]
    plot_classwise(by_attack, CIFAR100_NAMES, "unused.png", title="rslad/seed0")
    ascending = [int(k) for k in np.argsort(by_attack["pgd"])]
    assert tick_labels(captured[0].axes[0]) == ([CIFAR100_NAMES[k] for k in ascending[:10]] + ["⋯"]
                                                + [CIFAR100_NAMES[k] for k in ascending[-10:]])


def test_temperature_figure_draws_the_band_over_all_classes_and_the_shown_curves(captured):
    rows = [{"epoch": e, "class": k, "tau_adv": 1 + 0.01 * e * k, "tau_nat": 1 - 0.01 * e * k}
            for e in (1, 2, 3) for k in range(C)]
    ranking = list(np.random.default_rng(4).random(C))
    plot_temperatures(rows, CIFAR100_NAMES, "unused.png", ranking=ranking, ranked_by="the ranking")
    fig = captured[0]
    ax = fig.axes[0]
    ascending = [int(k) for k in np.argsort(ranking)]
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert legend[:2] == ["min–max over all 100 classes", "median over all 100 classes"]
    assert legend[2:] == [f"{CIFAR100_NAMES[k]} (worst)" for k in ascending[:10]] + [
        f"{CIFAR100_NAMES[k]} (best)" for k in ascending[-10:]]
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.max() == pytest.approx(1 + 0.03 * 99) and band.min() == pytest.approx(1.0)  # every class
    assert ax.lines[0].get_ydata().tolist() == pytest.approx([1 + 0.01 * e * 49.5 for e in (1, 2, 3)])  # median


def test_many_class_figures_render_to_valid_pngs(tmp_path):
    acc, ranking = accuracies_100()
    plot_class_accuracy(CIFAR100_NAMES, acc, [(a, a.upper()) for a in ATTACKS], tmp_path / "class_accuracy.png",
                        ranking=ranking, ranked_by="ABSLD's PGD-20 class accuracy")
    plot_classwise(acc["ABSLD"], CIFAR100_NAMES, tmp_path / "classwise.png", title="absld/seed0")
    rows = [{"epoch": e, "class": k, "tau_adv": 1 + 0.01 * e * k, "tau_nat": 1.0} for e in (1, 2) for k in range(C)]
    plot_temperatures(rows, CIFAR100_NAMES, tmp_path / "temperatures.png")  # no ranking: by the last tau_adv
    for name in ("class_accuracy.png", "classwise.png", "temperatures.png"):
        width, height = is_png(tmp_path / name)
        assert 600 < width < 5000 and 300 < height < 5000, name


# --------------------------------------------------------------------------------------------------
# the analyze stage on 100 classes
def test_statistics_are_over_all_classes_with_the_planted_worst_class_omitted_from_the_figures(analyzed100):
    fairness = json.loads((analyzed100 / "results" / "fairness.json").read_text())
    teacher = fairness["teacher"]["pgd"]
    assert len(teacher["class_acc"]) == C
    assert teacher["worst"] == pytest.approx(1 / 20)  # the planted class, omitted from every per-class view
    acc = np.array(teacher["class_acc"])
    assert teacher["nsd"] == pytest.approx(acc.std() / acc.mean())
    absld = np.array(fairness["absld/seed0"]["pgd"]["class_acc"])
    assert fairness["absld/seed0"]["pgd"]["worst"] == pytest.approx(absld.min()) == 0.0
    assert fairness["absld/seed0"]["pgd"]["avg"] == pytest.approx(absld.mean())
    table = (analyzed100 / "results" / "table.md").read_text()
    assert "Worst: worst-class accuracy over all 100 classes (%)" in table
    teacher_row = next(line for line in table.splitlines() if line.startswith("| Teacher "))
    assert teacher_row.split(" | ")[5].startswith("5.00 ")  # PGD-20 Worst (clean: avg, worst, nsd first)
    report = (analyzed100 / "results" / "report.md").read_text()
    section = report.split("## Worst and best classes")[1].split("\n## ")[0]
    assert CIFAR100_NAMES[PLANTED] not in section.split("Worst class over all")[0]  # not shown ...
    assert (f"Worst class over all 100 classes under PGD-20 (shown above or not): "
            f"Teacher: {CIFAR100_NAMES[PLANTED]} (5.00 %)") in section  # ... but reported


def test_the_report_table_and_figure_show_the_worst_and_best_classes_by_the_rule(analyzed100):
    report = (analyzed100 / "results" / "report.md").read_text()
    section = report.split("## Worst and best classes")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    names = [line.split(" | ")[1] for line in rows]
    assert names == [CIFAR100_NAMES[k] for k in WORST] + ["… 84 classes omitted …"] + [
        CIFAR100_NAMES[k] for k in BEST]
    assert [line.split(" | ")[0] for line in rows] == [f"| {r}" for r in range(1, SHOWN + 1)] + ["|"] + [
        f"| {r}" for r in range(C - SHOWN + 1, C + 1)]
    rule = "the 8 worst and the 8 best of 100 classes, ranked by ABSLD's PGD-20 class accuracy (seed 0)"
    assert rule in report and "Avg, Worst and NSD in the tables above are computed over all 100 classes" in report
    assert "results/classwise.csv" in report
    for png in ("class_accuracy.png", "temperatures_absld_seed0.png", "tradeoff.png"):
        width, height = is_png(analyzed100 / "plots" / "analyze" / png)
        assert 600 < width < 5000 and 300 < height < 5000, png


def test_the_full_classwise_csv_has_every_class_of_every_model_and_attack(analyzed100):
    fairness = json.loads((analyzed100 / "results" / "fairness.json").read_text())
    with open(analyzed100 / "results" / "classwise.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["model", "attack", "class", "accuracy"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["attack"]), []).append(row)
    assert set(groups) == {(m, a) for m in ("teacher", "absld/seed0", "rslad/seed0") for a in (*ATTACKS, "worst")}
    for (model, attack), group in groups.items():
        assert len(group) == C
        assert [r["class"] for r in group] == CIFAR100_NAMES
        assert [float(r["accuracy"]) for r in group] == pytest.approx(fairness[model][attack]["class_acc"], abs=1e-6)


def test_ten_classes_keep_their_outputs(tmp_path, monkeypatch):
    make_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert invoke("analyze").exit_code == 0
    report = (tmp_path / "results" / "report.md").read_text()
    assert "Worst and best classes" not in report and "omitted" not in report and "over all" not in report
    assert "Worst: worst-class accuracy (%)" in report
    with open(tmp_path / "results" / "classwise.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * 6 * 10 and [r["class"] for r in rows[:10]] == CIFAR10_NAMES


# --------------------------------------------------------------------------------------------------
# W&B
def test_wandb_keys_keep_every_class_and_add_the_band_for_many_classes():
    row = {"epoch": 2, **{f"tau_adv/{k}": 1.0 + k / 100 for k in range(C)}, "train_loss": 0.5}
    named = name_classes(row, CIFAR100_NAMES)
    assert all(f"tau_adv/{name}" in named for name in CIFAR100_NAMES)
    assert named["tau_adv_classes/min"] == 1.0 and named["tau_adv_classes/max"] == pytest.approx(1.99)
    assert named["tau_adv_classes/median"] == pytest.approx(1.495)
    few = name_classes({f"tau_adv/{k}": 1.0 for k in range(10)}, CIFAR10_NAMES)
    assert not any("_classes/" in key for key in few)


def test_wandb_report_panels_show_the_worst_and_best_classes():
    pytest.importorskip("wandb_workspaces")
    y = labels(PER_CLASS, C)
    absld = first_correct(y, absld_counts())
    records = {m: Records(m, np.arange(len(y)), y, {"pgd": absld, "worst": absld}, 8 / 255)
               for m in ("teacher", "absld/seed0")}
    fairness = fairness_table(records, C, AnalyzeConfig(**FAST))
    report = build_wandb_report("proj", "me", "study", fairness, ["pgd", "worst"], class_names=CIFAR100_NAMES,
                                classes_shown=SHOWN)
    _, classwise, taus = [b for b in report.blocks if type(b).__name__ == "PanelGrid"]
    shown = [CIFAR100_NAMES[k] for k in WORST + BEST]
    assert classwise.panels[0].metrics == [f"pgd/class/{name}" for name in shown]
    assert "84 classes omitted" in classwise.panels[0].title
    assert taus.panels[0].y == [f"tau_adv/{name}" for name in shown]
    assert taus.panels[2].y == ["tau_adv_classes/min", "tau_adv_classes/median", "tau_adv_classes/max"]


def test_the_ranking_rule_is_the_reference_mean_over_seeds_then_the_students_then_the_teacher():
    def cell(values):
        return {"class_acc": list(values)}

    fairness = {"teacher": {"pgd": cell([0.9, 0.1, 0.5])},
                "absld/seed0": {"pgd": cell([0.2, 0.4, None])}, "absld/seed1": {"pgd": cell([0.4, 0.0, None])},
                "rslad/seed0": {"pgd": cell([1.0, 1.0, 1.0])}}
    scores, words = class_ranking(fairness, ["clean", "pgd", "aa", "worst"], "absld")
    assert scores[:2] == pytest.approx([0.3, 0.2]) and math.isnan(scores[2])  # null: no defined accuracy
    assert words == "ABSLD's PGD class accuracy (mean over its 2 seeds)"
    scores, words = class_ranking(fairness, ["pgd"], "ard")  # the reference not evaluated
    assert scores == pytest.approx([(0.2 + 0.4 + 1.0) / 3, (0.4 + 0.0 + 1.0) / 3, 1.0])
    assert words == "the mean PGD class accuracy of the 3 evaluated students"
    scores, words = class_ranking({"teacher": fairness["teacher"]}, ["pgd"], "absld")
    assert scores == pytest.approx([0.9, 0.1, 0.5]) and words == "the teacher's PGD class accuracy"
