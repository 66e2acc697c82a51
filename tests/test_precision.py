"""One precision decision for the distill stage, held where it is made.

The student's attack and loss follow runtime.amp (bf16 autocast). Everything else runs in float32,
as the official codes do, unless a param says otherwise: every teacher pass (its soft labels on the
clean batch *and* AdaAD's / IAD's passes on attacked inputs: distill.teacher_amp) and the
measurements between epochs (FRL's / CFA's validation PGD, the checkpoint-selection PGD:
distill.measure_amp). The CPU's bf16 autocast stands in for CUDA's here: the switch is the same.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from absld.data import Batch
from absld.methods import MethodContext, build_method
from absld.params import AttackConfig, DistillConfig, EvalAttackConfig, Params
from absld.runtime import AtPrecision, Runtime
from absld.train import distill as distill_stage
from absld.train.loop import method_loss
from absld.train.selection import selection

C = 3
AMP = Runtime(device=torch.device("cpu"), amp=True, channels_last=False, progress=False)


class Probe(nn.Module):
    """A linear classifier that records, at every forward, whether autocast was on."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 2 * 2, C)
        self.autocast: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return self.linear(x.flatten(1))


def batch(n: int = 6) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(x=torch.rand(n, 3, 2, 2, generator=g), y=torch.arange(n) % C, index=torch.arange(n))


def prepared(n_per_class: int = 2) -> SimpleNamespace:
    labels = np.repeat(np.arange(C), n_per_class)
    images = np.random.default_rng(0).integers(0, 256, (len(labels), 3, 2, 2), dtype=np.uint8)
    return SimpleNamespace(val_images=images, val_labels=labels, test_images=images, test_labels=labels,
                           num_classes=C, classes_without_images=lambda labels: [])


@pytest.mark.parametrize("bf16", [False, True])
def test_at_precision_switches_off_an_enclosing_autocast_unless_asked(bf16):
    probe = Probe()
    wrapped = AtPrecision(probe, AMP, bf16=bf16)
    x = batch().x
    with AMP.autocast():
        out = wrapped(x)
    assert probe.autocast == [bf16] and out.dtype == torch.float32
    if not bf16:
        assert torch.equal(out, probe.linear(x.flatten(1)))  # the float32 logits, bit for bit


def _stage_teacher(monkeypatch, tmp_path, teacher_amp: bool) -> tuple[nn.Module, Probe]:
    """The distill stage's own teacher (absld.train.distill._teacher) around a probe."""
    probe = Probe()
    (tmp_path / "teacher.pt").write_bytes(b"")
    monkeypatch.setattr(distill_stage, "load_checkpoint", lambda path: probe)
    monkeypatch.setattr(distill_stage, "check_fits", lambda *a, **k: None)
    monkeypatch.setattr(distill_stage, "sha256_file", lambda path: "0" * 64)
    layout = SimpleNamespace(teacher_checkpoint=tmp_path / "teacher.pt")
    teacher, _ = distill_stage._teacher("adaad", SimpleNamespace(num_classes=C, in_channels=3, manifest={
        "image_shape": [3, 2, 2]}), AMP, "synthetic", layout, teacher_amp)
    return teacher, probe


@pytest.mark.parametrize("name", ["adaad", "iad", "fair_iad"])
@pytest.mark.parametrize("teacher_amp", [False, True])
def test_every_teacher_pass_clean_or_attacked_runs_at_the_teachers_one_precision(monkeypatch, tmp_path, name,
                                                                                 teacher_amp):
    teacher, probe = _stage_teacher(monkeypatch, tmp_path, teacher_amp)
    cfg = Params().distill.method_config(name)
    if name in ("iad", "fair_iad"):
        cfg = cfg.model_copy(update={"begin": 0})  # introspection on: the teacher sees x'
    method = build_method(name, cfg, MethodContext(num_classes=C, attack=AttackConfig(steps=2), teacher=teacher))
    student = Probe()
    method_loss(student, method, teacher, batch(), AMP)
    assert len(probe.autocast) >= 2  # the clean soft labels and at least one pass on attacked inputs
    assert set(probe.autocast) == {teacher_amp}
    assert set(student.autocast) == {True}  # the student's attack and loss follow runtime.amp


def test_the_distill_stage_defaults_are_float32_teacher_and_measurements():
    cfg = Params().distill
    assert cfg.teacher_amp is False and cfg.measure_amp is False


@pytest.mark.parametrize("measure_amp", [False, True])
def test_the_validation_pgd_runs_in_float32_unless_measure_amp(measure_amp):
    student = Probe()
    validate = distill_stage._validation(student, prepared(), AMP, seed=0, bf16=measure_amp)
    with AMP.autocast():  # as if called from inside a training step
        acc = validate(EvalAttackConfig(steps=2, batch_size=6))
    assert acc.n == 2 * C and student.autocast and set(student.autocast) == {measure_amp}


@pytest.mark.parametrize("measure_amp", [False, True])
def test_the_selection_pgd_runs_in_float32_unless_measure_amp(measure_amp):
    cfg = DistillConfig.model_validate({"select": "val_fair_best", "measure_amp": measure_amp,
                                        "select_eval": {"batch_size": 6, "steps": 2, "every": 1},
                                        "train": {"epochs": 2, "milestones": [1]}})
    chosen = selection(cfg, "rslad", cfg.train, prepared(), AMP, seed=0)
    student = Probe().eval()
    with AMP.autocast():
        chosen.score(student)
    assert student.autocast and set(student.autocast) == {measure_amp}


@pytest.mark.parametrize("measure_amp", [False, True])
def test_a_methods_own_validation_pass_runs_in_float32_unless_measure_amp(measure_amp):
    """WAT's class-wise TRADES cost on the validation split (ctx.validation_pass)."""
    student = Probe()
    validation_pass = distill_stage._validation_pass(student, prepared(), AMP, seed=0, bf16=measure_amp)
    seen = []

    def measure(model, batch, generator):
        seen.append(torch.is_autocast_enabled("cpu"))
        model(batch.x)

    with AMP.autocast():
        validation_pass(EvalAttackConfig(steps=2, batch_size=6), measure)
    assert seen and set(seen) == {measure_amp} and set(student.autocast) == {measure_amp}
