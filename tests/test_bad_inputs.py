"""The bad-input matrix: each mistake stops with exit code 1 and one line that names the problem
and what is allowed, before anything is written or deleted."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import main
from tests.conftest import profile_params_text


@pytest.fixture()
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(profile_params_text("tiny"))
    return tmp_path


def set_value(path, dotted, value):
    params = yaml.safe_load((path / "params.yaml").read_text())
    node = params
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    (path / "params.yaml").write_text(yaml.safe_dump(params))


def files(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file())


PARAMS_CASES = [  # (dotted key, bad value, words the one-line message must hold)
    ("data.dataset", "cifar11", ["data.dataset", "cifar11", "fashion-mnist"]),
    ("distill.student.arch", "resnet99", ["distill.student.arch", "resnet99", "resnet18"]),
    ("distill.methods", ["absld", "nope"], ["distill.methods", "nope", "rslad"]),
    ("evaluate.eps", 0, ["evaluate.eps"]),
    ("evaluate.eps", "300/255", ["evaluate.eps"]),
    ("teacher.attack.eps", 0.031, ["teacher.attack.eps", "8/255"]),
    ("distill.attack.step", "16/255", ["exceeds eps"]),
    ("seeds", [], ["seeds"]),
    ("analyze.confidence", 1.5, ["analyze.confidence", "1.5"]),
    ("distill.train.lr", -0.1, ["distill.train.lr", "-0.1", "greater than 0"]),
    ("distill.absld.betta", 0.3, ["unknown key 'distill.absld.betta'"]),
    ("wandb", {"tags": ["x"]}, ["'wandb' is not a params.yaml key", "WANDB_TAGS"]),
    ("runtime.nan_policy", "ignore", ["runtime.nan_policy", "ignore", "skip_batch"]),
    ("data.synthetic.train_per_class", 0, ["data.synthetic.train_per_class", "greater than 0"]),
    ("profile", "my profile", ["profile", "my profile"]),
]


@pytest.mark.parametrize("key, value, words", PARAMS_CASES, ids=[f"{k}={v}" for k, v, _ in PARAMS_CASES])
def test_a_bad_param_stops_every_stage_with_one_line_and_writes_nothing(project, key, value, words):
    set_value(project, key, value)
    before = files(project)
    for stage in (["check"], ["prepare"], ["distill", "--method", "absld", "--seed", "0"]):
        result = CliRunner().invoke(main, stage)
        assert result.exit_code == 1, (stage, result.output)
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
        assert all(word in result.output for word in words), result.output
        assert "Traceback" not in result.output
    assert files(project) == before


def test_params_that_are_not_yaml_name_the_file(project):
    (project / "params.yaml").write_text("data: [unclosed\n")
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 1 and "params.yaml" in result.output and result.output.count("\n") == 1


def test_a_source_dir_that_does_not_exist_is_an_error_not_a_fallback(project):
    set_value(project, "data.dataset", "fashion-mnist")
    set_value(project, "data.source_dir", str(project / "nowhere"))
    result = CliRunner().invoke(main, ["prepare"])
    assert result.exit_code == 1 and "data.source_dir" in result.output and "is not a directory" in result.output
    assert not (project / "data").exists()


def test_more_test_images_than_the_test_set_is_an_error_naming_the_size(project):
    assert CliRunner().invoke(main, ["prepare"]).exit_code == 0
    assert CliRunner().invoke(main, ["teacher"]).exit_code == 0
    set_value(project, "evaluate.n_samples", 10_000)
    before = files(project)
    result = CliRunner().invoke(main, ["evaluate", "--model", "teacher"])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "evaluate.n_samples" in result.output and "10000" in result.output
    assert files(project) == before


def test_a_student_checkpoint_for_another_dataset_is_refused(project):
    import torch

    from absld.models import build_model, save_checkpoint

    assert CliRunner().invoke(main, ["prepare"]).exit_code == 0
    torch.manual_seed(0)
    save_checkpoint(project / "models" / "students" / "absld" / "seed0.pt",
                    build_model("tiny_cnn", num_classes=7, in_channels=3))
    result = CliRunner().invoke(main, ["evaluate", "--model", "absld/seed0"])
    assert result.exit_code == 1 and "7 classes" in result.output and result.output.count("\n") == 1
    assert not (project / "results").exists()


def test_a_second_run_of_a_running_stage_stops_at_once_naming_the_first(project):
    import os

    from pipeline.common import stage_lock

    assert CliRunner().invoke(main, ["prepare"]).exit_code == 0
    before = files(project)
    with stage_lock("distill-absld-seed0"):  # as if another process were training this student
        result = CliRunner().invoke(main, ["distill", "--method", "absld", "--seed", "0"])
        assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
        assert f"distill-absld-seed0 is already running (pid {os.getpid()}" in result.output
        other = CliRunner().invoke(main, ["distill", "--method", "rslad", "--seed", "0", "--stop-after", "1"])
        assert "already running" not in other.output  # another student is another lock
    assert not (project / "models" / "students" / "absld").exists()
    assert all(entry in files(project) for entry in before)
