"""The prepare and teacher stage commands, run in a scratch project directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from absld.params import read_yaml
from absld.io import sha256_file
from absld.models import build_model, load_checkpoint
from pipeline.cli import main
from tests.conftest import profile_params_text
from tests.fixtures import write_cifar10


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """A scratch directory with the tiny profile's params.yaml and its fixture dataset."""
    monkeypatch.chdir(tmp_path)
    write_cifar10(tmp_path / "fixture")
    (tmp_path / "params.yaml").write_text(profile_params_text("tiny"))
    return tmp_path


def use_cifar_fixture(path):
    """The project on the CIFAR-10 fixture (torchvision's on-disk format) instead of `synthetic`."""
    set_params(path, **{"data.dataset": "cifar10", "data.root": "fixture", "data.download": False,
                        "data.verify_md5": False})


def set_params(path, **changes):
    params = read_yaml(path / "params.yaml")
    for dotted, value in changes.items():
        node = params
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    (path / "params.yaml").write_text(yaml.safe_dump(params))


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_help_explains_every_stage():
    result = invoke("--help")
    assert result.exit_code == 0 and "prepare" in result.output and "teacher" in result.output
    assert "check" in result.output


def test_prepare_then_train_a_teacher(project):
    assert invoke("prepare").exit_code == 0
    result = invoke("teacher")
    assert result.exit_code == 0, result.output
    model = load_checkpoint(project / "models" / "teacher.pt")
    assert not model.training
    info = json.loads((project / "models" / "teacher.json").read_text())
    assert info["source"] == "train" and 0 <= info["pgd_acc"] <= info["clean_acc"] <= 1
    assert (project / "results" / "teacher" / "train_log.csv").read_text().startswith("epoch,")


def _tracked_bytes(project):
    """Every file of the teacher's and one student's DVC outputs (resume checkpoints included)."""
    roots = ["models", "results", "plots", "checkpoints"]
    return {str(p.relative_to(project)): p.read_bytes()
            for root in roots for p in sorted((project / root).rglob("*")) if p.is_file()}


def test_a_rerun_from_scratch_writes_byte_identical_outputs_and_times_go_to_logs(project):
    # DVC hashes every output: a rerun with identical inputs must not look like a new result.
    assert invoke("prepare").exit_code == 0
    runs = []
    for _ in range(2):
        for directory in ("models", "results", "plots", "checkpoints", "logs"):
            shutil.rmtree(project / directory, ignore_errors=True)
        assert invoke("teacher").exit_code == 0
        assert invoke("distill", "--method", "absld", "--seed", "0").exit_code == 0
        runs.append(_tracked_bytes(project))
    assert runs[0].keys() == runs[1].keys() and "models/teacher.pt" in runs[0]
    assert [name for name in runs[0] if runs[0][name] != runs[1][name]] == []
    assert not any(b"seconds" in content for content in runs[0].values())
    teacher_times = (project / "logs" / "teacher.csv").read_text().splitlines()
    epochs = read_yaml(project / "params.yaml")["teacher"]["train"]["epochs"]
    assert teacher_times[0] == "epoch,epoch_seconds" and len(teacher_times) == 1 + epochs
    assert (project / "logs" / "distill" / "absld" / "seed0.csv").is_file()


def test_prepare_without_data_fails_cleanly_and_writes_nothing(project):
    use_cifar_fixture(project)
    shutil.rmtree(project / "fixture")
    result = invoke("prepare")
    assert result.exit_code == 1
    assert "Error: dataset 'cifar10' not found" in result.output and "Traceback" not in result.output
    assert not (project / "data").exists()


def test_bad_params_give_a_one_line_error(project):
    set_params(project, **{"teacher.attack.eps": 0.031})
    result = invoke("teacher")
    assert result.exit_code == 1
    assert "teacher.attack.eps = 0.031" in result.output and result.output.count("\n") == 1


def test_check_validates_the_whole_file_and_writes_a_constant_stamp(project):
    from pipeline.common import LAYOUT

    CHECKED = LAYOUT.checked
    assert invoke("check").exit_code == 0
    stamp = (project / CHECKED).read_bytes()
    set_params(project, **{"distill.absld.beta": 0.3})  # another valid configuration: the same stamp
    assert invoke("check").exit_code == 0 and (project / CHECKED).read_bytes() == stamp
    (project / CHECKED).unlink()
    set_params(project, **{"analyze.n_bootstrapp": 5})
    result = invoke("check")
    assert result.exit_code == 1 and "unknown key 'analyze.n_bootstrapp'" in result.output
    assert result.output.count("\n") == 1 and not (project / CHECKED).exists()


def _external_checkpoint(project):
    torch.manual_seed(0)
    model = build_model("tiny_cnn", num_classes=10, in_channels=3)
    path = project / "external.pt"
    torch.save(model.state_dict(), path)  # a bare state_dict, like TRADES' model_cifar_wrn.pt
    return path


def test_imported_teacher_with_a_wrong_checksum_stops_before_writing(project):
    invoke("prepare")
    path = _external_checkpoint(project)
    set_params(project, **{"teacher.source": "file", "teacher.path": str(path), "teacher.sha256": "0" * 64})
    result = invoke("teacher")
    assert result.exit_code == 1 and "does not match teacher.sha256" in result.output
    assert not (project / "models").exists()


def test_imported_teacher_with_the_right_checksum_is_recorded(project):
    invoke("prepare")
    path = _external_checkpoint(project)
    digest = sha256_file(path)
    set_params(project, **{"teacher.source": "file", "teacher.path": str(path), "teacher.sha256": digest})
    result = invoke("teacher")
    assert result.exit_code == 0, result.output
    info = json.loads((project / "models" / "teacher.json").read_text())
    assert info["sha256"] == digest
    reloaded = load_checkpoint(project / "models" / "teacher.pt")
    original = torch.load(path, weights_only=True)
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in original.items())


def test_imported_teacher_far_from_its_published_accuracy_stops(project):
    invoke("prepare")
    path = _external_checkpoint(project)
    set_params(project, **{"teacher.source": "file", "teacher.path": str(path),
                           "teacher.sha256": sha256_file(path), "teacher.published_clean_acc": 0.8492})
    result = invoke("teacher")
    assert result.exit_code == 1 and "published" in result.output and "Nothing was written" in result.output
    assert not (project / "models" / "teacher.pt").exists()


def test_robustbench_teacher_is_loaded_into_our_architecture_and_checksummed(project, monkeypatch):
    """The robustbench path, with the package replaced by a stand-in (tests never download)."""
    import sys
    import types

    use_cifar_fixture(project)  # RobustBench serves CIFAR models
    invoke("prepare")
    torch.manual_seed(1)
    published = build_model("tiny_cnn", num_classes=10, in_channels=3)
    calls = {}

    def load_model(model_name, dataset, threat_model, model_dir):
        calls.update(model_name=model_name, dataset=dataset, threat_model=threat_model)
        target = Path(model_dir) / dataset / threat_model / f"{model_name}.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(published.state_dict(), target)
        return published

    fake = types.ModuleType("robustbench")
    fake.utils = types.SimpleNamespace(load_model=load_model)
    monkeypatch.setitem(sys.modules, "robustbench", fake)
    monkeypatch.setitem(sys.modules, "robustbench.utils", fake.utils)
    set_params(project, **{"teacher.source": "robustbench", "teacher.robustbench_id": "Zhang2019Theoretically",
                           "teacher.published_clean_acc": None})
    result = invoke("teacher")
    assert result.exit_code == 0, result.output
    assert calls == {"model_name": "Zhang2019Theoretically", "dataset": "cifar10", "threat_model": "Linf"}
    info = json.loads((project / "models" / "teacher.json").read_text())
    downloaded = next((project / "checkpoints" / "teacher" / "downloads").rglob("*.pt"))
    assert info["robustbench_id"] == "Zhang2019Theoretically" and info["sha256"] == sha256_file(downloaded)
    reloaded = load_checkpoint(project / "models" / "teacher.pt")
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in published.state_dict().items())


def test_robustbench_teacher_without_the_package_says_how_to_install_it(project, monkeypatch):
    import sys

    use_cifar_fixture(project)
    invoke("prepare")
    monkeypatch.setitem(sys.modules, "robustbench", None)  # import fails
    set_params(project, **{"teacher.source": "robustbench"})
    result = invoke("teacher")
    assert result.exit_code == 1 and "pip install" in result.output and "robustbench" in result.output
    assert not (project / "models").exists()


def _student_run(project, select):
    """One tiny ABSLD distill run with distill.select = ``select``: (final weights, metrics, log rows)."""
    set_params(project, **{"distill.select": select, "distill.select_eval.n_samples": None})
    result = invoke("distill", "--method", "absld", "--seed", "0")
    assert result.exit_code == 0, result.output
    resume = torch.load(project / "checkpoints" / "distill" / "absld" / "seed0" / "last.pt", weights_only=True)
    results = project / "results" / "distill" / "absld" / "seed0"
    log = [line.split(",") for line in (results / "train_log.csv").read_text().splitlines()]
    rows = [dict(zip(log[0], line)) for line in log[1:]]
    return resume["model"], json.loads((results / "metrics.json").read_text()), rows, result.output


def _temperatures_of(project, epoch):
    lines = (project / "results" / "distill" / "absld" / "seed0" / "temperatures.csv").read_text().splitlines()
    rows = [dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:]]
    return ([float(r["tau_adv"]) for r in rows if int(r["epoch"]) == epoch],
            [float(r["tau_nat"]) for r in rows if int(r["epoch"]) == epoch])


def test_test_set_selection_is_labelled_and_does_not_change_training(project):
    from absld.models import checkpoint_meta, save_checkpoint

    invoke("prepare")
    torch.manual_seed(0)
    save_checkpoint(project / "models" / "teacher.pt", build_model("tiny_cnn", num_classes=10, in_channels=3))
    last_weights, last_metrics, last_log, _ = _student_run(project, "last")
    # select last: the temperatures used during the last epoch (3), not the ones updated after it
    assert last_metrics["selected_epoch"] == 3 and last_metrics["final_tau_epoch"] == 3
    assert last_metrics["world"] == 1  # one process trained it (tests/test_distributed.py: torchrun's 2)
    tau_adv, tau_nat = _temperatures_of(project, 3)
    assert list(last_metrics["final_tau_adv"].values()) == pytest.approx(tau_adv, abs=1e-5)
    assert list(last_metrics["final_tau_nat"].values()) == pytest.approx(tau_nat, abs=1e-5)
    assert not last_metrics["selection_on_test_set"] and "select_score" not in last_log[0]

    weights, metrics, log, output = _student_run(project, "test_fair_best")
    for key, value in last_weights.items():  # the selection PGD leaves the training stream alone
        assert torch.equal(value, weights[key]), key
    # tiny profile: 3 epochs, first milestone 2, every 10 -> evaluated after epochs 2 and 3
    assert [bool(r["select_score"]) for r in log] == [False, True, True]
    assert metrics["select"] == "test_fair_best" and metrics["selection_split"] == "test"
    assert metrics["selection_on_test_set"] is True and "model selection on the test set" in metrics["selection_rule"]
    assert "on 60 images of the test set" in metrics["selection_rule"]  # n_samples null: the whole test set
    assert "selected on the test set" in output
    epoch = metrics["selected_epoch"]
    assert epoch in (2, 3) and metrics["final_tau_epoch"] == epoch
    tau_adv, tau_nat = _temperatures_of(project, epoch)
    assert list(metrics["final_tau_adv"].values()) == pytest.approx(tau_adv, abs=1e-5)
    assert list(metrics["final_tau_nat"].values()) == pytest.approx(tau_nat, abs=1e-5)
    meta = checkpoint_meta(project / "models" / "students" / "absld" / "seed0.pt")
    assert meta["selection_on_test_set"] is True and meta["selection_split"] == "test" and meta["selected_epoch"] == epoch


def test_temperatures_csv_follows_the_update_rule_with_beta_decayed_at_the_lr_milestone(project):
    """The stage's temperatures.csv (contract): epoch 1 at tau_init, each next epoch's temperatures
    = update_temperatures(previous row's tau, its risks, its beta), beta multiplied by beta_gamma at
    the LR milestone (tiny profile: milestones [2], beta_milestones null -> [2])."""
    from absld.methods.absld import update_temperatures
    from absld.models import save_checkpoint

    invoke("prepare")
    torch.manual_seed(0)
    save_checkpoint(project / "models" / "teacher.pt", build_model("tiny_cnn", num_classes=10, in_channels=3))
    set_params(project, **{"distill.absld.beta": 0.4, "distill.absld.beta_gamma": 0.5,
                           "distill.absld.tau_min": 0.6, "distill.absld.tau_max": 3.0})
    _, metrics, _, _ = _student_run(project, "last")
    lines = (project / "results" / "distill" / "absld" / "seed0" / "temperatures.csv").read_text().splitlines()
    rows = [dict(zip(lines[0].split(","), map(float, line.split(",")))) for line in lines[1:]]
    by_epoch = {e: [r for r in rows if r["epoch"] == e] for e in (1, 2, 3)}
    assert [by_epoch[e][0]["beta"] for e in (1, 2, 3)] == pytest.approx([0.4, 0.2, 0.2])
    assert all(r["tau_adv"] == 1.0 and r["tau_nat"] == 1.0 for r in by_epoch[1])
    for epoch in (1, 2):
        now, after = by_epoch[epoch], by_epoch[epoch + 1]
        for key in ("adv", "nat"):
            expected = update_temperatures(torch.tensor([r[f"tau_{key}"] for r in now]),
                                           torch.tensor([r[f"risk_{key}"] for r in now]), now[0]["beta"], 0.6, 3.0)
            assert [r[f"tau_{key}"] for r in after] == pytest.approx(expected.tolist(), abs=2e-5)  # CSV: 6 digits
    assert not all(r["tau_adv"] == 1.0 for r in by_epoch[2])  # the temperatures did move
    assert all(r["risk_adv"] > 0 and r["risk_nat"] > 0 for r in rows)


@pytest.mark.parametrize("mode, expected", [
    ("sometimes", "WANDB_MODE='sometimes' is not a W&B mode; use one of online, offline, disabled, dryrun"),
    ("online", "WANDB_MODE=online but no W&B API key was found: run `wandb login` or set WANDB_API_KEY"),
])
def test_a_wandb_mode_that_cannot_log_stops_the_stage_before_any_work(project, monkeypatch, mode, expected):
    monkeypatch.setenv("WANDB_MODE", mode)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("NETRC", str(project / "no-netrc"))
    before = sorted(p.name for p in project.iterdir())
    result = CliRunner().invoke(main, ["prepare"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: " + expected)
    assert sorted(p.name for p in project.iterdir()) == before  # nothing written


def test_distill_logs_abslds_temperatures_to_wandb_by_class_name(project, monkeypatch):
    import absld.train.distill as distill_stage

    logged = []
    monkeypatch.setattr(distill_stage.Tracker, "log", lambda self, row, step=None: logged.append(row))
    assert invoke("prepare").exit_code == 0 and invoke("teacher").exit_code == 0
    assert invoke("distill", "--method", "absld", "--seed", "0").exit_code == 0
    names = json.loads((project / "data" / "synthetic" / "manifest.json").read_text())["class_names"]
    student_rows = [row for row in logged if "train_kl_adv" in row]  # (the teacher's rows come first)
    assert student_rows and all({f"tau_adv/{name}" for name in names} <= set(row) for row in student_rows)
    assert not any(key[-1].isdigit() for row in student_rows for key in row if key.startswith("tau_adv/"))


def test_evaluate_logs_class_wise_accuracy_to_wandb_by_class_name(project, monkeypatch):
    """The keys the W&B report's class-wise panels read: <attack>/class/<class name>."""
    import absld.evaluate.run as evaluate_stage

    summaries = {}
    monkeypatch.setattr(evaluate_stage.Tracker, "summary", lambda self, values: summaries.update(values))
    assert invoke("prepare").exit_code == 0 and invoke("teacher").exit_code == 0
    assert invoke("evaluate", "--model", "teacher").exit_code == 0
    metrics = json.loads((project / "results" / "eval" / "teacher" / "metrics.json").read_text())
    names = json.loads((project / "data" / "synthetic" / "manifest.json").read_text())["class_names"]
    assert [summaries[f"pgd/class/{name}"] for name in names] == pytest.approx(metrics["pgd"]["class_acc"])


def test_every_user_facing_error_is_one_user_error_and_bugs_keep_their_traceback(project, monkeypatch):
    from absld.attacks import AttackError
    from absld.params import ConfigError
    from absld.data import DataError
    from absld.errors import UserError
    from absld.io import OutputError
    from absld.models import ModelError
    from absld.analyze.evaluations import ReportError
    from absld.runtime import DeviceError
    from absld.train.teacher import TeacherImportError
    from absld.tracking import TrackingError
    from absld.train.loop import TrainingError
    from absld.errors import StageError

    for error in (AttackError, ConfigError, DataError, ModelError, ReportError, DeviceError, TeacherImportError,
                  TrackingError, TrainingError, StageError, OutputError):
        assert issubclass(error, UserError), error
    import pipeline.prepare as prepare_stage

    monkeypatch.setattr(prepare_stage.data, "prepare", lambda *a, **k: {}["a bug"])
    result = CliRunner().invoke(main, ["prepare"])
    assert isinstance(result.exception, KeyError)  # not turned into a one-line user error


def test_a_student_outside_the_matrix_goes_to_the_gitignored_scratch_and_evaluate_finds_it(project):
    """`absld distill --seed 99` (seeds: [0]) wrote into results/distill/, which analyze depends on
    (so DVC saw analyze changed), and left an untracked checkpoint under models/students/."""
    import subprocess

    from tests.conftest import REPO

    assert invoke("prepare").exit_code == 0
    trained = invoke("distill", "--method", "sat", "--seed", "99")
    assert trained.exit_code == 0, trained.output
    note = [line for line in trained.output.splitlines() if "outside the DVC matrix" in line]
    assert len(note) == 1 and "scratch/" in note[0] and "gitignored" in note[0], trained.output
    evaluated = invoke("evaluate", "--model", "sat/seed99")
    assert evaluated.exit_code == 0, evaluated.output
    scratch = project / "scratch"
    assert (scratch / "models/students/sat/seed99.pt").is_file()
    assert (scratch / "results/distill/sat/seed99/train_log.csv").is_file()
    assert (scratch / "results/eval/sat/seed99/records.npz").is_file()
    assert (scratch / "plots/eval/sat/seed99").is_dir()
    for folder in ("models/students", "results/distill", "results/eval", "plots/distill", "plots/eval"):
        assert not (project / folder).exists(), folder
    shutil.copy(REPO / ".gitignore", project / ".gitignore")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    untracked = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=project,
                               capture_output=True, text=True, check=True).stdout.splitlines()
    assert untracked and not [line for line in untracked if "scratch" in line or ".pt" in line], untracked


def test_the_logs_keep_every_epochs_times_across_resumes(project):
    """After a resume logs/*.csv had lost their times (only `epoch` was left for resumed epochs, and a
    rerun that resumed after the last epoch wrote a log of `epoch` alone)."""
    import csv

    def rows(path):
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))

    assert invoke("prepare").exit_code == 0
    teacher_epochs = read_yaml(project / "params.yaml")["teacher"]["train"]["epochs"]
    student_epochs = read_yaml(project / "params.yaml")["distill"]["train"]["epochs"]
    for stage, log, epochs in ((["teacher"], project / "logs" / "teacher.csv", teacher_epochs),
                               (["distill", "--method", "sat", "--seed", "0"],
                                project / "logs" / "distill" / "sat" / "seed0.csv", student_epochs)):
        assert invoke(*stage, "--stop-after", "1").exit_code == 0  # killed after its first epoch
        assert invoke(*stage).exit_code == 0  # resumes, finishes
        first = rows(log)
        assert invoke(*stage).exit_code == 0  # resumes after the last epoch: trains nothing, writes again
        again = rows(log)
        assert [int(r["epoch"]) for r in again] == list(range(1, epochs + 1)), (log, again)
        assert all(float(r["epoch_seconds"]) > 0 for r in again), (log, again)
        assert again == first
