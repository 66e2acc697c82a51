"""The paper's configuration, exercised on the CPU: conf/profile/paper-smoke.yaml keeps everything
of conf/config.yaml but sizes (and the few keys its header names), and the whole DAG runs on it:
CIFAR-10 in torchvision's format, a WRN-34-10 teacher imported as a file with its sha256, every
method with ResNet-18 students (one with MobileNetV2), standard AutoAttack, the analysis."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner

from absld.params import flatten
from absld.io import sha256_file
from absld.models import build_model, checkpoint_meta
from pipeline.cli import main
from tests.conftest import profile_params_text
from tests.fixtures import write_cifar10

SIZES = {  # the keys paper-smoke may change: sizes
    "data.val_per_class", "teacher_clean.train_per_class", "teacher_clean.train.epochs", "teacher_clean.train.batch_size",
    "teacher_clean.eval.n_samples", "teacher_clean.eval.batch_size", "teacher_clean.eval.steps",
    "teacher.eval.n_samples", "teacher.eval.batch_size", "teacher.eval.steps",
    "distill.train_per_class", "distill.train.epochs", "distill.train.batch_size", "distill.attack.steps",
    "distill.select_eval.n_samples", "distill.select_eval.batch_size", "distill.select_eval.steps",
    "distill.ard.train.epochs", "distill.iad.train.epochs", "distill.adaad.train.epochs",
    *(f"distill.{m}.{key}" for m in ("frl_rw", "frl_rwrm") for key in (
        "train.epochs", "hot_start_epochs", "validation.batch_size", "validation.steps")),
    "distill.cfa.train.epochs", "distill.cfa.begin", "distill.cfa.validation.batch_size", "distill.cfa.validation.steps",
    "distill.fair_ard.train.epochs", "distill.fair_iad.train.epochs", "distill.fair_iad.begin",
    "distill.wat.train.epochs", "distill.wat.validation.batch_size", "distill.wat.validation.steps",
    *(f"distill.{m}.{key}" for m in ("dafa", "trix") for key in ("train.epochs", "warmup")),
    "evaluate.n_samples", "evaluate.batch_size", "evaluate.pgd.steps", "evaluate.cw.steps",
    "analyze.n_bootstrap", "analyze.n_permutations",
}
NOT_SIZES = {  # and these, each for the reason the profile's header gives
    "profile", "data.download", "data.verify_md5", "teacher.source", "teacher.path", "teacher.sha256",
    "teacher.published_clean_acc",
}


def test_paper_smoke_changes_only_sizes_of_the_paper_configuration():
    paper = flatten(yaml.safe_load(profile_params_text("paper")))
    smoke = flatten(yaml.safe_load(profile_params_text("paper-smoke")))
    assert set(smoke) == set(paper)
    changed = {key for key in paper if paper[key] != smoke[key]}
    assert changed - SIZES - NOT_SIZES == set(), changed - SIZES - NOT_SIZES
    assert smoke["teacher.model.arch"] == "wrn34_10" and smoke["distill.student.arch"] == "resnet18"
    assert smoke["evaluate.aa.version"] == "standard" and smoke["distill.methods"] == paper["distill.methods"]


def invoke(*args):
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, (args, result.output)
    return result


@pytest.mark.slow
def test_the_paper_configuration_runs_end_to_end_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load(profile_params_text("paper-smoke"))
    write_cifar10(tmp_path / "data" / "raw", train_per_class=30, test_per_class=6)
    teacher_file = tmp_path / params["teacher"]["path"]
    teacher_file.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(build_model("wrn34_10", num_classes=10, in_channels=3).state_dict(), teacher_file)  # bare, as TRADES'
    params["teacher"]["sha256"] = sha256_file(teacher_file)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    invoke("check")
    invoke("prepare")
    invoke("teacher")
    invoke("teacher", "--clean")  # B-MTARD's clean teacher (the DVC stage teacher-clean)
    assert json.loads((tmp_path / "models" / "teacher.json").read_text())["sha256"] == params["teacher"]["sha256"]
    for method in params["distill"]["methods"]:
        invoke("distill", "--method", method, "--seed", "0")
        assert checkpoint_meta(tmp_path / "models" / "students" / method / "seed0.pt")["arch"] == "resnet18"
    # the standard AutoAttack grinds through its whole budget on the samples of the class an untrained
    # student always predicts (130 s per student here): the ten models are compared without it, and
    # it runs on the teacher (random weights, varied outputs: 17 s), then on nothing else
    with_aa = params["evaluate"]["attacks"]
    params["evaluate"]["attacks"] = [a for a in with_aa if a != "aa"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for model in ["teacher", *(f"{m}/seed0" for m in params["distill"]["methods"])]:
        invoke("evaluate", "--model", model)
    invoke("analyze")
    fairness = json.loads((tmp_path / "results" / "fairness.json").read_text())
    assert len(fairness) == 1 + len(params["distill"]["methods"]) and all("pgd" in entry for entry in fairness.values())
    assert (tmp_path / "results" / "report.md").is_file()
    params["evaluate"]["attacks"] = with_aa
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    invoke("evaluate", "--model", "teacher")
    metrics = json.loads((tmp_path / "results" / "eval" / "teacher" / "metrics.json").read_text())
    assert metrics["protocol"]["aa"]["standard"] is True and "aa" in metrics

    params["distill"]["student"]["arch"] = "mobilenet_v2"  # the paper's second student (AA: as above)
    params["evaluate"]["attacks"] = [a for a in with_aa if a != "aa"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    invoke("distill", "--method", "absld", "--seed", "1")
    invoke("evaluate", "--model", "absld/seed1")
    # seed 1 is outside seeds [0]: the ad-hoc student and its evaluation live under the gitignored scratch/
    assert checkpoint_meta(tmp_path / "scratch" / "models" / "students" / "absld" / "seed1.pt")["arch"] == "mobilenet_v2"
