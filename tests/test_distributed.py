"""Data-parallel training (runtime.distributed under torchrun): two CPU processes on the gloo
backend train what one process trains.

The comparison is made where the two must agree to rounding: a model without BatchNorm (torch has
no SyncBatchNorm on the CPU, so each process would normalise its share with its own statistics)
and an attack of radius 1e-6 (each process draws the random starts of its share from its own
generator, so a real attack would start from other points). What is left differs only in the
order of floating-point sums (the gradient average over two shares, the class risks), ~1e-7
relative per operation in float32; over the 8 SGD steps here that stays far below the 1e-5 the
test allows, while a step of the machinery done wrong (a share's loss not re-weighted when the
last batch splits 3/2, risks not summed over processes) moves weights by 1e-3 or more.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from absld.data import TensorLoader
from absld.methods import MethodContext, build_method
from absld.params import AttackConfig, Params, RuntimeConfig, TrainConfig
from absld.runtime import setup
from absld.train.loop import fit

N_CLASSES = 4


class NoNormNet(nn.Module):
    """conv, ReLU, pool, linear: no BatchNorm, so that a share's result does not depend on the other's."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4).flatten(1))


def train(out: Path) -> None:
    """Three epochs of ABSLD on 37 images in batches of 16 (the last one 5: shares of 3 and 2)."""
    rt = setup(RuntimeConfig(device="cpu", distributed=True))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 3, 8, 8), dtype=np.uint8)
    labels = np.arange(37) % N_CLASSES
    loader = TensorLoader(images, labels, batch_size=16, shuffle=True, crop_padding=1, flip=True, seed=0)
    teacher = NoNormNet(seed=1).eval().requires_grad_(False)
    student = NoNormNet(seed=2)
    params = Params()
    method = build_method("absld", params.distill.method_config("absld"), MethodContext(
        num_classes=N_CLASSES, attack=AttackConfig(eps="0.000255/255", step="0.000255/255", steps=2), teacher=teacher,
        kl_reduction="batchmean"))
    torch.manual_seed(0)
    result = fit(student, method, loader, TrainConfig(epochs=3, batch_size=16, lr=0.1, milestones=[2]), rt)
    if rt.is_main:
        torch.save({"weights": student.state_dict(), "tau_adv": method.tau_adv, "tau_nat": method.tau_nat,
                    "history": result.history, "world": rt.world}, out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(out: Path, world: int) -> None:
    """``world`` processes of :func:`train`, started as torchrun starts them (environment variables)."""
    port = free_port()
    code = f"from pathlib import Path; from tests.test_distributed import train; train(Path({str(out)!r}))"
    processes = []
    for rank in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE=str(world), OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        if world == 1:
            for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
                env.pop(name)
        processes.append(subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True))
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err


@pytest.mark.slow
def test_two_processes_train_what_one_trains(tmp_path):
    run_worker(tmp_path / "one.pt", world=1)
    run_worker(tmp_path / "two.pt", world=2)
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert (one["world"], two["world"]) == (1, 2)
    for name, weight in one["weights"].items():
        assert torch.allclose(two["weights"][name], weight, rtol=0, atol=1e-5), name
    assert not torch.equal(one["weights"]["fc.weight"], NoNormNet(seed=2).fc.weight)  # it did train
    assert torch.allclose(two["tau_adv"], one["tau_adv"], atol=1e-6)  # risks summed over both shares
    assert not torch.allclose(one["tau_adv"], torch.ones(N_CLASSES))  # the temperatures did move
    for row_one, row_two in zip(one["history"], two["history"], strict=True):
        # the logged loss is a KL of ~1e-3 at temperatures that agree to ~1e-6 (above): its rounding is
        # amplified ~10x through the temperatures (seen: 1.4e-5 relative at epoch 3), while a share's
        # loss not re-weighted when the last batch splits 3/2 moves it by 2.3e-3 (and the weights by 1.6e-4)
        assert row_two["train_loss"] == pytest.approx(row_one["train_loss"], rel=1e-4)
        assert row_two["train_acc_adv"] == pytest.approx(row_one["train_acc_adv"])  # counts over both shares


def test_a_batch_is_shared_by_position_and_the_loss_reweighted_to_the_global_mean():
    from absld.data import Batch
    from absld.distributed import loss_scale, shard

    batch = Batch(x=torch.arange(5.0).view(5, 1, 1, 1), y=torch.arange(5), index=torch.arange(10, 15))
    first, second = shard(batch, 0, 2), shard(batch, 1, 2)
    assert first.y.tolist() == [0, 2, 4] and second.y.tolist() == [1, 3]
    assert first.index.tolist() == [10, 12, 14] and first.x.flatten().tolist() == [0.0, 2.0, 4.0]
    # DDP averages the two gradients: (s0 * mean0 + s1 * mean1) / 2 must be the mean over all five
    per_sample = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    mean0, mean1 = per_sample[[0, 2, 4]].mean(), per_sample[[1, 3]].mean()
    averaged = (loss_scale(3, 5, 2) * mean0 + loss_scale(2, 5, 2) * mean1) / 2
    assert float(averaged) == pytest.approx(float(per_sample.mean()))
    assert shard(batch, 0, 1) is batch


@pytest.mark.slow
def test_torchrun_runs_the_distill_stage_with_one_writer(tmp_path, monkeypatch):
    """`torchrun --nproc_per_node 2 -m pipeline.cli distill` on the tiny profile: one lock, one
    writer, one report of the result, the student and its temperatures written as by one process."""
    import json

    import yaml
    from click.testing import CliRunner

    from pipeline.cli import main
    from tests.conftest import REPO, profile_params_text

    params = yaml.safe_load(profile_params_text("tiny"))
    params["runtime"]["distributed"] = True
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("prepare", "teacher"):
        assert CliRunner().invoke(main, [stage]).exit_code == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(free_port()), "-m", "pipeline.cli", "distill", "--method", "absld",
                             "--seed", "0"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("absld/seed0: 3 epochs") == 1, result.stdout  # rank 0 alone reports
    assert (tmp_path / "models" / "students" / "absld" / "seed0.pt").is_file()
    rows = (tmp_path / "results" / "distill" / "absld" / "seed0" / "temperatures.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 10  # header + 3 epochs x 10 classes, written once
    metrics = json.loads((tmp_path / "results" / "distill" / "absld" / "seed0" / "metrics.json").read_text())
    assert metrics["final_tau_epoch"] >= 1
