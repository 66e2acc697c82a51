"""The report builders (pure functions) and the ``absld report`` command, without any network."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
from click.testing import CliRunner

from absld.analyze.analysis import Fairness, fairness_table, json_safe
from absld.analyze.evaluations import ReportError, check_same_samples
from absld.analyze.markdown import describe_configuration, seed_markdown
from absld.analyze.published import published_numbers
from absld.analyze.tables import ResultsTable, describe_checkpoints, results_table, row_specs, table_csv, table_latex, \
    table_markdown
from absld.analyze.wandb_report import build_wandb_report, report_outline
from absld.evaluate.cascade import protocol
from absld.evaluate.records import Records
from absld.labels import attack_label, metric_name, model_label, order_attacks
from absld.params import AnalyzeConfig, EvaluateConfig
from pipeline.cli import main
from tests.fixtures import CIFAR10_NAMES
from tests.test_analyze import ATTACKS, FAST, labels, make_project, teacher_correct

ALL_ATTACKS = [*ATTACKS, "worst"]


@pytest.fixture()
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test."""

    class NoSocket:
        def __init__(self, *args, **kwargs):
            raise AssertionError("the network was touched")

    monkeypatch.setattr(socket, "socket", NoSocket)


def small_fairness() -> Fairness:
    y = labels()
    correct = teacher_correct(y)
    worst = np.logical_and.reduce(list(correct.values()))
    records = {m: Records(m, np.arange(len(y)), y, {**correct, "worst": worst}, 8 / 255)
               for m in ("teacher", "absld/seed0", "rslad/seed0")}
    return fairness_table(records, len(CIFAR10_NAMES), AnalyzeConfig(**FAST))


# --------------------------------------------------------------------------------------------------
# vocabulary and checks
def test_attacks_are_ordered_and_labelled_like_the_paper():
    assert order_attacks(["worst", "aa", "cw", "pgd", "fgsm", "clean"]) == ALL_ATTACKS
    assert [attack_label(a, protocol={"pgd": {"steps": 20}}) for a in ALL_ATTACKS] == [
        "Clean", "FGSM", "PGD-20", "CW∞", "AA", "Worst-case"]
    # the steps come from the protocol, never from the key (one key for a steps sweep)
    assert attack_label("pgd", protocol={"pgd": {"steps": 7}}) == "PGD-7" and attack_label("pgd") == "PGD"
    assert attack_label("pgd20") == "PGD-20"  # records written before the key was made stable
    assert metric_name("pgd20") == metric_name("pgd") == "pgd"
    assert model_label("fair_rslad/seed2") == "Fair-RSLAD (seed 2)"


def test_records_with_different_eps_cannot_be_compared():
    y = labels()
    correct = {"clean": np.ones(len(y), dtype=bool), "worst": np.ones(len(y), dtype=bool)}
    records = {"teacher": Records("teacher", np.arange(len(y)), y, correct, 8 / 255),
               "rslad/seed0": Records("rslad/seed0", np.arange(len(y)), y, correct, 4 / 255)}
    with pytest.raises(ReportError, match="different eps"):
        check_same_samples(records)


def test_json_safe_turns_nan_into_null():
    assert json_safe({"a": [float("nan"), np.float64(0.5), np.int64(3)], "b": float("inf")}) == {
        "a": [None, 0.5, 3], "b": None}


def test_published_numbers_exist_only_for_their_dataset():
    threat = {"arch": "wrn34_10", "eps": "8/255", "norm": "Linf"}
    raw = {"cifar10": {"teacher": {"source": "RobustBench", **threat, "clean": {"avg": 0.8492}}}}
    assert published_numbers(raw, "cifar10")["teacher"].values == {"clean": {"avg": 0.8492}}
    assert published_numbers(raw, "cifar100") == {}
    with pytest.raises(ReportError, match="fraction"):
        published_numbers({"cifar10": {"teacher": {**threat, "clean": {"avg": 84.92}}}}, "cifar10")


def test_selection_rule_is_stated_with_its_epochs():
    test_set = {"select": "test_fair_best", "selection_split": "test"}
    text = describe_checkpoints({"absld/seed0": {**test_set, "selected_epoch": 212},
                                 "rslad/seed0": {**test_set, "selected_epoch": 190}})
    assert "on the test set" in text and "ABSLD 212" in text and "RSLAD 190" in text
    assert "the last epoch's checkpoint" in describe_checkpoints({"absld/seed0": None}, fallback="last")


def test_latex_table_escapes_and_uses_booktabs():
    fairness = small_fairness()
    table = results_table(fairness, row_specs([], [0]), ALL_ATTACKS,
                          caption="100% of 8/255 & more")
    tex = table_latex(table)
    assert r"\caption{100\% of 8/255 \& more}" in tex
    assert tex.count(r"\cmidrule") == len(ALL_ATTACKS) and r"\multicolumn{3}{c}{CW$_\infty$}" in tex


# --------------------------------------------------------------------------------------------------
# the W&B report spec
def test_wandb_report_has_the_expected_blocks_without_network(no_network):
    report = build_wandb_report("absld-repro", None, "absld-cifar10", small_fairness(), ALL_ATTACKS,
                                class_names=CIFAR10_NAMES, table_md="| a |\n|---|\n| 1 |",
                                tests_md="ABSLD is better.", configuration=[("eps", "8/255")])
    kinds = [type(b).__name__ for b in report.blocks]
    headings = [b.text for b in report.blocks if type(b).__name__ == "H1"]
    assert headings == ["Class-wise robustness", "Statistical tests", "Per-attack accuracy of the evaluated models",
                        "Class-wise accuracy per attack", "ABSLD temperatures", "Summary table", "Configuration"]
    assert kinds.count("PanelGrid") == 3 and "WeaveBlockSummaryTable" in kinds and "MarkdownBlock" in kinds
    bars, classwise, taus = [b for b in report.blocks if type(b).__name__ == "PanelGrid"]
    assert [type(p).__name__ for p in bars.panels] == ["BarPlot"] * (len(ALL_ATTACKS) + 1)
    assert bars.panels[4].metrics == ["aa/avg", "aa/worst"] and bars.panels[4].title.startswith("AA")
    # class-wise bars per attack, keyed by class name as the evaluate stage logs them
    assert [type(p).__name__ for p in classwise.panels] == ["BarPlot"] * len(ALL_ATTACKS)
    assert classwise.panels[2].metrics == [f"pgd/class/{name}" for name in CIFAR10_NAMES]
    # temperatures by class name against epoch (the distill stage's keys), tau_adv and tau_nat
    assert [type(p).__name__ for p in taus.panels] == ["LinePlot", "LinePlot"]
    assert taus.panels[0].y == [f"tau_adv/{name}" for name in CIFAR10_NAMES] and taus.panels[0].x == "epoch"
    assert taus.panels[1].y == [f"tau_nat/{name}" for name in CIFAR10_NAMES]
    assert report.blocks[kinds.index("MarkdownBlock")].text == "| a |\n|---|\n| 1 |"
    report._to_model()  # the spec W&B would receive serialises, still offline


def test_wandb_report_shows_the_runs_that_made_its_table(no_network):
    """The panels' runs are those that wrote the table's records (evaluate) and the checkpoints it
    evaluated (the reference's distill runs), by sha256, whichever DVC experiment ran them; a Runs
    block says so and names what could not be matched."""
    from absld.analyze.wandb_report import RunSelection

    def filters(report):
        return [str(grid.runsets[0].filters) for grid in report.blocks if type(grid).__name__ == "PanelGrid"]

    runs = RunSelection("DVC experiment beta-half (commit abc1234)",
                        records={"teacher": "a" * 64, "absld/seed0": "b" * 64},
                        checkpoints={"teacher": "c" * 64, "absld/seed0": "d" * 64, "rslad/seed0": "e" * 64},
                        missing=("rslad/seed0",))
    everything = build_wandb_report("proj", "me", "absld-tiny", small_fairness(), ALL_ATTACKS)
    chosen = build_wandb_report("proj", "me", "absld-tiny", small_fairness(), ALL_ATTACKS, runs=runs)
    evaluate, classwise, distill = filters(chosen)
    assert evaluate == classwise and "records_sha256" in evaluate and "a" * 64 in evaluate and "b" * 64 in evaluate
    assert "checkpoint_sha256" in distill and "d" * 64 in distill and "e" * 64 not in distill and "c" * 64 not in distill
    assert not any("sha256" in f or "dvc_experiment" in f for f in filters(everything))
    texts = [block.text for block in chosen.blocks if type(block).__name__ == "MarkdownBlock"]
    (runs_text,) = [t for t in texts if "were read from" in t or "was read from" in t]
    assert "DVC experiment beta-half (commit abc1234)" in runs_text and "`bbbbbbbbbbbb`" in runs_text
    assert "**not shown**: RSLAD (seed 0)" in runs_text


def test_report_outline_lists_every_block(no_network):
    report = build_wandb_report("proj", "me", "study", small_fairness(), ALL_ATTACKS, protocol={"pgd": {"steps": 20}})
    outline = report_outline(report)
    assert outline.splitlines()[0] == f"W&B report '{report.title}' (me/proj)"
    for line in ("H1: Class-wise robustness", "H1: Summary table", "BarPlot 'PGD-20: Avg and worst-class accuracy'",
                 "LinePlot 'τ_adv per class", "WeaveBlockSummaryTable: fairness_table",
                 "PanelGrid over runset 'evaluate runs'"):
        assert line in outline, line


# --------------------------------------------------------------------------------------------------
# absld report
def test_report_without_publish_prints_the_outline(tmp_path, monkeypatch, no_network):
    make_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(main, ["analyze"]).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    result = CliRunner().invoke(main, ["report"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "W&B report 'absld-test: class-wise robustness of ABSLD" in result.output
    assert "H1: Statistical tests" in result.output and "not published" in result.output
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before  # writes nothing


def test_publish_without_a_wandb_key_is_a_one_line_error(tmp_path, monkeypatch, no_network):
    make_project(tmp_path)
    (tmp_path / "results").mkdir(exist_ok=True)
    (tmp_path / "results" / "fairness.json").write_text('{"teacher": {"clean": {"avg": 0.5, "worst": 0.4, '
                                                         '"nsd": 0.1, "class_acc": [0.5], "avg_ci": [0.4, 0.6], '
                                                         '"worst_ci": [0.3, 0.5], "nsd_ci": [0.0, 0.2]}}}')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    result = CliRunner().invoke(main, ["report", "--publish"])
    assert result.exit_code == 1
    assert result.output == ("Error: no W&B API key: set WANDB_API_KEY or run `wandb login`, then "
                             "`absld report --publish`\n")


def _git(root, *args):
    import subprocess

    done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root,
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_report_of_an_experiment_uses_its_committed_table_and_the_runs_behind_it(tmp_path, monkeypatch, no_network):
    """`absld report --experiment NAME` reads the table of that DVC experiment's commit (not the
    workspace's, which holds the baseline here) and selects the runs that wrote its records; an
    unknown name is one line."""
    import hashlib

    import absld.analyze.wandb_report as wandb_report
    from tests.test_analyze import better_and_worse, write_records

    make_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(main, ["analyze"]).exit_code == 0
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "baseline")
    baseline_records = (tmp_path / "results/eval/absld/seed0/records.npz").read_bytes()
    y = labels()
    write_records(tmp_path, "absld/seed0", y, better_and_worse(y)[1])  # the experiment re-ran absld only
    assert CliRunner().invoke(main, ["analyze"]).exit_code == 0
    experiment_table = (tmp_path / "results/table.md").read_text()
    experiment_records = (tmp_path / "results/eval/absld/seed0/records.npz").read_bytes()
    assert experiment_records != baseline_records
    _git(tmp_path, "commit", "-qam", "beta-half")
    commit = _git(tmp_path, "rev-parse", "HEAD")
    _git(tmp_path, "update-ref", f"refs/exps/{commit[:2]}/{commit[2:]}/beta-half", commit)
    _git(tmp_path, "reset", "-q", "--hard", "HEAD~1")  # the workspace: the baseline again

    shown = []
    monkeypatch.setattr(wandb_report, "report_outline", lambda report: shown.append(report) or "outline")
    result = CliRunner().invoke(main, ["report", "--experiment", "beta-half"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"of DVC experiment beta-half (commit {commit[:7]})" in result.output
    (report,) = shown
    texts = [block.text for block in report.blocks if type(block).__name__ == "MarkdownBlock"]
    assert experiment_table.strip() in [t.strip() for t in texts]  # the experiment's table, not the workspace's
    grids = [str(block.runsets[0].filters) for block in report.blocks if type(block).__name__ == "PanelGrid"]
    teacher = hashlib.sha256((tmp_path / "results/eval/teacher/records.npz").read_bytes()).hexdigest()
    assert hashlib.sha256(experiment_records).hexdigest() in grids[0] and teacher in grids[0]  # (teacher: baseline's)
    assert hashlib.sha256(baseline_records).hexdigest() not in grids[0]
    assert "dvc_experiment" not in grids[0]

    unknown = CliRunner().invoke(main, ["report", "--experiment", "no-such"])
    assert unknown.exit_code == 1 and unknown.output == (
        "Error: no DVC experiment named 'no-such' in this repository (`dvc exp show` lists them)\n")
    (tmp_path / "results/eval/rslad/seed0/records.npz").unlink()  # a table without its records: said
    partial = CliRunner().invoke(main, ["report"], catch_exceptions=False)
    assert "note: no records.npz for rslad/seed0 beside the table of the workspace" in partial.output
    assert "newer than" not in partial.output
    later = (tmp_path / "results/fairness.json").stat().st_mtime + 60  # records re-written after the table
    os.utime(tmp_path / "results/eval/teacher/records.npz", (later, later))
    stale = CliRunner().invoke(main, ["report"], catch_exceptions=False)
    assert "note: the records of teacher are newer than results/fairness.json: run `absld analyze`" in stale.output


def test_the_default_entity_error_points_to_wandb_entity(monkeypatch):
    """`check` refuses a params.yaml key wandb.entity: the report points to WANDB_ENTITY instead."""
    import sys
    import types

    from absld.analyze.wandb_report import _default_entity
    from absld.errors import UserError

    def api(entity=None, error=None):
        class Api:
            @property
            def default_entity(self):
                if error:
                    raise error
                return entity
        return types.SimpleNamespace(Api=Api)

    for fake in (api(error=ConnectionError("down")), api(entity=None)):
        monkeypatch.setitem(sys.modules, "wandb", fake)
        with pytest.raises(UserError) as raised:
            _default_entity()
        assert "WANDB_ENTITY" in str(raised.value) and "params.yaml" not in str(raised.value)
    monkeypatch.setitem(sys.modules, "wandb", api(entity="lab"))
    assert _default_entity() == "lab"


def test_report_before_analyze_says_what_to_run(tmp_path, monkeypatch):
    make_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["report"])
    assert result.exit_code == 1 and "run `absld analyze`" in result.output and result.output.count("\n") == 1


def test_caption_says_when_aa_is_not_the_standard_autoattack():
    from absld.analyze.tables import table_caption

    common = dict(dataset="cifar10", n_samples=100, eps=8 / 255, ddof=0, confidence=0.95, n_bootstrap=10,
                  selection="last epoch.")
    standard = protocol(EvaluateConfig())
    assert "not the standard AutoAttack" not in table_caption(**common, protocol=standard)
    assert "float32" not in table_caption(**common, protocol=standard)
    custom = protocol(EvaluateConfig(aa={"version": "custom", "attacks": ["apgd-ce"]}))
    assert ("AA* is AutoAttack version custom (APGD-CE) through pyautoattack 0.2.0, not the standard "
            "AutoAttack") in table_caption(**common, protocol=custom)
    # torchattacks' port of the standard version is not the standard AutoAttack either
    port_protocol = protocol(EvaluateConfig(aa={"backend": "torchattacks"}))
    port_protocol["aa"]["package_version"] = "3.5.1"  # as recorded where it ran (an extra, maybe not here)
    port = table_caption(**common, protocol=port_protocol)
    assert "AA* is AutoAttack version standard through torchattacks 3.5.1 (its APGD runs 10 iterations" in port
    assert "under bf16-autocast" in table_caption(**common, protocol={**standard, "precision": "bf16-autocast"})
    assert "cascade" in table_caption(**common, protocol={**standard, "cascade": True})


def test_every_label_of_a_non_standard_aa_says_so():
    custom = protocol(EvaluateConfig(aa={"version": "custom", "attacks": ["apgd-ce"]}))
    standard = protocol(EvaluateConfig())
    assert attack_label("aa", protocol=custom) == "AA*" and attack_label("aa", protocol=standard) == "AA"
    assert attack_label("pgd20", protocol=custom) == "PGD-20"
    assert metric_name("aa", custom) == "aa_star" and metric_name("aa", standard) == "aa"
    assert metric_name("cw", custom) == "cw"
    table = ResultsTable(attacks=["aa"], rows=[], caption="c", protocol=custom)
    assert "AA* Avg" in table_markdown(table) and "AA* Avg" in table_csv(table)
    assert "{AA*}" in table_latex(table)
    assert "| AA* |" in seed_markdown({"absld": {}}, ["aa"], 0.95, custom)
    lines = dict(describe_configuration(EvaluateConfig(), AnalyzeConfig(), dataset="cifar10", n_samples=10,
                                        eps=8 / 255, attacks=["aa"], seeds=[0], selection="last",
                                        protocol=custom))
    assert "not the standard AutoAttack" in lines["AutoAttack"] and lines["attacks"] == "AA*"
    assert lines["precision"] == "float32"
