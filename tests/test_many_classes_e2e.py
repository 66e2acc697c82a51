"""CIFAR-100 (100 classes) and Tiny-ImageNet (200 classes, 64x64) through the whole DAG on fixtures
in their official on-disk formats: prepare -> teacher -> distill (ABSLD and the fairness baselines
FRL and CFA) -> evaluate -> analyze, with the profiles' own settings but for sizes."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from click.testing import CliRunner

from absld.models import checkpoint_meta
from pipeline.cli import main
from tests.conftest import profile_params_text
from tests.fixtures import write_cifar100, write_tiny_imagenet

SHRINK = {  # sizes of the tiny profile, so that the run takes seconds
    "runtime": {"device": "cpu"},
    "teacher": {"source": "train", "model": {"arch": "tiny_cnn"}, "method": "sat", "published_clean_acc": None,
                "train": {"epochs": 1, "batch_size": 50, "milestones": []},
                "attack": {"steps": 1, "step": "8/255"}, "eval": {"n_samples": None, "batch_size": 100, "steps": 1}},
    "distill": {"student": {"arch": "tiny_cnn"}, "train": {"epochs": 2, "batch_size": 50, "milestones": [1]},
                "attack": {"steps": 1, "step": "8/255"}, "select": "last",
                "frl_rw": {"hot_start_epochs": 1, "validation": {"batch_size": 100, "steps": 1},
                           "train": {"epochs": None, "weight_decay": None, "milestones": None}},
                "cfa": {"begin": 1, "threshold": 0.0, "validation": {"batch_size": 100, "steps": 1},
                        "train": {"epochs": None, "weight_decay": None, "milestones": None}}},
    "evaluate": {"n_samples": None, "batch_size": 100, "pgd": {"steps": 1}, "cw": {"steps": 1},
                 "aa": {"version": "custom", "attacks": ["apgd-ce"], "batch_size": 200, "n_samples": None}},
    "analyze": {"n_bootstrap": 50, "n_permutations": 50},
}


def merge(base: dict, change: dict) -> dict:
    for key, value in change.items():
        base[key] = merge(base.get(key) or {}, value) if isinstance(value, dict) and value else value
    return base


def invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, (args, result.output)
    return result.output


def run_dag(tmp_path, monkeypatch, profile: str, methods: list[str]) -> dict:
    monkeypatch.chdir(tmp_path)
    params = merge(yaml.safe_load(profile_params_text(profile)), SHRINK)
    params["data"].update({"download": False, "verify_md5": False, "val_per_class": 1})
    params["distill"]["methods"] = methods
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    invoke("check")
    invoke("prepare")
    invoke("teacher")
    for method in methods:
        invoke("distill", "--method", method, "--seed", "0")
    for model in ["teacher", *(f"{m}/seed0" for m in methods)]:
        invoke("evaluate", "--model", model)
    invoke("analyze")
    return params


def check_outputs(tmp_path, params: dict, num_classes: int, shape: list[int]) -> None:
    manifest = json.loads((tmp_path / "data" / params["data"]["dataset"] / "manifest.json").read_text())
    assert len(manifest["class_names"]) == num_classes and list(manifest["image_shape"]) == shape
    for method in params["distill"]["methods"]:
        assert checkpoint_meta(tmp_path / "models" / "students" / method / "seed0.pt")["num_classes"] == num_classes
    fairness = json.loads((tmp_path / "results" / "fairness.json").read_text())
    for model in ["teacher", *(f"{m}/seed0" for m in params["distill"]["methods"])]:
        assert model in json.dumps(fairness)
    # the class-wise state of the fairness baselines covers every class
    frl_rows = list(csv.DictReader(open(tmp_path / "results" / "distill" / "frl_rw" / "seed0" / "frl_state.csv")))
    assert {int(r["class"]) for r in frl_rows} == set(range(num_classes))
    cfa_rows = list(csv.DictReader(open(tmp_path / "results" / "distill" / "cfa" / "seed0" / "cfa_state.csv")))
    assert {int(r["class"]) for r in cfa_rows} == set(range(num_classes))
    assert {int(r["epoch"]) for r in frl_rows} == {1, 2}  # measured after the hot-start epoch and after the last
    assert checkpoint_meta(tmp_path / "models" / "students" / "cfa" / "seed0.pt")["select"] == "weight_average"
    assert (tmp_path / "plots" / "distill" / "cfa" / "seed0" / "cfa_state.png").stat().st_size > 0
    report = (tmp_path / "results" / "report.md").read_text()
    assert f"{num_classes} classes" in report  # statistics over every class, said so


@pytest.mark.slow
def test_cifar100_fixture_runs_prepare_distill_evaluate_analyze(tmp_path, monkeypatch):
    write_cifar100(tmp_path / "data" / "raw", train_per_class=3, test_per_class=1)
    params = run_dag(tmp_path, monkeypatch, "cifar100", ["absld", "frl_rw", "cfa"])
    assert params["distill"]["rslad"]["kl_scale"] == 10 and params["distill"]["absld"]["kl_scale"] == 10
    check_outputs(tmp_path, params, 100, [3, 32, 32])


@pytest.mark.slow
def test_tiny_imagenet_fixture_runs_prepare_distill_evaluate_analyze(tmp_path, monkeypatch):
    write_tiny_imagenet(tmp_path / "data" / "raw", train_per_class=3, val_per_class=1, as_zip=True)
    params = run_dag(tmp_path, monkeypatch, "tinyimagenet", ["absld", "frl_rw", "cfa"])
    assert params["distill"]["student"]["arch"] == "tiny_cnn"  # shrunk from the profile's preact_resnet18
    check_outputs(tmp_path, params, 200, [3, 64, 64])
