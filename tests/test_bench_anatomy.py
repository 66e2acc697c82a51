"""The bench's anatomy of a step is the training loop's step, phase by phase; its FLOPs and clocks."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import torch

from absld.bench import (PHASES, BenchSettings, PhaseClock, anatomy, fast_runtime, fp32_runtime, ours_step,
                         reference_step, step_flops)
from absld.methods import METHODS
from absld.runtime import setup
from absld.train.loop import method_loss
from tests.conftest import REPO

SETTINGS = BenchSettings("tiny_cnn", "tiny_cnn", batch_size=8, warmup=1, repeats=2, pairs=3)


@pytest.fixture(scope="module")
def tiny():
    from absld.params import load_profile

    return load_profile("tiny", conf=REPO / "conf")


QUICK = {("absld", True), ("absld", False), ("adaad", True), ("b_mtard", False), ("iad", True)}
"""Checked in the quick suite (ABSLD both ways; AdaAD's and IAD's teachers inside the attack; B-MTARD's
two teachers); every other method and precision in the slow one."""
CASES = [pytest.param(name, fast, id=f"{name}-{'fast' if fast else 'fp32'}",
                      marks=() if (name, fast) in QUICK else pytest.mark.slow)
         for name in METHODS for fast in (True, False)]


@pytest.mark.parametrize(("name", "fast"), CASES)
def test_the_anatomy_step_computes_method_loss_s_loss(tiny, name, fast):
    """Two identical rigs (same seed): one batch through :func:`absld.train.loop.method_loss`, the
    same batch through the anatomy's phases, the same random draws: the same loss, bit for bit."""
    rt = setup((fast_runtime if fast else fp32_runtime)(tiny.runtime))
    loop_rig = ours_step(tiny, name, SETTINGS, rt, steps=1)
    anatomy_rig = ours_step(tiny, name, SETTINGS, rt, steps=1)
    batch = next(loop_rig.batches)
    torch.manual_seed(7)
    expected = method_loss(loop_rig.student, loop_rig.method, loop_rig.method.logits_teacher, batch, rt)
    torch.manual_seed(7)
    got = anatomy_rig.anatomy_step(PhaseClock(rt.device), batch)
    assert torch.equal(got.loss.detach(), expected.loss.detach()), (name, float(got.loss), float(expected.loss))


def test_the_anatomy_puts_each_phase_s_time_where_it_is_spent(tiny):
    """The attack sleeps 0.5 s, the loss 0.25 s: each phase's seconds hold its own sleep."""
    rt = setup(fp32_runtime(tiny.runtime))
    rig = ours_step(tiny, "rslad", SETTINGS, rt, steps=4)
    perturb = rig.method.perturb

    def slow_perturb(*args, **kwargs):
        time.sleep(0.5)
        return perturb(*args, **kwargs)

    loss = rig.method.loss

    def slow_loss(*args, **kwargs):
        time.sleep(0.25)
        return loss(*args, **kwargs)

    rig.method.perturb, rig.method.loss = slow_perturb, slow_loss
    out = anatomy(rig, warmup=0, repeats=2)
    assert list(out) == list(PHASES)
    assert out["attack"]["seconds"] >= 0.5 and 0.25 <= out["loss"]["seconds"] < out["attack"]["seconds"]
    assert max(out, key=lambda phase: out[phase]["seconds"]) == "attack"  # each sleep in its own phase
    assert sum(row["share"] for row in out.values()) == pytest.approx(1.0)


def test_step_flops_counts_the_teacher_forward_in_the_teacher_phase_and_none_in_sgd(tiny):
    from torch.utils.flop_counter import FlopCounterMode

    rt = setup(fp32_runtime(tiny.runtime))
    rig = ours_step(tiny, "rslad", SETTINGS, rt, steps=2)
    flops = step_flops(rig)
    batch = next(rig.batches)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        rig.method.logits_teacher(batch.x)
    assert list(flops) == list(PHASES)
    assert flops["teacher"] == counter.get_total_flops() > 0
    assert flops["optimizer"] == 0
    # the attack: steps x (forward + input backward) of the student; the loss: two forwards
    assert flops["attack"] > flops["loss"] > 0 and flops["backward"] > flops["loss"] / 2


def test_the_reference_loop_s_dataloader_workers_end_when_it_is_closed(tiny):
    rt = setup(fp32_runtime(tiny.runtime))
    ref = reference_step(tiny, "rslad", SETTINGS, rt.device, steps=3)
    ref.step()
    assert len(multiprocessing.active_children()) >= 2  # the two workers, alive between steps
    ref.step()
    ref.close()
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not multiprocessing.active_children()
