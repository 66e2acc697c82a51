"""Data-parallel training (runtime.distributed under torchrun): two CPU processes on the gloo
backend train what one process trains.

Every comparison uses models without BatchNorm (torch has no SyncBatchNorm on the CPU, so each
process would normalise its share with its own statistics). What is exact by construction: the
data (each process keeps its rows of the same global batch), the noise (every random draw of a step
is the global batch's, each process keeping its rows: :func:`absld.distributed.draw_rows`), the
state measured on the validation split (rank 0's, on every process) and the branches (by epoch).
What is left differs only in the order of floating-point sums (the gradient average over two
shares, the class risks), ~1e-7 relative per operation in float32.

- :func:`test_two_processes_train_what_one_trains` (slow): ABSLD with a radius of 1e-6, whose sign
  steps cannot be flipped by that rounding, compared at 1e-5, where a step of the machinery done
  wrong (a share's loss not re-weighted when the last batch splits 3/2, risks not summed over
  processes) moves weights by 1e-3 or more;
- the fast tests below (one run of one process and one of two, :func:`scenarios`): ARD with the
  paper's attack (8/255, step 2/255, uniform start), every start recorded; IAD's introspection on a
  batch whose one share the teacher trusts fully (a branch decided by a process's values would
  differ between the two); FRL and WAT with a student whose eval-mode logits depend on the process
  (a stand-in for what makes a process's own measurement its own: BatchNorm's running statistics on
  the CPU, cuDNN's per-device choice of algorithm on CUDA).
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
    for process in launch("train", out, world):
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
    assert metrics["final_tau_epoch"] >= 1 and metrics["world"] == 2  # recorded: two processes trained it


def test_every_draw_of_a_step_is_the_global_batchs_each_process_keeping_its_rows():
    """PGD's uniform starts (one radius, per-sample radii), its gaussian start and TRIX's target class,
    drawn in a step of 5 samples shared by 2 processes: each process's rows of one process's draws,
    the two shares different, and every process's RNG left where one process's is."""
    from absld.attacks import ce_loss, pgd
    from absld.distributed import sharing
    from absld.methods.trix import random_other_class

    model = NoNormNet(seed=3)
    x = torch.rand(5, 3, 8, 8)
    y = torch.arange(5) % N_CLASSES
    radii = torch.linspace(2, 8, 5) / 255

    def draws(rank: int, world: int, images: torch.Tensor) -> list[torch.Tensor]:
        rows = slice(rank, None, world)
        torch.manual_seed(0)
        with sharing(rank, world, total=5):
            starts = [pgd(model, images[rows], ce_loss(y[rows]), eps=eps, step=0.0, steps=0, start=start)
                      for eps, start in ((8 / 255, "uniform"), (radii[rows], "uniform"), (8 / 255, "gaussian"))]
            return [*starts, random_other_class(y[rows], N_CLASSES), torch.rand(3)]  # the last: the RNG after

    for images in (x, x.contiguous(memory_format=torch.channels_last)):
        one = draws(0, 1, images)
        shares = [draws(rank, 2, images) for rank in (0, 1)]
        for rank, share in enumerate(shares):
            for whole, part in zip(one[:-1], share[:-1], strict=True):
                assert torch.equal(part, whole[rank::2])
            assert torch.equal(share[-1], one[-1])
        for first, second in zip(shares[0][:3], shares[1][:3]):
            assert not torch.allclose(first[:2] - x[0:4:2], second[:2] - x[1:4:2])  # the shares' noise differs
    with sharing(0, 2, total=5), pytest.raises(ValueError, match="not this process's share"):
        pgd(model, x, ce_loss(y), eps=8 / 255, step=0.0, steps=0, start="uniform")  # all 5 rows: a slip


class ConstantNet(nn.Module):
    """A teacher whose logits are (200, 0, 0, 0) for every image: P_T(0 | x) = 1 exactly in float32
    (exp(-200) underflows) and P_T(k | x) = 0 for every other class."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), N_CLASSES, device=x.device)
        logits[:, 0] = 200.0
        return logits


class CountingNet(NoNormNet):
    """NoNormNet counting its train-mode forwards (each one a SyncBatchNorm collective on CUDA)."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.train_forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.train_forwards += int(self.training)
        return super().forward(x)


class RankSkewedNet(NoNormNet):
    """NoNormNet whose eval-mode logits of class 0 are raised by 50 x its process's rank: the same
    weights measured differently by each process (rank 0, and one process, measure it as it is)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        if not self.training:
            logits = logits + torch.tensor([50.0 * int(os.environ.get("RANK", "0")), 0, 0, 0])
        return logits


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 8, 8), dtype=np.uint8)


def _ard(rt) -> dict:
    """Two epochs of ARD with the paper's attack on 37 images in batches of 16 (the last one 5), every
    PGD start recorded."""
    import importlib

    pgd_module = importlib.import_module("absld.attacks.pgd")  # the module (absld.attacks.pgd is the function)
    loader = TensorLoader(_images(37, 0), np.arange(37) % N_CLASSES, batch_size=16, shuffle=True, crop_padding=1,
                          flip=True, seed=0)
    student = NoNormNet(seed=2)
    method = build_method("ard", Params().distill.method_config("ard"), MethodContext(
        num_classes=N_CLASSES, attack=AttackConfig(eps="8/255", step="2/255", steps=3),
        teacher=NoNormNet(seed=1).eval().requires_grad_(False)))
    starts, start_point = [], pgd_module._start_point

    def recorded(x, *args, **kwargs):
        starts.append((x, start_point(x, *args, **kwargs)))  # (the clean share, its start)
        return starts[-1][1]

    pgd_module._start_point = recorded
    try:
        torch.manual_seed(0)
        result = fit(student, method, loader, TrainConfig(epochs=2, batch_size=16, lr=0.1, milestones=[]), rt)
    finally:
        pgd_module._start_point = start_point
    return {"weights": student.state_dict(), "starts": starts, "history": result.history}


def _iad(rt) -> dict:
    """Two epochs of IAD with introspection from the start (begin 0), unshuffled batches of 16 whose
    even positions are class 0 and odd ones class 1: the teacher (:class:`ConstantNet`) trusts
    every sample of rank 0's share (a_i = 1) and none of rank 1's."""
    loader = TensorLoader(_images(32, 1), np.arange(32) % 2, batch_size=16, shuffle=False, seed=0)
    student = CountingNet(seed=2)
    cfg = Params().distill.method_config("iad").model_copy(update={"begin": 0})
    method = build_method("iad", cfg, MethodContext(
        num_classes=N_CLASSES, attack=AttackConfig(eps="8/255", step="2/255", steps=2), teacher=ConstantNet()))
    torch.manual_seed(0)
    result = fit(student, method, loader, TrainConfig(epochs=2, batch_size=16, lr=0.1, milestones=[]), rt)
    return {"weights": student.state_dict(), "train_forwards": student.train_forwards, "history": result.history}


def _frl(rt) -> dict:
    """FRL-RW: one epoch of hot start, then a fair one, measured on 24 validation images after each
    (the measurement and the multipliers, weights and radii it gives)."""
    from types import SimpleNamespace

    from absld.params import EvalAttackConfig
    from absld.train.distill import _validation

    loader = TensorLoader(_images(32, 2), np.arange(32) % N_CLASSES, batch_size=16, shuffle=True, seed=0)
    student = RankSkewedNet(seed=2)
    validation = SimpleNamespace(val_images=_images(24, 3), val_labels=np.arange(24) % N_CLASSES, num_classes=N_CLASSES)
    cfg = Params().distill.method_config("frl_rw").model_copy(update={
        "hot_start_epochs": 1, "validation": EvalAttackConfig(batch_size=10, steps=2)})
    method = build_method("frl_rw", cfg, MethodContext(
        num_classes=N_CLASSES, attack=AttackConfig(eps="8/255", step="2/255", steps=2), student=student,
        validate=_validation(student, validation, rt, seed=0, bf16=False)))
    torch.manual_seed(0)
    fit(student, method, loader, TrainConfig(epochs=2, batch_size=16, lr=0.05, milestones=[]), rt)
    return {"log": method.log, "state": method.state_dict()}


def _wat(rt) -> dict:
    """WAT: two epochs, its class costs measured by its own pass over 24 validation images after each."""
    from types import SimpleNamespace

    from absld.params import EvalAttackConfig
    from absld.train.distill import _validation_pass

    loader = TensorLoader(_images(32, 2), np.arange(32) % N_CLASSES, batch_size=16, shuffle=True, seed=0)
    student = RankSkewedNet(seed=2)
    validation = SimpleNamespace(val_images=_images(24, 3), val_labels=np.arange(24) % N_CLASSES, num_classes=N_CLASSES)
    cfg = Params().distill.method_config("wat").model_copy(update={"validation": EvalAttackConfig(batch_size=10, steps=2)})
    method = build_method("wat", cfg, MethodContext(
        num_classes=N_CLASSES, attack=AttackConfig(eps="8/255", step="2/255", steps=2), student=student,
        validation_pass=_validation_pass(student, validation, rt, seed=0, bf16=False)))
    torch.manual_seed(0)
    fit(student, method, loader, TrainConfig(epochs=2, batch_size=16, lr=0.05, milestones=[]), rt)
    return {"log": method.log, "state": method.state_dict()}


SCENARIOS = {"ard": _ard, "frl": _frl, "wat": _wat, "iad": _iad}


def scenarios(out: Path) -> None:
    """One process of :data:`SCENARIOS` in turn, writing what it got after each (a scenario whose
    processes fall out of step, e.g. a collective one of them skips, loses only itself and those after)."""
    rt = setup(RuntimeConfig(device="cpu", distributed=True))
    results: dict = {"world": rt.world}
    for name, scenario in SCENARIOS.items():
        results[name] = scenario(rt)
        torch.save(results, out / f"rank{rt.rank}.pt")


def launch(function: str, out: Path, world: int) -> list[subprocess.Popen]:
    """``world`` processes of ``tests.test_distributed.<function>(out)``, started as torchrun starts them
    (one: a plain process, as without torchrun)."""
    port = free_port()
    code = f"from pathlib import Path; from tests.test_distributed import {function}; {function}(Path({str(out)!r}))"
    processes = []
    for rank in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE=str(world), OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        if world == 1:
            for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
                env.pop(name)
        processes.append(subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True))
    return processes


def finish(processes: list[subprocess.Popen], timeout: float = 180) -> list[str]:
    """Wait for ``processes`` (ending any still running after ``timeout``: a collective that another
    process skipped); the error output of each one that failed."""
    errors = []
    try:
        for process in processes:
            try:
                _, err = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                err = f"still running after {timeout} s"
            if process.returncode != 0:
                errors.append(err[-3000:])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return errors


class Runs:
    """What each process of the two runs of :func:`scenarios` wrote, by scenario."""

    def __init__(self, folders: dict[str, Path], errors: list[str]) -> None:
        self.saved = {name: [torch.load(path, weights_only=True) if (path := folder / f"rank{rank}.pt").is_file()
                             else {} for rank in range(1 if name == "one" else 2)] for name, folder in folders.items()}
        self.errors = errors

    def __call__(self, scenario: str) -> tuple[dict, list[dict]]:
        """(one process's results, [rank 0's, rank 1's]) of ``scenario``; fails if a process did not finish it."""
        got = [saved.get(scenario) for saved in self.saved["one"] + self.saved["two"]]
        if any(result is None for result in got):
            pytest.fail(f"a process did not finish the scenario {scenario}:\n" + "\n".join(self.errors))
        return got[0], got[1:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    """:func:`scenarios` by one process and by two, at the same time."""
    folders = {name: tmp_path_factory.mktemp(name) for name in ("one", "two")}
    return Runs(folders, finish([*launch("scenarios", folders["one"], 1), *launch("scenarios", folders["two"], 2)]))


def largest_difference(one: dict, two: dict) -> float:
    """The largest difference between two runs' weights (printed with ``pytest -s``: docs/speed.md)."""
    return max(float((two["weights"][name] - weight).abs().max()) for name, weight in one["weights"].items())


def test_two_processes_train_what_one_trains_under_the_papers_attack(runs):
    one, (two, other) = runs("ard")
    assert [saved["world"] for saved in runs.saved["one"] + runs.saved["two"]] == [1, 2, 2]
    print(f"ARD, 8/255: weights {largest_difference(one, two):.2g} apart")  # seen 1.9e-9; own noise per process: 5.8e-5
    for name, weight in one["weights"].items():
        assert torch.allclose(two["weights"][name], weight, rtol=0, atol=1e-6), name
        assert torch.equal(other["weights"][name], two["weights"][name])  # DDP: one model
    assert not torch.equal(one["weights"]["fc.weight"], NoNormNet(seed=2).fc.weight)  # it did train
    for row_one, row_two in zip(one["history"], two["history"], strict=True):
        assert row_two["train_loss"] == pytest.approx(row_one["train_loss"], rel=1e-4)
        assert row_two["train_acc_adv"] == pytest.approx(row_one["train_acc_adv"])


def test_each_process_starts_its_samples_where_one_process_starts_them(runs):
    """Every PGD start of the two epochs (3 batches each, the last of 5 split 3/2): rank r's are rows
    r, r + 2, ... of one process's, bit for bit, and the two ranks' offsets from their images differ."""
    one, shares = runs("ard")
    one, shares = one["starts"], [share["starts"] for share in shares]
    assert len(one) == len(shares[0]) == len(shares[1]) == 2 * 3
    for (x, whole), (x0, first), (x1, second) in zip(one, *shares, strict=True):
        assert torch.equal(first, whole[0::2]) and torch.equal(second, whole[1::2])
        assert torch.equal(x0, x[0::2]) and torch.equal(x1, x[1::2])
        n = len(second)  # the shares' noise differs (the same draw for both would differ only where clamped)
        assert float(((first - x0)[:n] != (second - x1)).float().mean()) > 0.9


def test_iads_introspection_is_decided_alike_on_a_batch_one_share_trusts_fully(runs):
    """Rank 0's share has a_i = 1 on every sample: a branch on ``(trust < 1).any()`` would skip the
    natural forward there (on CUDA a SyncBatchNorm collective the other process waits for)."""
    one, two = runs("iad")
    assert two[0]["train_forwards"] == two[1]["train_forwards"] == one["train_forwards"]
    print(f"IAD: weights {largest_difference(one, two[0]):.2g} apart")  # seen 8.9e-8
    for name, weight in one["weights"].items():
        assert torch.allclose(two[0]["weights"][name], weight, rtol=0, atol=1e-6), name
    for row_one, row_two in zip(one["history"], two[0]["history"], strict=True):
        assert set(row_two) == set(row_one) and "train_introspection" in row_one
        assert row_two["train_teacher_trust"] == pytest.approx(row_one["train_teacher_trust"]) == 0.5
        assert row_two["train_acc_nat"] == pytest.approx(row_one["train_acc_nat"])


def test_frls_validation_state_is_rank_0s_on_every_process(runs):
    """The student's eval logits differ by process (:class:`RankSkewedNet`): every process still holds
    the multipliers, weights and log of rank 0's measurement, which one process makes as well."""
    one, two = runs("frl")
    assert two[0]["log"] == two[1]["log"]
    for key in ("lambda_nat", "lambda_boundary", "lambda_margin"):
        assert torch.equal(two[0]["state"][key], two[1]["state"][key]), key
    first_epoch = [row for row in one["log"] if row["epoch"] == 1]  # measured after training alike (uniform weights)
    for row_two, row_one in zip([row for row in two[0]["log"] if row["epoch"] == 1], first_epoch, strict=True):
        assert row_two == pytest.approx(row_one)
    assert any(row["lambda_boundary"] > 0 or row["lambda_nat"] > 0 for row in first_epoch)  # the weights moved


def test_wats_validation_costs_are_rank_0s_on_every_process(runs):
    """WAT's own validation pass (ctx.validation_pass) on the same process-dependent student."""
    one, two = runs("wat")
    assert two[0]["log"] == two[1]["log"]
    for key in ("weights", "cumulative_cost"):
        assert torch.equal(two[0]["state"][key], two[1]["state"][key]), key
    first_epoch = [row for row in one["log"] if row["epoch"] == 1]
    for row_two, row_one in zip([row for row in two[0]["log"] if row["epoch"] == 1], first_epoch, strict=True):
        assert row_two == pytest.approx(row_one, rel=1e-4)
    assert len({row["weight"] for row in first_epoch}) > 1  # the weights moved apart
