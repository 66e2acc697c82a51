"""The analyze stage on synthetic records: fairness.json, tests, tables, report and figures."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from absld.analyze.analysis import compare_to_reference, fairness_table, seed_comparisons, seed_summaries, verdict
from absld.evaluate.cascade import protocol
from absld.evaluate.records import Records
from absld.params import AnalyzeConfig, EvaluateConfig, read_yaml
from absld.params.analyze import NEWER_BASELINES, PAPER_BASELINES
from pipeline.cli import main
from tests.conftest import REPO
from tests.fixtures import CIFAR10_NAMES

ATTACKS = ("clean", "fgsm", "pgd", "cw", "aa")
PER_CLASS = 20
NUM_CLASSES = len(CIFAR10_NAMES)
FAST = {"n_bootstrap": 200, "n_permutations": 500,
        "baselines": list(PAPER_BASELINES)}  # the family these scratch projects were written for: the paper's 11
PAPER_PROTOCOL = protocol(EvaluateConfig())  # the paper's evaluation: float32, standard AutoAttack


# --------------------------------------------------------------------------------------------------
# synthetic projects
def labels(per_class: int = PER_CLASS, num_classes: int = NUM_CLASSES, seed: int = 0) -> np.ndarray:
    """(N,) labels, every class ``per_class`` times, in a fixed shuffled order."""
    y = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(seed).permutation(y)


def first_correct(y: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Correct on the first ``counts[k]`` samples of class k (in index order), wrong elsewhere."""
    correct = np.zeros(len(y), dtype=bool)
    for k, count in enumerate(counts):
        correct[np.flatnonzero(y == k)[:count]] = True
    return correct


def random_correct(y: np.ndarray, p: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(len(y)) < p


def write_records(root: Path, model: str, y: np.ndarray, correct: Mapping[str, np.ndarray], *,
                  index: np.ndarray | None = None, eps: float = 8 / 255,
                  protocol: Mapping | None = None) -> Path:
    """results/eval/<model>/records.npz as the evaluate stage writes it (``correct_worst`` = AND;
    ``protocol``: the paper's evaluation unless given)."""
    protocol = PAPER_PROTOCOL if protocol is None else protocol
    folder = root / "results" / "eval" / model
    folder.mkdir(parents=True, exist_ok=True)
    worst = np.logical_and.reduce([correct[a] for a in correct])
    arrays = {f"correct_{a}": np.asarray(c, dtype=bool) for a, c in correct.items()}
    np.savez(folder / "records.npz", index=np.arange(len(y)) if index is None else index, y=y, eps=np.float64(eps),
             correct_worst=worst, protocol=np.asarray(json.dumps(protocol)), **arrays)
    return folder / "records.npz"


def write_params(root: Path, **changes: object) -> None:
    """The repository's params.yaml with dotted-key changes."""
    params = read_yaml(REPO / "params.yaml")
    for dotted, value in changes.items():
        node = params
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def write_manifest(root: Path, dataset: str = "cifar10", names: Sequence[str] = CIFAR10_NAMES) -> None:
    folder = root / "data" / dataset
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"class_names": list(names), "num_classes": len(names)}))


def write_temperatures(root: Path, seed: int = 0, epochs: int = 4) -> None:
    folder = root / "results" / "distill" / "absld" / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["epoch,class,tau_adv,tau_nat,risk_adv,risk_nat,beta"]
    for epoch in range(1, epochs + 1):
        for k in range(NUM_CLASSES):
            tau = 1.0 + 0.05 * epoch * (k - 4.5) / 4.5
            lines.append(f"{epoch},{k},{tau:.4f},{1 + (tau - 1) / 2:.4f},{0.5 + 0.01 * k},{0.3},{0.1}")
    (folder / "temperatures.csv").write_text("\n".join(lines) + "\n")


def write_train_log(root: Path, method: str, seed: int, epochs: int = 3) -> None:
    """A distill train_log.csv: train_acc_adv = 0.1 * epoch + 0.01 * seed (+ 0.5 for absld)."""
    folder = root / "results" / "distill" / method / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["epoch,lr,train_loss,train_acc_adv"]
    lines += [f"{e},0.1,{2.0 / e:.4f},{0.1 * e + 0.01 * seed + (0.5 if method == 'absld' else 0):.4f}"
              for e in range(1, epochs + 1)]
    (folder / "train_log.csv").write_text("\n".join(lines) + "\n")


def write_selection(root: Path, model: str, select: str = "val_fair_best", epoch: int = 3) -> None:
    folder = root / "results" / "eval" / model
    folder.mkdir(parents=True, exist_ok=True)
    selection = {"select": select, "selected_epoch": epoch, "selection_split": "validation"}
    (folder / "metrics.json").write_text(json.dumps({"n": 200, "selection": selection}))  # as evaluate writes it


def teacher_correct(y: np.ndarray) -> dict[str, np.ndarray]:
    """Clean: class k right on its first 10 + k samples (acc_k = (10 + k) / 20); attacks at random."""
    out = {"clean": first_correct(y, [10 + k for k in range(NUM_CLASSES)])}
    out.update({a: random_correct(y, 0.5, seed=i) for i, a in enumerate(ATTACKS[1:], start=1)})
    return out


def better_and_worse(y: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """ABSLD-like and RSLAD-like records: the second is the first with extra errors under AA, and
    never right on class 3 (cat) under AA: a clearly better reference."""
    good = {a: random_correct(y, 0.8 if a == "clean" else 0.6, seed=10 + i) for i, a in enumerate(ATTACKS)}
    bad = {a: c.copy() for a, c in good.items()}
    bad["aa"] = good["aa"] & random_correct(y, 0.6, seed=99) & (y != 3)
    return good, bad


def make_project(root: Path, methods: Sequence[str] = ("absld", "rslad"), seeds: Sequence[int] = (0,),
                 dataset: str = "cifar10") -> Path:
    """A scratch project: params, published numbers, manifest, the teacher's and every student's records."""
    (root / "references").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "references" / "published.yaml", root / "references" / "published.yaml")
    write_params(root, **{"distill.methods": list(methods), "seeds": list(seeds), "data.dataset": dataset,
                          "profile": "test", **{f"analyze.{k}": v for k, v in FAST.items()}})
    write_manifest(root, dataset)
    y = labels()
    write_records(root, "teacher", y, teacher_correct(y))
    good, bad = better_and_worse(y)
    for i, method in enumerate(methods):
        for seed in seeds:
            correct = good if method == "absld" else bad
            if seed:  # another seed: a few flipped outcomes
                flip = random_correct(y, 0.05, seed=100 * seed + i)
                correct = {a: c ^ flip for a, c in correct.items()}
            write_records(root, f"{method}/seed{seed}", y, correct)
            write_selection(root, f"{method}/seed{seed}")
            write_train_log(root, method, seed)
    if "absld" in methods:
        for seed in seeds:
            write_temperatures(root, seed)
    return root


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """One project analysed once (absld clearly better than rslad under AA); (root, stdout)."""
    root = make_project(tmp_path_factory.mktemp("analyzed"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = invoke("analyze")
        assert result.exit_code == 0, result.output
        yield root, result.output


def fairness_of(root: Path) -> dict:
    return json.loads((root / "results" / "fairness.json").read_text())


def strict_json(text: str) -> object:
    def refuse(name: str) -> object:
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------------------------------
# fairness.json
def test_fairness_cell_equals_hand_computed_values(analyzed):
    root, _ = analyzed
    clean = fairness_of(root)["teacher"]["clean"]
    # class k right on 10 + k of 20 samples: acc_k = (10 + k) / 20, k = 0..9
    assert clean["class_acc"] == pytest.approx([(10 + k) / 20 for k in range(10)])
    assert clean["avg"] == pytest.approx(0.725)  # 145 / 200
    assert clean["worst"] == pytest.approx(0.5)
    # std of (10..19) / 20 with ddof 0 is sqrt(8.25) / 20; divided by the mean 14.5 / 20
    assert clean["nsd"] == pytest.approx(math.sqrt(8.25) / 14.5)


def test_fairness_json_has_exactly_the_contract_shape(analyzed):
    root, _ = analyzed
    fairness = fairness_of(root)
    assert list(fairness) == ["teacher", "absld/seed0", "rslad/seed0"]
    for by_attack in fairness.values():
        assert list(by_attack) == ["clean", "fgsm", "pgd", "cw", "aa", "worst"]
        for entry in by_attack.values():
            assert set(entry) == {"avg", "worst", "nsd", "class_acc", "avg_ci", "worst_ci", "nsd_ci"}
            assert len(entry["class_acc"]) == NUM_CLASSES
            assert all(0.0 <= v <= 1.0 for v in [entry["avg"], entry["worst"], *entry["class_acc"]])


def test_dvc_plot_data_puts_every_model_in_one_chart(analyzed):
    """plots/analyze/ holds the long-form data of dvc.yaml's top-level plots: per attack, every
    model's class accuracies (those of fairness.json); every student's curve; ABSLD's temperatures;
    Avg against NSD."""
    import csv

    root, _ = analyzed
    folder = root / "plots" / "analyze"
    read = lambda path: list(csv.DictReader(open(path, newline="")))  # noqa: E731
    fairness = fairness_of(root)
    assert sorted(p.stem for p in (folder / "classwise").glob("*.csv")) == sorted(
        ["clean", "fgsm", "pgd", "cw", "aa", "worst"])
    rows = read(folder / "classwise" / "pgd.csv")
    assert [r["model"] for r in rows[::NUM_CLASSES]] == ["Teacher", "ABSLD", "RSLAD"]
    assert [r["class"] for r in rows[:NUM_CLASSES]] == list(CIFAR10_NAMES)
    for label, model in (("Teacher", "teacher"), ("ABSLD", "absld/seed0"), ("RSLAD", "rslad/seed0")):
        got = [float(r["accuracy"]) for r in rows if r["model"] == label]
        assert got == pytest.approx(fairness[model]["pgd"]["class_acc"])
    curves = read(folder / "training.csv")
    assert {(r["model"], int(r["epoch"])) for r in curves} == {(f"{m} seed 0", e) for m in ("ABSLD", "RSLAD")
                                                              for e in (1, 2, 3)}
    assert float(next(r for r in curves if r["model"] == "ABSLD seed 0" and r["epoch"] == "2")["train_acc_adv"]) \
        == pytest.approx(0.7)
    temperatures = read(folder / "temperatures.csv")
    assert len(temperatures) == 4 * NUM_CLASSES
    last_dog = next(r for r in temperatures if r["epoch"] == "4" and r["class"] == "dog")
    assert float(last_dog["tau_adv"]) == pytest.approx(1.0 + 0.2 * 0.5 / 4.5, abs=1e-4)
    tradeoff = {(r["model"], r["attack"]): r for r in read(folder / "tradeoff.csv")}
    assert float(tradeoff[("RSLAD", "PGD-20")]["avg"]) == pytest.approx(fairness["rslad/seed0"]["pgd"]["avg"])
    assert float(tradeoff[("RSLAD", "PGD-20")]["nsd"]) == pytest.approx(fairness["rslad/seed0"]["pgd"]["nsd"])


def test_bootstrap_interval_contains_the_point_estimate(analyzed):
    root, _ = analyzed
    for by_attack in fairness_of(root).values():
        for entry in by_attack.values():
            low, high = entry["avg_ci"]
            assert low <= entry["avg"] <= high
            if np.mean(entry["class_acc"]) >= 0.2:  # see the next test for nearly-all-wrong classes
                for stat in ("worst", "nsd"):
                    low, high = entry[f"{stat}_ci"]
                    assert low <= entry[stat] <= high, stat


def test_intervals_excluding_the_estimate_are_flagged_in_the_report(analyzed):
    # ABSLD's worst case: class accuracies around 0.08 from 20 samples each; resampling inflates
    # their spread, so the NSD percentile interval lies wholly above the estimate: say so
    root, _ = analyzed
    entry = fairness_of(root)["absld/seed0"]["worst"]
    assert entry["nsd_ci"][0] > entry["nsd"]
    assert "ABSLD (seed 0) Worst-case NSD) the bootstrap interval does not contain the point estimate" in (
        root / "results" / "report.md").read_text()


def test_undefined_nsd_is_null_in_strict_json(tmp_path, monkeypatch):
    make_project(tmp_path)
    y = labels()
    never = {**teacher_correct(y), "aa": np.zeros(len(y), dtype=bool)}  # every class at 0 under AA
    write_records(tmp_path, "teacher", y, never)
    monkeypatch.chdir(tmp_path)
    assert invoke("analyze").exit_code == 0
    for name in ("fairness.json", "comparisons.json"):
        strict_json((tmp_path / "results" / name).read_text())  # no NaN anywhere
    assert fairness_of(tmp_path)["teacher"]["aa"]["nsd"] is None


# --------------------------------------------------------------------------------------------------
# tests of the reference against the baselines
def in_memory_records(correct_by_model: Mapping[str, Mapping[str, np.ndarray]], y: np.ndarray) -> dict[str, Records]:
    out = {}
    for model, correct in correct_by_model.items():
        worst = np.logical_and.reduce(list(correct.values()))
        out[model] = Records(model, np.arange(len(y)), y, {**dict(correct), "worst": worst}, 8 / 255)
    return out


def test_identical_models_are_not_significantly_different():
    y = labels()
    good, _ = better_and_worse(y)
    noisy = {a: c ^ random_correct(y, 0.3, seed=7) for a, c in good.items()}  # many discordant pairs
    records = in_memory_records({"absld/seed0": good, "rslad/seed0": good, "sat/seed0": noisy}, y)
    groups = {"absld": {0: "absld/seed0"}, "rslad": {0: "rslad/seed0"}, "sat": {0: "sat/seed0"}}
    result = compare_to_reference(records, groups, NUM_CLASSES, AnalyzeConfig(**FAST))
    assert result is not None and result["baselines"] == ["rslad", "sat"]
    for attack, by_baseline in result["attacks"].items():
        same = by_baseline["rslad"]
        assert same["avg"]["p"] == 1.0 and same["avg"]["diff"] == 0.0
        assert same["worst"]["p"] > 0.5 and same["nsd"]["p"] > 0.5
        for stat in ("avg", "worst", "nsd"):  # Holm never lowers a p-value
            for test in by_baseline.values():
                assert test[stat]["p_holm"] >= test[stat]["p"]


def test_clearly_better_reference_is_significant_and_the_report_says_so(analyzed):
    root, _ = analyzed
    comparisons = json.loads((root / "results" / "comparisons.json").read_text())["comparisons"]
    aa = comparisons["attacks"]["aa"]["rslad"]
    assert aa["avg"]["diff"] > 0.1 and aa["avg"]["p_holm"] < 1e-3
    assert aa["worst"]["diff"] > 0.3 and aa["worst"]["p_holm"] < 0.05
    report = (root / "results" / "report.md").read_text()
    assert re.search(r"Under AA, ABSLD's Avg accuracy is \d+\.\d\d points higher than RSLAD's \(McNemar exact test, "
                     r"Holm-adjusted p < 0\.001: significant at α = 0\.05\); its worst-class accuracy is \d+\.\d\d "
                     r"points higher than RSLAD's \(paired permutation test, Holm-adjusted p = 0\.0\d\d: significant",
                     report), report
    # identical records under clean: the sentence says so, without significance
    assert "Under Clean, ABSLD's Avg accuracy is the same as RSLAD's (McNemar exact test, Holm-adjusted p = 1: " \
           "not significant)" in report


def test_without_the_reference_method_no_tests_are_run(tmp_path, monkeypatch):
    make_project(tmp_path, methods=("rslad", "sat"))
    monkeypatch.chdir(tmp_path)
    assert invoke("analyze").exit_code == 0
    assert json.loads((tmp_path / "results" / "comparisons.json").read_text())["comparisons"] is None
    assert "not trained" in (tmp_path / "results" / "report.md").read_text()


def test_several_seeds_give_seed_summaries_and_mean_std_cells(tmp_path, monkeypatch):
    make_project(tmp_path, seeds=(0, 1))
    monkeypatch.chdir(tmp_path)
    assert invoke("analyze").exit_code == 0
    extra = json.loads((tmp_path / "results" / "comparisons.json").read_text())
    summary = extra["seed_summary"]["absld"]["aa"]["avg"]
    assert summary["n"] == 2 and summary["ci"][0] <= summary["mean"] <= summary["ci"][1]
    assert extra["comparisons"]["attacks"]["aa"]["rslad"]["seeds"] == [0, 1]
    assert extra["comparisons"]["attacks"]["aa"]["rslad"]["n_pairs"] == 2 * PER_CLASS * NUM_CLASSES
    table = (tmp_path / "results" / "table.md").read_text()
    assert "mean ± std over 2 seeds" in table and re.search(r"\| ABSLD \| \d+\.\d\d ± \d+\.\d\d", table)
    assert (tmp_path / "plots" / "analyze" / "temperatures_absld_seed1.png").is_file()


# --------------------------------------------------------------------------------------------------
# tables
COLUMN_LABELS = ("Clean", "FGSM", "PGD-20", "AA", "Worst-case")


def test_tables_contain_every_method_and_attack(analyzed):
    root, _ = analyzed
    results = root / "results"
    for name, cw in (("table.md", "CW∞"), ("table.csv", "CW∞"), ("table.tex", r"CW$_\infty$")):
        text = (results / name).read_text()
        for label in (*COLUMN_LABELS, cw, "Teacher", "ABSLD", "RSLAD"):
            assert label in text, (name, label)
    rows = (results / "table.csv").read_text().splitlines()
    assert rows[0].split(",")[:4] == ["Method", "Clean Avg (%)", "Clean Worst (%)", "Clean NSD"]
    assert len(rows[0].split(",")) == 1 + 3 * 6
    assert [r.split(",")[0] for r in rows[1:]] == ["Teacher", "Teacher (published)", "ABSLD", "RSLAD",
                                                   "RSLAD (published)"]


def test_table_shows_intervals_compactly_and_names_the_rules(analyzed):
    root, _ = analyzed
    table = (root / "results" / "table.md").read_text()
    assert "| Teacher | 72.50 [" in table  # 72.50 [lo, hi]: the point estimate, then the interval
    assert "ddof = 0" in table and "held-out validation split" in table and "8/255" in table
    tex = (root / "results" / "table.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex and r"\caption{" in tex
    assert "ddof = 0" in tex and "held-out validation split" in tex


def test_published_anchors_appear_where_they_exist(analyzed):
    root, _ = analyzed
    for name in ("table.md", "table.csv", "table.tex"):
        text = (root / "results" / name).read_text()
        assert "84.92" in text and "53.08" in text and "51.49" in text, name
        assert "RobustBench" in text or name == "table.csv"
    published_row = next(r for r in (root / "results" / "table.md").read_text().splitlines()
                         if r.startswith("| *Teacher (published)*"))
    cells = [c.strip() for c in published_row.strip("|").split("|")]
    assert cells[1] == "84.92" and cells[2] == "–"  # clean Avg published, clean Worst not


def test_published_anchors_appear_nowhere_else(tmp_path, monkeypatch):
    make_project(tmp_path, dataset="cifar100")  # published.yaml has no cifar100 numbers
    monkeypatch.chdir(tmp_path)
    assert invoke("analyze").exit_code == 0
    for name in ("table.md", "table.csv", "table.tex", "report.md"):
        text = (tmp_path / "results" / name).read_text()
        assert "published" not in text.lower() and "84.92" not in text, name


# --------------------------------------------------------------------------------------------------
# errors
def test_models_evaluated_on_different_samples_are_a_clear_error(tmp_path, monkeypatch):
    make_project(tmp_path)
    y = labels()
    index = np.arange(len(y))
    index[5] = 999  # another test image at position 5
    write_records(tmp_path, "rslad/seed0", y, teacher_correct(y), index=index)
    monkeypatch.chdir(tmp_path)
    result = invoke("analyze")
    assert result.exit_code == 1
    assert "different test samples" in result.output and "same samples" in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "results" / "fairness.json").exists()


def test_models_attacked_at_different_eps_are_a_clear_error(tmp_path, monkeypatch):
    make_project(tmp_path)
    y = labels()
    write_records(tmp_path, "rslad/seed0", y, teacher_correct(y), eps=4 / 255)
    monkeypatch.chdir(tmp_path)
    result = invoke("analyze")
    assert result.exit_code == 1 and "different eps (8/255 vs 4/255)" in result.output


@pytest.mark.parametrize(("change", "shown"), [
    ({"precision": "bf16-autocast"}, 'precision: "float32" vs "bf16-autocast"'),
    ({"cascade": True}, "cascade: false vs true"),
    ({"aa": {**PAPER_PROTOCOL["aa"], "backend": "torchattacks"}}, 'aa.backend: "pyautoattack" vs "torchattacks"'),
])
def test_models_evaluated_differently_are_refused(tmp_path, monkeypatch, change, shown):
    """analyze reads how each model was evaluated from its records and compares only like with like."""
    make_project(tmp_path)
    y = labels()
    write_records(tmp_path, "rslad/seed0", y, teacher_correct(y), protocol={**PAPER_PROTOCOL, **change})
    monkeypatch.chdir(tmp_path)
    result = invoke("analyze")
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "teacher and rslad/seed0 were evaluated differently" in result.output and shown in result.output
    assert not (tmp_path / "results" / "fairness.json").exists()  # nothing written


def test_records_without_a_protocol_are_refused(tmp_path, monkeypatch):
    make_project(tmp_path)
    path = tmp_path / "results" / "eval" / "rslad" / "seed0" / "records.npz"
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "protocol"}
    np.savez(path, **arrays)
    monkeypatch.chdir(tmp_path)
    result = invoke("analyze")
    assert result.exit_code == 1 and "does not record how it was evaluated" in result.output
    assert "re-run the evaluate stage of rslad/seed0" in result.output


def test_a_non_standard_aa_is_labelled_in_table_report_and_wandb_keys(tmp_path, monkeypatch):
    make_project(tmp_path)
    custom = protocol(EvaluateConfig(aa={"version": "custom", "attacks": ["apgd-ce"]}))
    for path in (tmp_path / "results" / "eval").rglob("records.npz"):
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["protocol"] = np.asarray(json.dumps(custom))
        np.savez(path, **arrays)
    monkeypatch.chdir(tmp_path)
    result = invoke("analyze")
    assert result.exit_code == 0, result.output
    table = (tmp_path / "results" / "table.md").read_text()
    report = (tmp_path / "results" / "report.md").read_text()
    assert "AA* Avg" in table and "| AA Avg" not in table and "not the standard AutoAttack" in table
    assert "Under AA*" in report and "Under AA," not in report
    meta = json.loads((tmp_path / "results" / "comparisons.json").read_text())["meta"]
    assert meta["protocol"]["aa"]["standard"] is False
    # the keys DVC and users read say AA* too (dvc exp show lists fairness.json's keys)
    cells = fairness_of(tmp_path)
    assert all("aa_star" in by_attack and "aa" not in by_attack for by_attack in cells.values())
    csv_attacks = {line.split(",")[1] for line in (tmp_path / "results" / "classwise.csv").read_text().splitlines()[1:]}
    assert "aa_star" in csv_attacks and "aa" not in csv_attacks
    # and RSLAD's published AutoAttack number is not placed beside our AA*
    assert "51.49" not in table and "The published AutoAttack number of RSLAD is not shown" in table


def test_a_published_anchor_at_another_eps_is_not_shown(tmp_path, monkeypatch):
    """-S evaluate.eps=4/255: RobustBench's 8/255 numbers must not sit in the same table."""
    make_project(tmp_path)
    for path in (tmp_path / "results" / "eval").rglob("records.npz"):
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["eps"] = np.asarray(4 / 255)
        np.savez(path, **arrays)
    monkeypatch.chdir(tmp_path)
    assert invoke("analyze").exit_code == 0
    table = (tmp_path / "results" / "table.md").read_text()
    assert "(published)" not in table.replace("Published numbers of", "")
    assert "Published numbers of RSLAD (Zi, Zhao, Ma, Jiang; ICCV 2021 (RSLAD), CIFAR-10 ResNet-18, AutoAttack) are " \
           "not shown: eps 8/255, ours 4/255." in table


def _seed_records(per_seed: Mapping[str, Sequence[np.ndarray]], y: np.ndarray) -> tuple[dict, dict]:
    """``(records, groups)`` of ``{method: [correct of seed 0, seed 1, ...]}`` under one attack, pgd."""
    records = {f"{m}/seed{s}": Records(model=f"{m}/seed{s}", index=np.arange(len(y)), y=y,
                                       correct={"pgd": c, "worst": c}, eps=8 / 255)
               for m, seeds in per_seed.items() for s, c in enumerate(seeds)}
    groups = {m: {s: f"{m}/seed{s}" for s in range(len(seeds))} for m, seeds in per_seed.items()}
    return records, groups


def test_a_one_image_difference_repeated_in_each_seed_is_not_called_significant():
    """The issue's case: the worst class differs by the same one image in each of two seeds (1 vs 2
    right of 100). Before: 'contradicted ... p < 0.001'. Now the spread is unknown and said so."""
    y = np.repeat([0, 1], 100)
    absld = np.zeros(200, dtype=bool)
    absld[[0]] = True  # class 0: 1 of 100
    absld[100:150] = True  # class 1: 50 of 100
    rslad = absld.copy()
    rslad[1] = True  # class 0: 2 of 100, the one extra image
    records, groups = _seed_records({"absld": [absld, absld], "rslad": [rslad, rslad]}, y)
    cfg = AnalyzeConfig(n_permutations=500)
    table = fairness_table(records, 2, cfg)
    seeds = seed_comparisons(table, groups, cfg)
    worst = seeds["attacks"]["pgd"]["rslad"]["worst"]
    assert worst["agree"] and math.isnan(worst["p"]) and worst["diff"] == pytest.approx(-0.01)
    per_sample = compare_to_reference(records, groups, 2, cfg)
    assert per_sample["attacks"]["pgd"]["rslad"]["worst"]["p"] == 1.0  # one image, swapped in both seeds
    text = verdict(seeds, seed_summaries(table, groups, 0.95), ["pgd"], comparisons=per_sample)
    assert "contradicted" not in text and "p < 0.001" not in text
    assert ("worst-class robustness up is not shown (1.0 % vs 2.0 %: -1.00 points in each of the 2 seeds: they "
            "agree, so the spread over training runs is unknown and no t-test is possible") in text
    assert "the per-sample test on the same records gives p = 1" in text


def test_the_holm_adjustment_does_not_depend_on_how_many_baselines_were_trained():
    """The issue's case: the same ABSLD-vs-RSLAD numbers read 'holds' with 2 trained baselines and
    'not shown' with 5. With the declared family the adjusted p is the same."""
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(4), 50)
    absld = [rng.random(200) < 0.6 for _ in range(3)]
    rslad = [a & (rng.random(200) < 0.8) for a in absld]
    copies = {m: absld for m in ("sat", "ard", "iad", "trades")}  # baselines no different from ABSLD
    cfg = AnalyzeConfig(n_permutations=300)
    results = []
    for extra in (["sat"], list(copies)):
        records, groups = _seed_records({"absld": absld, "rslad": rslad, **{m: copies[m] for m in extra}}, y)
        table = fairness_table(records, 4, cfg)
        results.append((seed_comparisons(table, groups, cfg), compare_to_reference(records, groups, 4, cfg)))
    for stat in ("avg", "worst", "nsd"):
        assert results[0][0]["attacks"]["pgd"]["rslad"][stat]["p_holm"] == pytest.approx(
            results[1][0]["attacks"]["pgd"]["rslad"][stat]["p_holm"])
        assert results[0][1]["attacks"]["pgd"]["rslad"][stat]["p_holm"] == pytest.approx(
            results[1][1]["attacks"]["pgd"]["rslad"][stat]["p_holm"])


def test_a_missing_evaluation_names_the_stage_to_run(tmp_path, monkeypatch):
    make_project(tmp_path)
    (tmp_path / "results" / "eval" / "rslad" / "seed0" / "records.npz").unlink()
    monkeypatch.chdir(tmp_path)
    result = invoke("analyze")
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "rslad/seed0" in result.output and "dvc repro evaluate@rslad-0" in result.output


# --------------------------------------------------------------------------------------------------
# outputs
def test_analyze_writes_every_output_and_prints_the_table(analyzed):
    root, output = analyzed
    for name in ("fairness.json", "comparisons.json", "table.md", "table.tex", "table.csv", "report.md"):
        assert (root / "results" / name).stat().st_size > 0, name
    pngs = sorted(p.name for p in (root / "plots" / "analyze").glob("*.png"))
    assert pngs == ["class_accuracy.png", "temperatures_absld_seed0.png", "tradeoff.png"]
    assert (root / "results" / "table.md").read_text() in output
    report = (root / "results" / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(links) == 3 and all((root / "results" / link).resolve().is_file() for link in links)
    for phrase in ("## Configuration", "8/255", "| test samples | 200", "NSD ddof", "val_fair_best"):
        assert phrase in report, phrase


def test_figures_are_pngs_of_a_readable_size(analyzed):
    root, _ = analyzed
    # the PNGs are checked by eye; here: they are real PNGs of a sensible size
    for png in (root / "plots" / "analyze").glob("*.png"):
        head = png.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        assert 600 < width < 5000 and 300 < height < 5000, png.name
    assert os.environ["WANDB_MODE"] == "disabled"


def test_published_numbers_only_describe_matching_models():
    from absld.analyze.published import Published
    from absld.analyze.study import applicable
    from absld.params import Params

    published = {"teacher": Published({"clean": {"avg": 0.8492}}, "RobustBench", arch="wrn34_10", eps=8 / 255,
                                      norm="Linf"),
                 "rslad": Published({"aa": {"avg": 0.5149}, "clean": {"avg": 0.83}}, "RSLAD", arch="resnet18",
                                    eps=8 / 255, norm="Linf")}
    paper = Params()

    def shown(params, eps=8 / 255, proto=PAPER_PROTOCOL):
        return applicable(published, params, eps=eps, protocol=proto)

    assert set(shown(paper)[0]) == {"teacher", "rslad"} and shown(paper)[1] == []
    trained_teacher = Params.model_validate({"teacher": {"source": "train"}})
    assert set(shown(trained_teacher)[0]) == {"rslad"}
    other_student = Params.model_validate({"distill": {"student": {"arch": "mobilenet_v2"}}})
    kept, notes = shown(other_student)
    assert set(kept) == {"teacher"} and notes == [
        "Published numbers of RSLAD (RSLAD) are not shown: architecture resnet18, ours mobilenet_v2."]
    # -S evaluate.eps=4/255: RobustBench's 8/255 figures are not ours
    kept, notes = shown(paper, eps=4 / 255)
    assert kept == {} and all("eps 8/255, ours 4/255" in n for n in notes) and len(notes) == 2
    # a non-standard AutoAttack: the AA anchor goes, the clean one stays
    custom = protocol(EvaluateConfig.model_validate({"aa": {"version": "custom", "attacks": ["apgd-ce"]}}))
    kept, notes = shown(paper, proto=custom)
    assert set(kept["rslad"].values) == {"clean"} and notes == [
        "The published AutoAttack number of RSLAD is not shown: ours is AA*, not the standard AutoAttack it was "
        "measured with."]
    assert shown(paper, proto=custom)[0]["teacher"].values == {"clean": {"avg": 0.8492}}


def test_a_published_entry_without_its_threat_model_is_an_error():
    from absld.analyze.evaluations import ReportError
    from absld.analyze.published import published_numbers

    raw = {"cifar10": {"rslad": {"arch": "resnet18", "norm": "Linf", "aa": {"avg": 0.51}}}}
    with pytest.raises(ReportError, match="cifar10.rslad has no eps"):
        published_numbers(raw, "cifar10")
    raw["cifar10"]["rslad"]["eps"] = "8/255"
    assert published_numbers(raw, "cifar10")["rslad"].eps == pytest.approx(8 / 255)


def test_bootstrap_method_param_reaches_the_intervals():
    import numpy as np

    from absld.analyze.analysis import fairness_table
    from absld.evaluate.records import Records
    from absld.params import AnalyzeConfig

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    correct = rng.random(90) < np.repeat([0.3, 0.6, 0.9], 30)
    records = {"m": Records(model="m", index=np.arange(90), y=y, correct={"clean": correct}, eps=8 / 255)}
    cells = {method: fairness_table(records, 3, AnalyzeConfig(n_bootstrap=200, bootstrap_method=method))["m"]["clean"]
             for method in ("percentile", "BCa")}
    assert cells["percentile"]["avg"] == cells["BCa"]["avg"]
    assert cells["percentile"]["nsd_ci"] != cells["BCa"]["nsd_ci"]


# --------------------------------------------------------------------------------------------------
# the analyze params reach the statistics
def _records_of(correct_by_model: Mapping[str, np.ndarray], y: np.ndarray) -> dict[str, Records]:
    return {m: Records(model=m, index=np.arange(len(y)), y=y, correct={"pgd": c, "worst": c}, eps=8 / 255)
            for m, c in correct_by_model.items()}


def test_the_bootstrap_is_stratified_by_class():
    """Every class right or wrong throughout: a bootstrap that keeps each class's size (stratified)
    cannot move Avg; one that resamples the pooled set would change the class mix and so Avg."""
    y = np.repeat(np.arange(3), [10, 30, 60])
    correct = y != 2  # classes 0, 1 always right, class 2 always wrong: Avg 0.4
    cell = fairness_table(_records_of({"m": correct}, y), 3, AnalyzeConfig(n_bootstrap=300))["m"]["pgd"]
    assert cell["avg"] == pytest.approx(0.4) and cell["avg_ci"] == pytest.approx([0.4, 0.4])


def test_confidence_and_nsd_ddof_reach_the_fairness_cells():
    y = np.repeat(np.arange(4), 40)
    correct = np.random.default_rng(1).random(160) < np.repeat([0.3, 0.5, 0.7, 0.9], 40)
    records = _records_of({"m": correct}, y)
    wide = fairness_table(records, 4, AnalyzeConfig(n_bootstrap=400, confidence=0.95))["m"]["pgd"]
    narrow = fairness_table(records, 4, AnalyzeConfig(n_bootstrap=400, confidence=0.5))["m"]["pgd"]
    assert wide["avg_ci"][0] < narrow["avg_ci"][0] <= narrow["avg_ci"][1] < wide["avg_ci"][1]
    acc = np.array([correct[y == k].mean() for k in range(4)])
    ddof1 = fairness_table(records, 4, AnalyzeConfig(n_bootstrap=50, nsd_ddof=1))["m"]["pgd"]
    assert ddof1["nsd"] == pytest.approx(acc.std(ddof=1) / acc.mean())
    assert wide["nsd"] == pytest.approx(acc.std(ddof=0) / acc.mean())


def test_comparisons_apply_holm_across_baselines_and_the_nsd_ddof():
    from absld.fairness import holm

    y = np.repeat(np.arange(4), 50)
    rng = np.random.default_rng(2)
    base = rng.random(200) < 0.6
    models = {"absld/seed0": base | (rng.random(200) < 0.3), "rslad/seed0": base,
              "sat/seed0": base & (rng.random(200) < 0.9)}
    groups = {m.split("/")[0]: {0: m} for m in models}
    records = _records_of(models, y)
    out = compare_to_reference(records, groups, 4, AnalyzeConfig(n_permutations=300, baselines=["rslad", "sat"]))
    paper = compare_to_reference(records, groups, 4, AnalyzeConfig(n_permutations=300, baselines=list(PAPER_BASELINES)))
    only_rslad = compare_to_reference(records, groups, 4, AnalyzeConfig(n_permutations=300, baselines=["rslad"]))
    for stat in ("avg", "worst", "nsd"):
        raw = [out["attacks"]["pgd"][m][stat]["p"] for m in ("rslad", "sat")]
        adjusted = [out["attacks"]["pgd"][m][stat]["p_holm"] for m in ("rslad", "sat")]
        assert adjusted == pytest.approx(holm(raw))
        # the declared family, not what was trained: nine untrained baselines count as p = 1
        assert [paper["attacks"]["pgd"][m][stat]["p_holm"] for m in ("rslad", "sat")] == pytest.approx(
            holm(raw + [1.0] * 9)[:2])
        # sat outside the family: raw p, marked exploratory; rslad alone is not adjusted
        assert only_rslad["attacks"]["pgd"]["rslad"][stat]["p_holm"] == pytest.approx(raw[0])
        assert only_rslad["attacks"]["pgd"]["sat"][stat]["exploratory"]
        assert math.isnan(only_rslad["attacks"]["pgd"]["sat"][stat]["p_holm"])
    assert out["attacks"]["pgd"]["rslad"]["avg"]["p_holm"] > out["attacks"]["pgd"]["rslad"]["avg"]["p"] or \
        out["attacks"]["pgd"]["sat"]["avg"]["p_holm"] > out["attacks"]["pgd"]["sat"]["avg"]["p"]
    ddof1 = compare_to_reference(records, groups, 4, AnalyzeConfig(n_permutations=300, nsd_ddof=1))
    assert ddof1["ddof"] == 1
    assert ddof1["attacks"]["pgd"]["rslad"]["nsd"]["diff"] != pytest.approx(out["attacks"]["pgd"]["rslad"]["nsd"]["diff"])


def test_columns_on_a_subset_are_analysed_on_their_samples_only(tmp_path, monkeypatch):
    """AutoAttack on the first 100 of 200 samples: its cells and the worst case use those 100."""
    make_project(tmp_path)
    subset = {**PAPER_PROTOCOL, "aa": {**PAPER_PROTOCOL["aa"], "n_samples": 100}}
    mask = np.arange(PER_CLASS * NUM_CLASSES) < 100
    for path in (tmp_path / "results" / "eval").rglob("records.npz"):
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["correct_aa"] = arrays["correct_aa"] & mask
        arrays.update(evaluated_aa=mask, evaluated_worst=mask, protocol=np.asarray(json.dumps(subset)))
        np.savez(path, **arrays)
    monkeypatch.chdir(tmp_path)
    result = invoke("analyze")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "results" / "eval" / "teacher" / "records.npz") as npz:
        y, aa = npz["y"][mask], npz["correct_aa"][mask]
    cell = fairness_of(tmp_path)["teacher"]["aa"]
    assert cell["avg"] == pytest.approx(aa.mean())  # not diluted by the 100 samples never attacked
    assert cell["class_acc"] == pytest.approx([aa[y == k].mean() for k in range(NUM_CLASSES)])
    table = (tmp_path / "results" / "table.md").read_text()
    assert "cover the first 100 of the 200 test samples only" in table


def _seed_fairness(values: Mapping[str, Sequence[tuple[float, float, float]]]) -> dict:
    """fairness.json-like cells {method/seedS: {pgd: {avg, worst, nsd}}} from per-seed triples."""
    return {f"{m}/seed{s}": {"pgd": {"avg": a, "worst": w, "nsd": n}}
            for m, triples in values.items() for s, (a, w, n) in enumerate(triples)}


def test_seed_comparisons_test_over_seeds_with_holm_and_the_verdict_reads_them():
    from absld.fairness import holm, paired_seed_test

    values = {"absld": [(0.70, 0.50, 0.10), (0.72, 0.52, 0.11), (0.69, 0.51, 0.09)],
              "rslad": [(0.71, 0.40, 0.20), (0.70, 0.41, 0.21), (0.70, 0.43, 0.19)],
              "sat": [(0.60, 0.45, 0.15), (0.62, 0.47, 0.16), (0.61, 0.44, 0.17)]}
    fairness = _seed_fairness(values)
    groups = {m: {s: f"{m}/seed{s}" for s in range(3)} for m in values}
    two = AnalyzeConfig(baselines=["rslad", "sat"])
    out = seed_comparisons(fairness, groups, two)
    worst = out["attacks"]["pgd"]
    raw = [paired_seed_test([v[1] for v in values["absld"]], [v[1] for v in values[m]])["p"] for m in ("rslad", "sat")]
    assert [worst[m]["worst"]["p"] for m in ("rslad", "sat")] == pytest.approx(raw)
    assert [worst[m]["worst"]["p_holm"] for m in ("rslad", "sat")] == pytest.approx(holm(raw))
    assert worst["rslad"]["worst"]["diff"] == pytest.approx(0.0967, abs=1e-3)
    stats = seed_summaries(fairness, groups, 0.95)
    text = verdict(out, stats, ["clean", "pgd", "worst"], dataset="fashion-mnist")
    assert text.startswith("**Verdict at this scale on Fashion-MNIST** rests on 3 seeds each of ABSLD and RSLAD. "
                           "With 3 seeds the exact sign-flip test cannot go below p = 0.25, so a significant result "
                           "rests on the t-test's assumption that the seed differences are normal (2 degrees of freedom)")
    assert "Holm-adjusted over the 2 declared baselines" in text
    assert "worst-class robustness up holds (51.0 % vs 41.3 %: +9.67 points" in text
    assert "sign-flip p = 0.500" in text  # Holm over two of 0.25: the exact test shows nothing at 3 seeds
    # every seed's NSD differs by exactly -0.100: the spread is unknown, nothing is claimed
    assert "NSD down is not shown (0.100 vs 0.200: -0.100 in each of the 3 seeds: they agree" in text
    assert "no significant Avg change" in text
    # the same numbers the other way round contradict the claims
    flipped = seed_comparisons(fairness, groups, AnalyzeConfig(reference="rslad", baselines=["absld", "sat"],
                                                              verdict_baseline="absld"))
    assert "worst-class robustness up is contradicted" in verdict(flipped, stats, ["pgd"], baseline="absld")
    one_seed = {m: {0: f"{m}/seed0"} for m in values}
    assert "not tested" in verdict(seed_comparisons(fairness, one_seed, AnalyzeConfig()), stats, ["pgd"])


def test_the_reports_first_paragraph_is_the_verdict(tmp_path, monkeypatch):
    make_project(tmp_path, seeds=(0, 1))
    monkeypatch.chdir(tmp_path)
    assert invoke("analyze").exit_code == 0
    lines = [line for line in (tmp_path / "results" / "report.md").read_text().splitlines() if line.strip()]
    assert lines[0].startswith("# ") and lines[1].startswith("**Verdict at this scale on CIFAR-10** rests on 2 seeds")
    assert "cannot go below p = 0.5" in lines[1]
    extra = json.loads((tmp_path / "results" / "comparisons.json").read_text())
    assert extra["seed_comparisons"]["attacks"]["pgd"]["rslad"]["worst"]["n"] == 2
    assert "paired t-test and exact sign-flip test over seeds" in (tmp_path / "results" / "report.md").read_text()


def test_an_interval_that_touches_its_estimate_up_to_rounding_is_not_flagged():
    from absld.analyze.analysis import intervals_excluding_the_estimate

    cell = {"avg": 0.3, "avg_ci": [0.1 + 0.2, 0.5], "worst": 0.2, "worst_ci": [0.25, 0.3],
            "nsd": 1.0, "nsd_ci": [0.2, 0.9999999999999998]}
    assert 0.1 + 0.2 > 0.3  # the float sum lies just above the estimate
    assert intervals_excluding_the_estimate({"m": {"pgd": cell}}) == [("m", "pgd", "worst")]


def test_the_default_family_is_the_papers_baselines_and_the_newer_ones_that_the_dag_trains():
    """Holm's family by default: every baseline conf/config.yaml trains (the paper's 11 and the newer
    robust-fairness methods), so no trained baseline is 'exploratory' in the full reproduction."""
    from absld.params import Params

    assert AnalyzeConfig().baselines == [*PAPER_BASELINES, *NEWER_BASELINES]
    assert sorted(AnalyzeConfig().baselines) == sorted(m for m in Params().distill.methods if m != "absld")


def test_the_verdict_reads_the_holm_adjusted_p_of_the_declared_family():
    """A t-test p of ~0.01 holds alone, and is 'not shown' once adjusted over the paper's 11 baselines."""
    values = {"absld": [(0.70, 0.50, 0.10), (0.70, 0.52, 0.11), (0.70, 0.49, 0.09), (0.70, 0.51, 0.12)],
              "rslad": [(0.70, 0.47, 0.10), (0.70, 0.48, 0.11), (0.70, 0.47, 0.09), (0.70, 0.49, 0.12)]}
    fairness = _seed_fairness(values)
    groups = {m: {s: f"{m}/seed{s}" for s in range(4)} for m in values}
    stats = seed_summaries(fairness, groups, 0.95)
    alone = seed_comparisons(fairness, groups, AnalyzeConfig(baselines=["rslad"]))
    paper = seed_comparisons(fairness, groups, AnalyzeConfig(baselines=list(PAPER_BASELINES)))
    assert len(PAPER_BASELINES) == 11
    raw = alone["attacks"]["pgd"]["rslad"]["worst"]["p"]
    assert raw < 0.05 < 11 * raw  # significant alone, not over eleven
    assert paper["attacks"]["pgd"]["rslad"]["worst"]["p_holm"] == pytest.approx(min(1.0, 11 * raw))
    assert "worst-class robustness up holds" in verdict(alone, stats, ["pgd"])
    assert "worst-class robustness up is not shown" in verdict(paper, stats, ["pgd"])
    assert "Holm-adjusted over the 11 declared baselines" in verdict(paper, stats, ["pgd"])


def test_stacked_seeds_pair_each_seed_with_the_same_seed():
    """Seed-matched: ABSLD seed s equals RSLAD seed s exactly, the seeds differ from each other. The
    tests over seeds pair seed s with seed s (paired across seeds, the differences would be +-0.5 and
    not agree: tried); the per-sample tests use each image's hits summed over the seeds, which no seed
    order can change."""
    rng = np.random.default_rng(8)
    y = np.repeat(np.arange(4), 50)
    runs = [rng.random(200) < p for p in (0.3, 0.8)]
    records, groups = _seed_records({"absld": runs, "rslad": runs}, y)
    cfg = AnalyzeConfig(n_permutations=200)
    per_sample = compare_to_reference(records, groups, 4, cfg)["attacks"]["pgd"]["rslad"]
    assert per_sample["seeds"] == [0, 1] and per_sample["n_pairs"] == 400
    assert per_sample["avg"]["n01"] == per_sample["avg"]["n10"] == 0 and per_sample["avg"]["p"] == 1.0
    seeds = seed_comparisons(fairness_table(records, 4, cfg), groups, cfg)["attacks"]["pgd"]["rslad"]
    assert seeds["avg"]["diff"] == 0.0 and seeds["avg"]["agree"]


KNOB_CHANGES = {  # one changed value per AnalyzeConfig field
    "nsd_ddof": 1, "confidence": 0.8, "n_bootstrap": 150, "bootstrap_method": "basic", "n_permutations": 150,
    "seed": 3, "reference": "rslad", "baselines": ["rslad"], "verdict_baseline": "sat", "classes_shown": 1,
}


def _knob_outputs(cfg: AnalyzeConfig) -> dict:
    """Everything the analysis computes from one small two-seed study of three methods."""
    from absld.analyze.analysis import class_ranking

    rng = np.random.default_rng(21)
    y = np.repeat(np.arange(4), 30)
    runs = {m: [rng.random(120) < p for _ in range(2)] for m, p in (("absld", 0.6), ("rslad", 0.5), ("sat", 0.55))}
    records, groups = _seed_records(runs, y)
    table = fairness_table(records, 4, cfg)
    seeds = seed_comparisons(table, groups, cfg)
    per_sample = compare_to_reference(records, groups, 4, cfg)
    text = verdict(seeds, seed_summaries(table, groups, cfg.confidence), ["pgd"], comparisons=per_sample,
                   baseline=cfg.verdict_baseline)
    return {"table": table, "seeds": seeds, "per_sample": per_sample, "verdict": text,
            "ranking": class_ranking(table, ["pgd"], cfg.reference)}


@pytest.mark.parametrize("field", list(KNOB_CHANGES))
def test_every_analyze_knob_reaches_what_it_drives(field):
    """Each AnalyzeConfig field, changed alone, changes the analysis (classes_shown: the figures'
    selection, tested where the figures are drawn, tests/test_many_classes.py)."""
    assert set(KNOB_CHANGES) == set(AnalyzeConfig.model_fields), "a new analyze field needs its probe here"
    fast = {"n_permutations": 300, "n_bootstrap": 200}
    base = AnalyzeConfig(**fast, **({"baselines": ["sat"], "verdict_baseline": "sat"} if field == "reference" else {}))
    changes = {field: KNOB_CHANGES[field]}
    if field == "verdict_baseline":
        changes["baselines"] = ["rslad", "sat"]
        base = AnalyzeConfig(**fast, baselines=["rslad", "sat"])
    if field == "baselines":
        changes["verdict_baseline"] = "rslad"
    changed = base.model_copy(update=changes)
    AnalyzeConfig.model_validate(changed.model_dump())  # a valid combination
    if field == "classes_shown":
        from absld.figures import select_classes

        assert select_classes([0.1, 0.5, 0.9, 0.3], base.classes_shown).gap is None
        assert select_classes([0.1, 0.5, 0.9, 0.3], changed.classes_shown).gap is not None
        return
    assert _knob_outputs(changed) != _knob_outputs(base)


@pytest.mark.parametrize(("changes", "message"), [
    ({"baselines": ["absld", "rslad"]}, "analyze.baselines holds the reference 'absld'"),
    ({"baselines": ["sat"]}, "analyze.verdict_baseline 'rslad' is not in analyze.baselines ['sat']"),
    ({"baselines": ["rslad", "rslad"]}, "analyze.baselines"),
])
def test_a_bad_comparison_family_is_refused_with_the_value(changes, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=re.escape(message)):
        AnalyzeConfig(**changes)
