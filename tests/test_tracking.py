"""W&B tracking: one offline run per stage, grouped by study, typed by stage, named by DVC."""

from __future__ import annotations

import pytest

from absld.params import Params
from absld.tracking import Tracker, wandb_mode, wandb_settings


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
    params = Params.model_validate({"profile": "fashion"})
    with Tracker(params, "distill", name="distill-absld-seed0") as tracker:
        run = tracker.run
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
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    # the same stage with the same settings (a killed run started again) resumes the same W&B run;
    # other settings make another run
    with Tracker(params, "distill", name="distill-absld-seed0") as again:
        assert again.run.id == first_id
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
