"""No host sync inside a training step, for every method.

On CUDA a read of a tensor's value on the host (``.item()``, ``bool(t)``, ``float(t)``, ``.tolist()``,
``.cpu()``, ``nonzero``, a boolean-mask index) waits for every queued kernel: the GPU idles while
Python catches up, and a step that does it cannot be captured in a CUDA graph. Under data-parallel
training a branch on such a value can also differ between processes and hang a collective.

The test runs three epochs of each method through the real loop (:func:`absld.train.fit`, the tiny
profile's recipe, every warm-up of one epoch, so that the late branches run too) and, from the
moment a batch is requested until the optimiser has stepped, makes every such read raise. The
loop's progress bar (every 10 steps, only with a visible bar) and the epoch-end work (the method's
``on_epoch_end``, validation, selection, the epoch's statistics) are outside the step and free to read.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from absld import methods as methods_lib
from absld.data import TensorLoader
from absld.methods import METHODS, MethodContext, build_method
from absld.models import build_model
from absld.params import load_profile
from absld.runtime import AtPrecision, Runtime
from absld.train import loop as loop_lib
from absld.train.distill import _validation, _validation_pass

SYNCS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "cpu", "numpy", "nonzero",
         "masked_select", "unique", "unique_consecutive", "argwhere", "nonzero_static"}
"""Tensor methods and torch functions whose result needs the tensor's value on the host."""


class HostSync(AssertionError):
    pass


class NoHostSync(TorchFunctionMode):
    """Raises on every read of a tensor's value by the host (see :data:`SYNCS`), and on indexing
    with a boolean mask (its output shape depends on the values)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in SYNCS:
            raise HostSync(f"host sync inside the training step: {name}")
        if name in ("__getitem__", "__setitem__", "index_put_", "index_put") and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            for part in index:
                if isinstance(part, torch.Tensor) and part.dtype == torch.bool:
                    raise HostSync(f"host sync inside the training step: {name} with a boolean mask")
        return func(*args, **kwargs)


class GuardedLoader:
    """``loader``'s batches, with :class:`NoHostSync` active from each request of a batch until the
    next request (the whole step: loading, attack, loss, backward, optimiser)."""

    def __init__(self, loader: TensorLoader) -> None:
        self.loader = loader
        self.steps = 0

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            mode = NoHostSync()
            mode.__enter__()
            try:
                batch = next(batches)
            except StopIteration:
                mode.__exit__(None, None, None)
                return
            except BaseException:
                mode.__exit__(None, None, None)
                raise
            try:
                yield batch
                self.steps += 1
            finally:
                mode.__exit__(None, None, None)


C, PER_CLASS, VAL_PER_CLASS = 4, 12, 5


def _params():
    params = load_profile("tiny")
    distill = params.distill.model_copy(update={
        "iad": params.distill.iad.model_copy(update={"begin": 1}),  # introspection from epoch 2
        "fair_iad": params.distill.fair_iad.model_copy(update={"begin": 1}),
    })
    return params.model_copy(update={"distill": distill})


def _prepared(rng: np.random.Generator) -> SimpleNamespace:
    val_labels = np.repeat(np.arange(C), VAL_PER_CLASS)
    return SimpleNamespace(val_images=rng.integers(0, 256, (len(val_labels), 3, 32, 32), dtype=np.uint8),
                           val_labels=val_labels, num_classes=C)


def run_guarded(name: str, guard: bool = True) -> int:
    """Three epochs of ``name`` through :func:`fit`; the number of guarded steps."""
    params = _params()
    rt = Runtime(device=torch.device("cpu"), amp=False, channels_last=False, progress=False)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    student = build_model("tiny_cnn", num_classes=C)
    teacher = AtPrecision(build_model("tiny_cnn", num_classes=C).eval().requires_grad_(False), rt, False)
    clean = AtPrecision(build_model("tiny_cnn", num_classes=C).eval().requires_grad_(False), rt, False)
    prepared = _prepared(rng)
    method_cfg = params.distill.method_config(name)
    train_cfg = method_cfg.train.apply(params.distill.train).model_copy(update={"epochs": 3, "milestones": [2]})
    validates = method_cfg.validates
    method = build_method(name, method_cfg, MethodContext(
        num_classes=C, attack=params.distill.attack, teacher=teacher if METHODS[name].uses_teacher else None,
        clean_teacher=clean if METHODS[name].uses_clean_teacher else None, kl_reduction=params.distill.kl_reduction,
        student=student, validate=_validation(student, prepared, rt, 0, False) if validates else None,
        validation_pass=_validation_pass(student, prepared, rt, 0, False) if validates else None))
    labels = np.repeat(np.arange(C), PER_CLASS)
    images = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
    loader = TensorLoader(images, labels, batch_size=16, shuffle=True, crop_padding=4, flip=True, seed=0)
    guarded = GuardedLoader(loader) if guard else loader
    loop_lib.fit(student, method, guarded, train_cfg, rt)
    return guarded.steps if guard else 0


@pytest.mark.parametrize("name", list(METHODS))
def test_a_training_step_reads_no_tensor_value_on_the_host(name):
    steps = run_guarded(name)
    assert steps == 3 * 3  # every step of the three epochs ran under the guard


def test_the_guard_catches_each_kind_of_host_read():
    t = torch.ones(3)
    reads = [lambda: t.sum().item(), lambda: bool(t[0] > 0), lambda: float(t.sum()), lambda: int(t[0]),
             lambda: t.tolist(), lambda: t.cpu(), lambda: t.nonzero(), lambda: torch.nonzero(t),
             lambda: t[t > 0], lambda: [1, 2][torch.tensor(1)], lambda: t.numpy()]
    for read in reads:
        with pytest.raises(HostSync), NoHostSync():
            read()
    with NoHostSync():  # what a step may do: arithmetic, indexing by integer tensors, where()
        (t * 2).sum()
        t[torch.tensor([0, 2])]
        torch.where(t > 0, t, -t)


def test_the_guard_sees_a_sync_inside_a_method(monkeypatch):
    """A sync planted inside one method's loss fails that method's run (the guard is really on)."""
    original = methods_lib.SAT.loss

    def loss_with_sync(self, student, batch, x_adv, teacher_logits):
        out = original(self, student, batch, x_adv, teacher_logits)
        if bool(out.loss > 1e9):  # the kind of check that hides in a loss
            pass
        return out

    monkeypatch.setattr(methods_lib.SAT, "loss", loss_with_sync)
    with pytest.raises(HostSync, match="__bool__"):
        run_guarded("sat")
