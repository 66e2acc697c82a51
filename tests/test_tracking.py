"""W&B tracking: one offline run per stage, grouped by study, typed by stage, named by DVC."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from absld.io import sha256_file
from absld.params import Params, read_yaml
from absld.tracking import Tracker, class_key, wandb_mode, wandb_settings
from pipeline.cli import main


def test_unset_wandb_mode_means_offline(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode() == "offline"


def test_disabled_mode_creates_no_run():
    tracker = Tracker(Params(), "teacher")
    assert tracker.run is None
    tracker.log({"x": 1.0})  # a no-op, not an error
    tracker.finish()


@pytest.mark.slow
def test_offline_run_is_grouped_by_study_and_typed_by_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "exp-123")
    monkeypatch.setenv("WANDB_PROJECT", "proj")
    monkeypatch.setenv("WANDB_TAGS", "ablation, cpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    params = Params.model_validate({"profile": "fashion"})
    with Tracker(params, "distill", name="distill-absld-seed0") as tracker:
        run = tracker.run
        assert run.config["cuda_visible_devices"] == "3"  # the GPU it ran on (a launcher's or the lease's)
        assert run.group == "absld-fashion" and run.job_type == "distill"
        assert run.name == "exp-123-distill-absld-seed0" and run.project == "proj"
        assert set(run.tags) == {"ablation", "cpu"}
        assert run.config["profile"] == "fashion"
        first_id = run.id
        tracker.log({"epoch": 1, "train_loss": 1.5})
        checkpoint = tmp_path / "seed0.pt"
        checkpoint.write_bytes(b"weights")
        tracker.log_artifact("absld-seed0", "model", [checkpoint])
        tracker.use_artifact("teacher", "model", [checkpoint])  # offline: recorded, not linked
        assert len(run.summary["inputs/teacher"]) == 32  # the artifact's digest
        line = tracker.where_logged()
    folders = list((tmp_path / "wandb").glob("offline-run-*"))
    assert folders and line.endswith(f"`wandb sync {folders[0]}`") and f" in {folders[0]};" in line
    with pytest.raises(RuntimeError):  # the real wandb takes a failed finish
        with Tracker(params, "evaluate", name="evaluate-broken"):
            raise RuntimeError("inside the stage")
    # the same stage with the same settings (a killed run started again) resumes the same W&B run;
    # other settings make another run
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")  # resumed on another GPU: the same run, its GPU updated
    with Tracker(params, "distill", name="distill-absld-seed0") as again:
        assert again.run.id == first_id and again.run.config["cuda_visible_devices"] == "5"
    with Tracker(params, "distill", name="distill-absld-seed0", config={"lr": 0.2}) as other:
        assert other.run.id != first_id


def test_wandb_settings_come_from_wandbs_environment_variables(monkeypatch):
    for name in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_TAGS", "WANDB_RUN_GROUP"):
        monkeypatch.delenv(name, raising=False)
    default = wandb_settings("quick")
    assert (default.project, default.entity, default.group, default.tags) == ("absld-repro", None, "absld-quick", ())
    monkeypatch.setenv("WANDB_PROJECT", "robust-fairness")
    monkeypatch.setenv("WANDB_ENTITY", "lab")
    monkeypatch.setenv("WANDB_TAGS", "a, b,,c ")
    monkeypatch.setenv("WANDB_RUN_GROUP", "sweep-7")
    chosen = wandb_settings("quick")
    assert (chosen.project, chosen.entity, chosen.group, chosen.tags) == ("robust-fairness", "lab", "sweep-7",
                                                                          ("a", "b", "c"))


def test_offline_runs_of_a_dvc_temporary_workspace_go_to_the_repository(tmp_path, monkeypatch):
    from absld.tracking import wandb_dir

    monkeypatch.delenv("WANDB_DIR", raising=False)
    temp = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "run" / "a1b2c3"
    temp.mkdir(parents=True)
    assert wandb_dir(temp) == str((tmp_path / "repo").resolve())
    assert wandb_dir(tmp_path / "repo") is None  # a plain workspace: W&B's default (./wandb)
    monkeypatch.setenv("WANDB_DIR", "/somewhere")
    assert wandb_dir(temp) == "/somewhere"


def test_artifact_mode_comes_from_the_environment_and_is_checked(monkeypatch):
    from absld.tracking import TrackingError, artifact_mode, check_tracking

    monkeypatch.delenv("ABSLD_WANDB_ARTIFACTS", raising=False)
    assert artifact_mode() == "reference"
    monkeypatch.setenv("ABSLD_WANDB_ARTIFACTS", "File")
    assert artifact_mode() == "file"
    monkeypatch.setenv("ABSLD_WANDB_ARTIFACTS", "upload")
    with pytest.raises(TrackingError, match="'upload' is not one of reference, file, off"):
        check_tracking()


def test_per_class_keys_are_named_by_class_for_wandb():
    from absld.tracking import name_classes

    names = ["T-shirt/top", "Trouser", "Pullover"]
    row = {"epoch": 3, "tau_adv/0": 0.9, "tau_adv/2": 1.1, "w/1": 0.5, "train_loss": 0.3, "tau_adv/7": 1.0}
    assert name_classes(row, names) == {"epoch": 3, "tau_adv/T-shirt-top": 0.9, "tau_adv/Pullover": 1.1,
                                        "w/Trouser": 0.5, "train_loss": 0.3, "tau_adv/7": 1.0}


def test_the_suite_cannot_reach_the_network():
    import socket

    with pytest.raises(AssertionError, match="never touches the network"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1: unroutable anyway


@pytest.mark.slow
def test_no_credential_reaches_any_file_a_stage_or_its_offline_run_writes(tmp_path, monkeypatch):
    """A W&B key (and a token-like variable) in the environment: the teacher stage's W&B run
    (offline) and every file in the project, its wandb/ folder included, hold neither."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO, profile_params_text

    key, token = "0123456789abcdef0123456789abcdef0123dead", "ghp_notarealtokenbutlookslikeone1234"
    (tmp_path / "params.yaml").write_text(profile_params_text("tiny"))
    env = dict(os.environ, WANDB_MODE="offline", WANDB_DIR=str(tmp_path), WANDB_API_KEY=key, GITHUB_TOKEN=token,
               PYTHONPATH=str(REPO))  # a process of its own: wandb keeps settings per process
    for stage in ("prepare", "teacher"):
        result = subprocess.run([sys.executable, "-m", "pipeline.cli", stage], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert key not in result.stdout + result.stderr and token not in result.stdout + result.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("offline-run-" in str(p) for p in written)  # the run was really written
    assert [str(p) for p in written if key.encode() in p.read_bytes() or token.encode() in p.read_bytes()] == []


# --------------------------------------------------------------------------------------------------
# what W&B is told about a run (with tests/fake_wandb.py: no wandb service)
from tests.fake_wandb import install as install_fake_wandb  # noqa: E402
from tests.test_stages import invoke, project  # noqa: E402,F401  (the scratch project fixture)


def test_abslds_wandb_temperatures_are_the_temperatures_csv_rows(project, monkeypatch):
    """Per epoch, W&B's tau_adv/<class> and tau_nat/<class> (and their min/max) are the temperatures
    used during that epoch: the rows of temperatures.csv, not the update made at its end."""
    import csv

    fake = install_fake_wandb(monkeypatch, project)
    assert invoke("prepare").exit_code == 0 and invoke("teacher").exit_code == 0
    assert invoke("distill", "--method", "absld", "--seed", "0").exit_code == 0
    names = json.loads((project / "data" / "synthetic" / "manifest.json").read_text())["class_names"]
    (run,) = fake.of("distill")
    logged = {row["epoch"]: row for row in run.rows if "epoch" in row}
    with open(project / "results" / "distill" / "absld" / "seed0" / "temperatures.csv") as handle:
        table = list(csv.DictReader(handle))
    epochs = sorted({int(r["epoch"]) for r in table})
    assert sorted(logged) == epochs and len(epochs) >= 2
    for row in table:
        shown = logged[int(row["epoch"])]
        name = class_key(names[int(row["class"])])
        for kind in ("adv", "nat"):
            assert shown[f"tau_{kind}/{name}"] == pytest.approx(float(row[f"tau_{kind}"]), rel=1e-5)  # CSV: 6 digits
    for epoch in epochs:
        for kind in ("adv", "nat"):
            column = [float(r[f"tau_{kind}"]) for r in table if int(r["epoch"]) == epoch]
            assert logged[epoch][f"tau_{kind}_min"] == pytest.approx(min(column), rel=1e-5)
            assert logged[epoch][f"tau_{kind}_max"] == pytest.approx(max(column), rel=1e-5)
    assert any(float(r["tau_adv"]) != 1.0 for r in table)  # they moved: an epoch's shift would show


def test_every_stage_ends_with_a_line_saying_where_its_run_was_logged(project, monkeypatch):
    fake = install_fake_wandb(monkeypatch, project)
    result = invoke("prepare")
    (run,) = fake.of("prepare")
    folder = Path(run.settings.sync_dir).relative_to(project)  # below the working directory: relative
    assert result.output.splitlines()[0] == (f"W&B: run prepare logged offline in {folder}; upload it with "
                                             f"`wandb sync {folder}`")
    assert len(result.output.splitlines()) == 2  # and the stage's own line
    lines: list[str] = []
    monkeypatch.chdir(project / "data")  # elsewhere: the absolute path
    with Tracker(Params(), "teacher", echo=lines.append):
        pass
    absolute = fake.runs[-1].settings.sync_dir
    assert lines == [f"W&B: run teacher logged offline in {absolute}; upload it with `wandb sync {absolute}`"]
    monkeypatch.setenv("WANDB_MODE", "online")
    with Tracker(Params(), "teacher", echo=lines.append):
        pass
    assert lines[-1] == f"W&B: run teacher at {fake.runs[-1].url}"


@pytest.mark.parametrize("interruption", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_interrupted_stage_marks_its_run_failed(tmp_path, monkeypatch, interruption):
    fake = install_fake_wandb(monkeypatch, tmp_path)
    lines: list[str] = []
    with pytest.raises(type(interruption)):
        with Tracker(Params(), "evaluate", echo=lines.append):
            raise interruption
    (run,) = fake.runs
    assert run.exit_code == 1 and run.summary["failure"] == type(interruption).__name__
    assert lines == []  # no "logged" line: the stage's error stays its only line
    with Tracker(Params(), "evaluate", echo=lines.append):
        pass
    assert fake.runs[-1].exit_code == 0 and len(lines) == 1


def test_an_exception_inside_a_stage_marks_its_run_failed_and_stays_one_line(project, monkeypatch):
    import absld.train.teacher as teacher_stage
    from absld.train.loop import TrainingError

    fake = install_fake_wandb(monkeypatch, project)
    assert invoke("prepare").exit_code == 0

    def broken(*args, **kwargs):
        raise TrainingError("the training loss became nan in epoch 1")

    monkeypatch.setattr(teacher_stage, "fit", broken)
    result = CliRunner().invoke(main, ["teacher"])
    assert result.exit_code == 1 and result.output == "Error: the training loss became nan in epoch 1\n"
    (run,) = fake.of("teacher")
    assert run.exit_code == 1 and run.summary["failure"] == "TrainingError"


def test_a_resumed_stage_continues_its_wandb_run_in_another_dvc_experiment(project, monkeypatch):
    """A teacher stopped after one epoch in experiment `first` and resumed in `second` (DVC names
    every `dvc exp run` anew) logs into the same W&B run; once finished, the kept id is gone, and a
    run of other settings (another fingerprint) is another W&B run."""
    from absld.tracking import RUN_ID_FILE

    fake = install_fake_wandb(monkeypatch, project)
    assert invoke("prepare").exit_code == 0
    kept = project / "checkpoints" / "teacher" / RUN_ID_FILE
    monkeypatch.setenv("DVC_EXP_NAME", "first")
    assert invoke("teacher", "--stop-after", "1").exit_code == 0
    assert kept.is_file() and json.loads(kept.read_text())["id"] == fake.runs[-1].id
    monkeypatch.setenv("DVC_EXP_NAME", "second")
    assert invoke("teacher").exit_code == 0
    first, second = fake.of("teacher")
    assert second.id == first.id and second.init["resume"] == "allow" and second.name == "second-teacher"
    assert [row["epoch"] for row in first.rows + second.rows if "epoch" in row] == [1, 2, 3, 4]
    assert not kept.exists()  # finished: a later run of the stage is a run of its own
    monkeypatch.setenv("DVC_EXP_NAME", "third")
    assert invoke("teacher").exit_code == 0
    assert fake.of("teacher")[-1].id != first.id
    # a kept id of other resumable work (another fingerprint) is not reused
    kept.write_text(json.dumps({"fingerprint": "other", "id": "someoneelse"}))
    assert invoke("teacher", "--stop-after", "1").exit_code == 0
    assert fake.of("teacher")[-1].id not in ("someoneelse", first.id)


def test_an_evaluate_run_carries_the_students_training_params(project, monkeypatch):
    """W&B can colour class-wise robustness by distill.absld.beta: the evaluate run's config holds
    the distill run's method and training params."""
    fake = install_fake_wandb(monkeypatch, project)
    assert invoke("prepare").exit_code == 0 and invoke("teacher").exit_code == 0
    assert invoke("distill", "--method", "absld", "--seed", "0").exit_code == 0
    assert invoke("evaluate", "--model", "absld/seed0").exit_code == 0
    (distill,), (evaluate,) = fake.of("distill"), fake.of("evaluate")
    beta = read_yaml(project / "params.yaml")["distill"]["absld"]["beta"]
    assert evaluate.config["distill"]["absld"]["beta"] == beta
    for key in ("method", "seed", "distill"):
        assert evaluate.config[key] == distill.config[key]
    assert set(evaluate.config["distill"]) >= {"train", "attack", "student", "absld"}
    checkpoint = project / "models" / "students" / "absld" / "seed0.pt"
    assert evaluate.config["checkpoint_sha256"] == distill.summary["checkpoint_sha256"] == sha256_file(checkpoint)
    records = project / "results" / "eval" / "absld" / "seed0" / "records.npz"
    assert evaluate.summary["records_sha256"] == sha256_file(records)


def test_a_queued_experiments_artifact_references_the_repositorys_path(tmp_path, monkeypatch):
    """In DVC's temporary workspace (`dvc exp run --queue`: .dvc/tmp/exps/..., deleted afterwards) a
    model's reference names the repository's own path (where `dvc exp apply` puts it), with the
    file's checksum; the metadata holds its path and sha256."""
    pytest.importorskip("wandb")
    from absld.tracking import RUN_ID_FILE  # noqa: F401  (the module's names load)

    repo = tmp_path / "repo"
    workspace = repo / ".dvc" / "tmp" / "exps" / "run" / "a1b2c3"
    (workspace / "models").mkdir(parents=True)
    model = Path("models") / "teacher.pt"
    (workspace / model).write_bytes(b"weights")
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("DVC_EXP_NAME", "b02")
    monkeypatch.delenv("ABSLD_WANDB_ARTIFACTS", raising=False)
    logged = []
    tracker = Tracker(Params(), "teacher")  # disabled: give it a run that records the artifact
    tracker.mode, tracker.run = "offline", types.SimpleNamespace(log_artifact=logged.append)
    tracker.log_artifact("teacher", "model", [model])
    (artifact,) = logged
    entry = artifact.manifest.entries["teacher.pt"]
    assert entry.ref == (repo.resolve() / "models" / "teacher.pt").as_uri()
    assert ".dvc/tmp/exps" not in entry.ref
    assert artifact.metadata["files"] == {"teacher.pt": {"path": "models/teacher.pt", "sha256": sha256_file(model)}}
    assert artifact.metadata["dvc_experiment"] == "b02"
    # the same file in the repository itself: the same digest (W&B links the two)
    (repo / "models").mkdir()
    (repo / "models" / "teacher.pt").write_bytes(b"weights")
    monkeypatch.chdir(repo)
    tracker.log_artifact("teacher", "model", [model])
    assert logged[1].digest == artifact.digest
    assert logged[1].manifest.entries["teacher.pt"].ref == (repo.resolve() / "models" / "teacher.pt").as_uri()
    assert "dvc_experiment" not in logged[1].metadata
