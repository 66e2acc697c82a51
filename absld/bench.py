"""How fast the pipeline trains and attacks, against a loop with the reference scripts' structure.

``absld bench`` (``pipeline/bench.py``) times, on random images of the dataset's shape with
untrained models (speed does not depend on the weights):

- one **training step** of each method exactly as :func:`absld.train.fit` runs it (our batch
  loader with its augmentation on whole batches, :func:`absld.train.method_loss`, backward, SGD
  step), with the runtime's fast path (bf16 autocast + channels_last: ``runtime.amp`` on CUDA,
  ``runtime.cpu_bf16`` on the CPU) and in fp32;
- the same step in a **reference loop** with the structure of the official training scripts
  (RSLAD's, ABSLD's, Madry's PGD-AT): a ``torch.utils.data.DataLoader`` with two worker processes
  over PIL images and per-image transforms (random crop with padding, horizontal flip,
  ``ToTensor``), fp32, the attack and loss written out inline, and ABSLD's per-sample Python loops
  (each sample's teacher logits divided by its class temperature, each sample's loss added to its
  class risk with ``.item()``). It exists for ``absld``, ``rslad`` and ``sat`` (and their names
  are the methods it stands for); the other methods are timed without one.

  The three steps run **interleaved**, round-robin (ours fast, ours fp32, reference, ours fast,
  ...) after ``warmup`` untimed rounds, each step timed on its own; ``ratio`` is the median over
  the ``pairs`` rounds of (reference time / ours time) in that round, with its interquartile
  range. Two steps a fraction of a second apart see the same machine, so a load that comes and goes
  (other processes on a shared machine) moves both and leaves their ratio: timings taken at
  different moments would not be a ratio. The reference loop's ``DataLoader`` iterator lives across
  the rounds (its workers prefetch while the other steps run, as they overlap with the compute in
  the official scripts) and is shut down at the end;
- the **anatomy** of our fast step: the seconds of each phase of it (the teacher's clean logits,
  the attack, the loss's forward, the backward, the optimiser), the median over ``repeats`` steps,
  and each phase's share; the phases are :func:`absld.train.method_loss`'s pieces in its modes
  (a test holds the two to the same loss);
- the step's **FLOPs** per image, counted once by ``torch.utils.flop_counter.FlopCounterMode``
  (matmuls and convolutions, forward and backward), and the rate achieved; the device's matmul
  peak from a square-matmul microbenchmark (CUDA: bf16 and TF32 at 8192^3; CPU: bf16 and fp32 at
  1024^3) and the share of it;
- every attack of the evaluation on the model in eval mode (student, and the teacher's
  architecture for the projection). FGSM, PGD and CW take the same time on any model; AutoAttack
  only keeps attacking the samples it has not broken yet, so on these untrained models (most
  samples misclassified from the start) it is far faster than on a trained one;
- the teacher's and the clean teacher's training steps (``teacher.method`` on
  ``teacher.model.arch``, plain CE on ``teacher_clean.model.arch``), for the projection.

From these rates :mod:`absld.bench_projection` projects the paper profile's table in device-hours.
CUDA steps are timed with CUDA events.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .params import AttackConfig, EvaluateConfig, Params, RuntimeConfig
from .data import DATASETS as DATASET_SPECS, Batch, TensorLoader
from .evaluate.cascade import build_attacks, start_noise
from .methods import METHODS, MethodBase, MethodContext, Natural, build_method
from .methods.base import StepOutput
from .models import build_model
from .runtime import AtPrecision, Runtime, setup
from .train.loop import method_loss

REFERENCE_METHODS = ("absld", "rslad", "sat")
"""The methods the reference loop stands for."""

PHASES = ("teacher", "attack", "loss", "backward", "optimizer")
"""The phases of the anatomy of a training step, in order."""


@dataclass(frozen=True)
class BenchSettings:
    """What is timed: models, batch size, how many steps."""

    student: str
    teacher: str
    batch_size: int
    warmup: int
    repeats: int
    """Timed steps of the anatomy, the attacks and the teachers' steps (median)."""
    pairs: int = 10
    """Interleaved rounds of the ratio (ours fast, ours fp32, reference): median of per-round ratios."""
    seed: int = 0
    projection: bool = True
    """Time the teachers' steps and attacks too, and project the paper's table."""
    reference_workers: int = 2
    """The reference loop's DataLoader worker processes (the official scripts': 2)."""


# ----------------------------------------------------------------------------------------------
# clocks
def _timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """Seconds taken by one call (CUDA: events around it, synchronised)."""

    def timed(fn: Callable[[], Any]) -> float:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000
        begin = time.perf_counter()
        fn()
        return time.perf_counter() - begin

    return timed


class PhaseClock:
    """Marks between the phases of one step: ``start()``, ``mark(phase)`` after each phase, then
    ``finish()`` -> seconds per phase. CUDA: an event recorded at each mark and one synchronisation
    in ``finish`` (the marks do not stall the queue); CPU: ``time.perf_counter``."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._marks: list[tuple[str, Any]] = []

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self._marks = [("", self._now())]

    def mark(self, phase: str) -> None:
        self._marks.append((phase, self._now()))

    def finish(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for (_, before), (phase, after) in zip(self._marks, self._marks[1:]):
            out[phase] = before.elapsed_time(after) / 1000 if self.cuda else after - before
        return out


class FlopClock:
    """The same marks, counting FLOPs (``torch.utils.flop_counter.FlopCounterMode``'s running
    total) instead of seconds: ``finish()`` -> FLOPs per phase. Use inside the counter's context."""

    def __init__(self, counter: Any) -> None:
        self.counter = counter
        self._marks: list[tuple[str, int]] = []

    def start(self) -> None:
        self._marks = [("", self.counter.get_total_flops())]

    def mark(self, phase: str) -> None:
        self._marks.append((phase, self.counter.get_total_flops()))

    def finish(self) -> dict[str, float]:
        return {phase: float(after - before) for (_, before), (phase, after) in zip(self._marks, self._marks[1:])}


def images_per_second(step: Callable[[], Any], batch_size: int, warmup: int, repeats: int,
                      device: torch.device) -> float:
    """``batch_size`` over the median time of ``repeats`` calls of ``step`` after ``warmup`` calls."""
    timed = _timer(device)
    for _ in range(warmup):
        timed(step)
    return batch_size / statistics.median(timed(step) for _ in range(repeats))


def interleaved_times(steps: dict[str, Callable[[], Any]], warmup: int, rounds: int,
                      device: torch.device) -> dict[str, list[float]]:
    """Each step of ``steps`` called in turn, ``warmup`` untimed rounds and then ``rounds`` timed
    ones, the order reversed every other round (A B C, C B A, A B C, ...: what a step leaves behind
    for the next one -- warm caches, a DataLoader's workers refilling their queue -- falls on each
    step alike, and a steady drift cancels within two rounds): per step, its seconds in each timed
    round."""
    timed = _timer(device)
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            timed(steps[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            times[name].append(timed(steps[name]))
    return times


def pair_ratios(ours: list[float], reference: list[float]) -> list[float]:
    """Per round, the reference's time over ours (> 1: ours is faster)."""
    return [r / o for o, r in zip(ours, reference, strict=True)]


def median_and_iqr(values: list[float]) -> tuple[float, list[float]]:
    """The median of ``values`` and their interquartile range [q1, q3] (inclusive quartiles:
    ``statistics.quantiles(..., method="inclusive")``; one value: [v, v])."""
    if len(values) == 1:
        return values[0], [values[0], values[0]]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), [q1, q3]


def random_data(params: Params, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random uint8 images of the dataset's shape (N, C, H, W) and labels covering every class."""
    spec = DATASET_SPECS[params.data.dataset]
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *spec.image_shape), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % spec.num_classes
    rng.shuffle(labels)
    return images, labels


def _model(params: Params, arch: str, rt: Runtime, seed: int) -> nn.Module:
    spec = DATASET_SPECS[params.data.dataset]
    torch.manual_seed(seed)
    return rt.to_device(build_model(arch, num_classes=spec.num_classes, in_channels=spec.image_shape[0]))


def _frozen(params: Params, arch: str, rt: Runtime, seed: int) -> nn.Module:
    """A frozen model of ``arch`` as distill holds a teacher: eval mode, no grad, every pass at the
    teacher's precision (:class:`absld.runtime.AtPrecision`, distill.teacher_amp)."""
    model = _model(params, arch, rt, seed).eval().requires_grad_(False)
    return AtPrecision(model, rt, bf16=params.distill.teacher_amp).eval()


def _optimizer(model: nn.Module, params: Params) -> torch.optim.Optimizer:
    cfg = params.distill.train
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov)


def _forever(loader: Any) -> Iterator[Any]:
    epoch = 0
    while True:
        epoch += 1
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader


# ----------------------------------------------------------------------------------------------
# our step
@dataclass
class OursStep:
    """One method's training step as :func:`absld.train.fit` runs it: the student, the method, the
    SGD optimiser and an endless batch stream of our loader. ``step()`` is the loop's step;
    ``anatomy_step(clock)`` the same work with a mark after each phase of :data:`PHASES`."""

    student: nn.Module
    method: MethodBase
    optimizer: torch.optim.Optimizer
    batches: Iterator[Batch]
    rt: Runtime

    def step(self) -> StepOutput:
        out = method_loss(self.student, self.method, self.method.logits_teacher, next(self.batches), self.rt)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        return out

    def anatomy_step(self, clock: PhaseClock | FlopClock, batch: Batch | None = None) -> StepOutput:
        """:meth:`step` with ``clock.mark`` between the phases. The pieces and modes are
        :func:`absld.train.method_loss`'s (teacher logits on the clean batch under no_grad, the
        student in the method's attack mode, ``rt.autocast()`` around the attack and the loss);
        ``tests/test_bench_anatomy.py`` holds the two to the same loss."""
        batch = next(self.batches) if batch is None else batch
        student, method, rt = self.student, self.method, self.rt
        teacher = method.logits_teacher
        clock.start()
        teacher_logits = None
        if teacher is not None and method.reads_teacher_logits:  # AdaAD with alpha 1 never reads them
            with torch.no_grad():
                teacher_logits = teacher(batch.x).float()  # (B, C)
        clock.mark("teacher")
        student.train(method.attack_mode == "train")
        with rt.autocast():
            x_adv = method.perturb(student, batch, teacher_logits)
        clock.mark("attack")
        student.train()
        with rt.autocast():
            out = method.loss(student, batch, x_adv, teacher_logits)
        clock.mark("loss")
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        clock.mark("backward")
        self.optimizer.step()
        clock.mark("optimizer")
        return out


def ours_step(params: Params, method_name: str, settings: BenchSettings, rt: Runtime, *, steps: int,
              arch: str | None = None, method: MethodBase | None = None) -> OursStep:
    """Our training step of ``method_name`` (a student method) on ``arch`` (default: the bench's
    student), over ``steps`` batches of random data before the loader starts another epoch;
    ``method``: an already built method instead (the teachers' recipes)."""
    spec = DATASET_SPECS[params.data.dataset]
    student = _model(params, arch or settings.student, rt, settings.seed)
    if method is None:
        cls = METHODS[method_name]
        teacher = _frozen(params, settings.teacher, rt, settings.seed + 1) if cls.uses_teacher else None
        clean_teacher = None
        if cls.uses_clean_teacher:  # B-MTARD: a random teacher_clean.model.arch as well
            clean_teacher = _frozen(params, params.teacher_clean.model.arch, rt, settings.seed + 2)
        method = build_method(method_name, params.distill.method_config(method_name), MethodContext(
            num_classes=spec.num_classes, attack=params.distill.attack, teacher=teacher,
            clean_teacher=clean_teacher, kl_reduction=params.distill.kl_reduction, student=student))
    images, labels = random_data(params, settings.batch_size * max(steps, 1), settings.seed)
    augment = params.data.augment
    loader = TensorLoader(images, labels, batch_size=settings.batch_size, device=rt.device, shuffle=True,
                          crop_padding=augment.crop_padding, flip=augment.flip, seed=settings.seed,
                          channels_last=rt.channels_last)
    return OursStep(student, method, _optimizer(student, params), _forever(loader), rt)


def ours_train_step(params: Params, method_name: str, settings: BenchSettings, rt: Runtime) -> float:
    """Images/s of our step of ``method_name`` alone (``warmup`` then ``repeats`` steps, not interleaved)."""
    ours = ours_step(params, method_name, settings, rt, steps=settings.warmup + settings.repeats)
    return images_per_second(ours.step, settings.batch_size, settings.warmup, settings.repeats, rt.device)


def anatomy(ours: OursStep, warmup: int, repeats: int) -> dict[str, dict[str, float]]:
    """Per phase of :data:`PHASES`: ``seconds`` (median over ``repeats`` steps after ``warmup``) and
    ``share`` (of the sum of the phases' medians)."""
    clock = PhaseClock(ours.rt.device)
    for _ in range(warmup):
        ours.anatomy_step(clock)
        clock.finish()
    rows: list[dict[str, float]] = []
    for _ in range(repeats):
        ours.anatomy_step(clock)
        rows.append(clock.finish())
    seconds = {phase: statistics.median(row[phase] for row in rows) for phase in PHASES}
    total = sum(seconds.values())
    return {phase: {"seconds": s, "share": s / total if total > 0 else 0.0} for phase, s in seconds.items()}


def step_flops(ours: OursStep) -> dict[str, float]:
    """FLOPs of one step per phase of :data:`PHASES` (``FlopCounterMode``: matmuls and convolutions,
    forward and backward; elementwise work is not counted), for the whole batch."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    # Its per-module breakdown (torch.utils.module_tracker) hangs gradient hooks on every module's
    # inputs, which torch refuses inside autograd.grad, the attacks' call ("A leaf node was passed
    # to _will_engine_execute_node ..."); the total alone needs no tracker: one global bucket.
    counter.mod_tracker = _GlobalOnly()
    with counter:
        clock = FlopClock(counter)
        ours.anatomy_step(clock)
        return clock.finish()


class _GlobalOnly:
    """A stand-in for FlopCounterMode's module tracker: every FLOP in the ``Global`` bucket."""

    parents = frozenset({"Global"})

    def __enter__(self) -> "_GlobalOnly":
        return self

    def __exit__(self, *args: Any) -> None:
        return None


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, iters: int = 5) -> float:
    """TFLOP/s of an ``n`` x ``n`` by ``n`` x ``n`` matmul in ``dtype`` (2 n^3 FLOPs), the median
    of ``iters`` calls after two. On CUDA, float32 runs as TF32 here
    (``torch.set_float32_matmul_precision("high")``, restored after)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    before = torch.get_float32_matmul_precision()
    if device.type == "cuda" and dtype == torch.float32:
        torch.set_float32_matmul_precision("high")
    try:
        timed = _timer(device)
        for _ in range(2):
            timed(lambda: torch.mm(a, b, out=c))
        seconds = statistics.median(timed(lambda: torch.mm(a, b, out=c)) for _ in range(iters))
    finally:
        torch.set_float32_matmul_precision(before)
    return 2 * n ** 3 / seconds / 1e12


def device_peaks(device: torch.device) -> dict[str, Any]:
    """The matmul peaks the achieved rates are compared with: ``fast`` (bf16) and ``fp32`` (CUDA:
    TF32), TFLOP/s, and how they were measured."""
    n = 8192 if device.type == "cuda" else 1024
    return {"fast_tflop_s": matmul_peak(device, torch.bfloat16, n),
            "fp32_tflop_s": matmul_peak(device, torch.float32, n),
            "how": f"square matmul {n}^3, bf16 (fast) and " + ("TF32" if device.type == "cuda" else "fp32")
                   + ", median of 5 after 2"}


# ----------------------------------------------------------------------------------------------
# the reference loop: the official scripts' structure
class _PilDataset(torch.utils.data.Dataset):
    """PIL images with torchvision's per-image transforms, as the official scripts load CIFAR."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, crop_padding: int, flip: bool) -> None:
        from PIL import Image
        from torchvision import transforms

        mode = "L" if images.shape[1] == 1 else "RGB"
        self.images = [Image.fromarray(image.squeeze(0) if mode == "L" else image.transpose(1, 2, 0), mode=mode)
                       for image in images]
        self.labels = labels.tolist()
        steps = [transforms.RandomCrop(images.shape[-1], padding=crop_padding)] if crop_padding else []
        steps += [transforms.RandomHorizontalFlip()] if flip else []
        self.transform = transforms.Compose([*steps, transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(self.images[index]), self.labels[index]


def _reference_attack_kl(student: nn.Module, x: Tensor, target: Tensor, eps: float, step: float, steps: int) -> Tensor:
    """RSLAD/ABSLD's inner maximisation as their scripts write it: start x + 0.001 N(0, I), sign steps
    on the summed KL to the teacher's soft labels, student in eval mode."""
    student.eval()
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    for _ in range(steps):
        x_adv.requires_grad_()
        loss = F.kl_div(F.log_softmax(student(x_adv), dim=1), target, reduction="sum")
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = x_adv.detach() + step * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    student.train()
    return x_adv.detach()


def _reference_attack_ce(model: nn.Module, x: Tensor, y: Tensor, eps: float, step: float, steps: int) -> Tensor:
    """Madry's PGD-AT attack as its script writes it: uniform start, sign steps on CE."""
    model.eval()
    x_adv = (x.detach() + torch.empty_like(x).uniform_(-eps, eps)).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_()
        loss = F.cross_entropy(model(x_adv), y)
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = x_adv.detach() + step * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    model.train()
    return x_adv.detach()


@dataclass
class ReferenceStep:
    """One step of the reference loop; its ``DataLoader`` iterator (and its worker processes)
    lives from the first ``step()`` to ``close()``."""

    step: Callable[[], None]
    batches: Iterator[Any]

    def close(self) -> None:
        self.batches.close()  # ends the generator, and with it the DataLoader's iterator and its workers


def reference_step(params: Params, method_name: str, settings: BenchSettings, device: torch.device, *,
                   steps: int) -> ReferenceStep:
    """The reference loop's step of ``method_name`` (fp32), over ``steps`` batches (one epoch of the
    ``DataLoader``, so that no worker start falls inside the timed steps)."""
    if method_name not in REFERENCE_METHODS:
        raise ValueError(f"the reference loop covers {', '.join(REFERENCE_METHODS)}, not {method_name!r}")
    rt = Runtime(device=device, amp=False, channels_last=False, progress=False)
    student = _model(params, settings.student, rt, settings.seed)
    teacher = _model(params, settings.teacher, rt, settings.seed + 1).eval().requires_grad_(False) \
        if method_name != "sat" else None
    optimizer = _optimizer(student, params)
    spec = DATASET_SPECS[params.data.dataset]
    images, labels = random_data(params, settings.batch_size * max(steps, 1), settings.seed)
    augment = params.data.augment
    loader = torch.utils.data.DataLoader(_PilDataset(images, labels, augment.crop_padding, augment.flip),
                                         batch_size=settings.batch_size, shuffle=True,
                                         num_workers=settings.reference_workers,
                                         drop_last=True)
    batches = _forever(loader)
    attack = params.distill.attack
    tau_adv = [1.0] * spec.num_classes  # ABSLD's temperatures: Python lists, indexed per sample
    tau_nat = [1.0] * spec.num_classes
    risk_adv = [0.0] * spec.num_classes
    risk_nat = [0.0] * spec.num_classes

    def step() -> None:
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        if method_name == "sat":
            x_adv = _reference_attack_ce(student, x, y, attack.eps, attack.step, attack.steps)
            loss = F.cross_entropy(student(x_adv), y)
        else:
            with torch.no_grad():
                logits = teacher(x)
            if method_name == "absld":
                scaled_adv = torch.stack([logits[i] / tau_adv[int(y[i])] for i in range(len(y))])
                scaled_nat = torch.stack([logits[i] / tau_nat[int(y[i])] for i in range(len(y))])
                p_adv, p_nat = F.softmax(scaled_adv, dim=1), F.softmax(scaled_nat, dim=1)
            else:
                p_adv = p_nat = F.softmax(logits, dim=1)
            x_adv = _reference_attack_kl(student, x, p_adv, attack.eps, attack.step, attack.steps)
            out_adv, out_nat = student(x_adv), student(x)
            kl_adv = F.kl_div(F.log_softmax(out_adv, dim=1), p_adv, reduction="sum") / len(y)
            kl_nat = F.kl_div(F.log_softmax(out_nat, dim=1), p_nat, reduction="sum") / len(y)
            loss = 5 / 6 * kl_adv + 1 / 6 * kl_nat
            if method_name == "absld":
                ce_adv = F.cross_entropy(out_adv, y, reduction="none")
                ce_nat = F.cross_entropy(out_nat, y, reduction="none")
                for i in range(len(y)):
                    risk_adv[int(y[i])] += ce_adv[i].item()
                    risk_nat[int(y[i])] += ce_nat[i].item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return ReferenceStep(step, batches)


def reference_train_step(params: Params, method_name: str, settings: BenchSettings, device: torch.device) -> float:
    """Images/s of the reference loop's step alone (``warmup`` then ``repeats`` steps, not interleaved)."""
    ref = reference_step(params, method_name, settings, device, steps=settings.warmup + settings.repeats)
    try:
        return images_per_second(ref.step, settings.batch_size, settings.warmup, settings.repeats, device)
    finally:
        ref.close()


# ----------------------------------------------------------------------------------------------
# one method: interleaved rounds, anatomy, FLOPs
def interleaved_row(params: Params, method_name: str, settings: BenchSettings, fast: Runtime,
                    fp32: Runtime) -> tuple[dict[str, Any], OursStep, OursStep]:
    """The timed part of ``method_name``'s row: images/s of ours (fast path and fp32) and of the
    reference loop (when there is one) from ``settings.pairs`` interleaved rounds after
    ``settings.warmup``, and the ratios (median of the per-round ratios) with their interquartile
    ranges; with the two steps of ours, for the anatomy and the FLOPs."""
    b, rounds = settings.batch_size, settings.warmup + settings.pairs
    ours_fast = ours_step(params, method_name, settings, fast, steps=rounds + settings.warmup + settings.repeats)
    ours_fp32 = ours_step(params, method_name, settings, fp32, steps=rounds)
    steps: dict[str, Callable[[], Any]] = {"ours": ours_fast.step, "ours_fp32": ours_fp32.step}
    ref = reference_step(params, method_name, settings, fp32.device, steps=rounds) \
        if method_name in REFERENCE_METHODS else None
    if ref is not None:
        steps["reference"] = ref.step
    try:
        times = interleaved_times(steps, settings.warmup, settings.pairs, fast.device)
    finally:
        if ref is not None:
            ref.close()
    row: dict[str, Any] = {"ours_img_s": b / statistics.median(times["ours"]),
                           "ours_fp32_img_s": b / statistics.median(times["ours_fp32"]),
                           "reference_img_s": None, "ratio": None, "ratio_iqr": None,
                           "ratio_fp32": None, "ratio_fp32_iqr": None, "pairs": settings.pairs}
    if ref is not None:
        row["reference_img_s"] = b / statistics.median(times["reference"])
        row["ratio"], row["ratio_iqr"] = median_and_iqr(pair_ratios(times["ours"], times["reference"]))
        row["ratio_fp32"], row["ratio_fp32_iqr"] = median_and_iqr(pair_ratios(times["ours_fp32"], times["reference"]))
    return row, ours_fast, ours_fp32


def train_row(params: Params, method_name: str, settings: BenchSettings, fast: Runtime, fp32: Runtime,
              peaks: dict[str, Any] | None = None) -> dict[str, Any]:
    """``results/bench.json``'s row of ``method_name``: :func:`interleaved_row`, the anatomy of the
    fast step, its FLOPs per image (per phase too) and the achieved rates (TFLOP/s; with ``peaks``,
    their shares of the device's matmul peaks)."""
    row, ours_fast, ours_fp32 = interleaved_row(params, method_name, settings, fast, fp32)
    b = settings.batch_size
    row["anatomy"] = anatomy(ours_fast, settings.warmup, settings.repeats)
    flops = step_flops(ours_fp32)  # the same FLOPs at either precision
    row["flops_per_image"] = sum(flops.values()) / b
    row["flops_per_image_phase"] = {phase: value / b for phase, value in flops.items()}
    row["achieved_tflop_s"] = row["flops_per_image"] * row["ours_img_s"] / 1e12
    row["achieved_fp32_tflop_s"] = row["flops_per_image"] * row["ours_fp32_img_s"] / 1e12
    if peaks is not None:
        row["share_of_peak"] = row["achieved_tflop_s"] / peaks["fast_tflop_s"]
        row["share_of_peak_fp32"] = row["achieved_fp32_tflop_s"] / peaks["fp32_tflop_s"]
    return row


def teacher_rows(params: Params, settings: BenchSettings, rt: Runtime) -> dict[str, dict[str, Any]]:
    """Images/s of our training step of the teacher (``teacher.method`` with ``teacher.attack`` on
    ``teacher.model.arch``) and of the clean teacher (plain CE on ``teacher_clean.model.arch``), the
    fast path, ``repeats`` steps after ``warmup``."""
    spec = DATASET_SPECS[params.data.dataset]
    steps = settings.warmup + settings.repeats
    cfg = params.teacher
    recipes = {
        "teacher": (cfg.model.arch, cfg.method, build_method(cfg.method, getattr(cfg, cfg.method), MethodContext(
            num_classes=spec.num_classes, attack=cfg.attack))),
        "teacher_clean": (params.teacher_clean.model.arch, "natural",
                          Natural(params.teacher_clean, MethodContext(num_classes=spec.num_classes, attack=AttackConfig()))),
    }
    out: dict[str, dict[str, Any]] = {}
    for role, (arch, method_name, method) in recipes.items():
        ours = ours_step(params, method_name, settings, rt, steps=steps, arch=arch, method=method)
        out[role] = {"arch": arch, "method": method_name,
                     "img_s": images_per_second(ours.step, settings.batch_size, settings.warmup, settings.repeats,
                                                rt.device)}
    return out


# ----------------------------------------------------------------------------------------------
# attacks
def attack_speeds(params: Params, evaluate: EvaluateConfig, settings: BenchSettings, rt: Runtime,
                  arch: str | None = None) -> dict[str, float]:
    """Images/s of each attack of ``evaluate.attacks`` on ``arch`` (default: the bench's student) in
    eval mode, with the evaluation's precision (fp32 unless evaluate.amp), one batch of
    ``settings.batch_size``, followed by the forward pass that scores it."""
    model = _model(params, arch or settings.student, rt, settings.seed)
    model.eval().requires_grad_(False)
    images, labels = random_data(params, settings.batch_size, settings.seed)
    x = torch.as_tensor(images, device=rt.device).float().div_(255)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.as_tensor(labels, device=rt.device)
    out: dict[str, float] = {}
    for spec in build_attacks(evaluate, rt.device):
        noise = None
        if spec.noise_kind is not None:
            noise = start_noise(spec.noise_kind, tuple(x.shape), seed=evaluate.seed, name=spec.name).to(rt.device)

        def run(spec=spec, noise=noise) -> None:
            with rt.autocast() if spec.autocast else contextlib.nullcontext():
                x_adv = spec.run(model, x, y, noise)
            with torch.no_grad():
                model(x_adv).argmax(dim=1)

        repeats = 1 if spec.name == "aa" else settings.repeats
        out[spec.name] = images_per_second(run, settings.batch_size, 0 if spec.name == "aa" else settings.warmup,
                                           repeats, rt.device)
    return out


def fast_runtime(cfg: RuntimeConfig) -> RuntimeConfig:
    """``cfg`` with the fast path on: bf16 autocast and channels_last (CUDA: amp; CPU: cpu_bf16)."""
    return cfg.model_copy(update={"amp": True, "channels_last": True, "cpu_bf16": True})


def fp32_runtime(cfg: RuntimeConfig) -> RuntimeConfig:
    return cfg.model_copy(update={"amp": False, "channels_last": False, "cpu_bf16": False})


def run_bench(params: Params, methods: list[str], settings: BenchSettings,
              on_result: Callable[[str, str, dict[str, Any]], None] = lambda *_: None,
              paper: Params | None = None) -> dict[str, Any]:
    """Every figure of ``absld bench`` (the ``results/bench.json`` layout, docs/speed.md);
    ``paper``: the paper profile's params, projected when ``settings.projection``."""
    fast, fp32 = setup(fast_runtime(params.runtime)), setup(fp32_runtime(params.runtime))
    peaks = device_peaks(fast.device)
    on_result("peaks", "", peaks)
    train: dict[str, dict[str, Any]] = {}
    for name in methods:
        train[name] = train_row(params, name, settings, fast, fp32, peaks)
        on_result("train_step", name, train[name])
    attacks = attack_speeds(params, params.evaluate, settings, fp32)
    for name, value in attacks.items():
        on_result("attacks", name, {"img_s": value})
    device = _device_name(fast.device)
    result: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "settings": {"student": settings.student, "teacher": settings.teacher, "batch_size": settings.batch_size,
                     "warmup": settings.warmup, "repeats": settings.repeats, "pairs": settings.pairs,
                     "reference_workers": settings.reference_workers,
                     "dataset": params.data.dataset, "attack_steps": params.distill.attack.steps,
                     "fast_path": "bf16 autocast + channels_last" + (" (runtime.cpu_bf16)" if fast.device.type == "cpu"
                                                                     else " (runtime.amp)")},
        "peaks": peaks,
        "train_step": train,
        "attacks": {name: {"img_s": value} for name, value in attacks.items()},
    }
    if settings.projection:
        if paper is None:
            raise ValueError("the projection needs the paper profile's params (paper=)")
        result.update(projection_measurements(params, paper, settings, fast, fp32))
        result["projection"] = projection(params, paper, result, settings, fast.device)
        on_result("projection", "", result["projection"])
    return result


def _projected_runtime(paper: Params, device: torch.device) -> str:
    """Which of our steps the paper profile would run on ``device``: ``fast`` (runtime.amp on CUDA,
    runtime.cpu_bf16 on the CPU) or ``fp32``."""
    on = paper.runtime.amp if device.type == "cuda" else paper.runtime.cpu_bf16
    return "fast" if on else "fp32"


def projection_measurements(params: Params, paper: Params, settings: BenchSettings, fast: Runtime,
                            fp32: Runtime) -> dict[str, Any]:
    """What the projection needs beyond the methods' rows: the teachers' training steps (at the
    paper's precision on this device) and the paper's evaluation attacks on the bench's student and
    on the teacher's architecture."""
    rt = fast if _projected_runtime(paper, fast.device) == "fast" else fp32
    return {"teachers": teacher_rows(params, settings, rt),
            "projection_attacks": {name: {"img_s": v} for name, v in
                                   attack_speeds(params, paper.evaluate, settings, fp32).items()},
            "teacher_attacks": {name: {"img_s": v} for name, v in
                                attack_speeds(params, paper.evaluate, settings, fp32,
                                              arch=params.teacher.model.arch).items()}}


def projection(params: Params, paper: Params, result: dict[str, Any], settings: BenchSettings,
               device: torch.device) -> dict[str, Any]:
    """The paper profile's table in device-hours at the rates of ``result`` (:mod:`absld.bench_projection`)."""
    from .bench_projection import measured_rates, paper_workload, project

    precision = _projected_runtime(paper, device)
    models = (settings.student, settings.teacher, params.teacher.model.arch, params.teacher_clean.model.arch)
    return project(paper_workload(paper), measured_rates(result, "ours_img_s" if precision == "fast" else "ours_fp32_img_s"),
                   assumptions={
        "device": result["device"], "batch_size": settings.batch_size, "precision": precision,
        "models": {"student": settings.student, "distill_teacher": settings.teacher,
                   "teacher": params.teacher.model.arch, "teacher_clean": params.teacher_clean.model.arch},
        "models_match_paper": models == (paper.distill.student.arch, paper.teacher.model.arch,
                                         paper.teacher.model.arch, paper.teacher_clean.model.arch),
        "measured_on": {"profile": params.profile, "dataset": params.data.dataset,
                        "distill_attack_steps": params.distill.attack.steps,
                        "teacher_attack_steps": params.teacher.attack.steps},
        "paper": {"dataset": paper.data.dataset, "distill_attack_steps": paper.distill.attack.steps,
                  "teacher_attack_steps": paper.teacher.attack.steps},
        "attacks": "the paper's evaluate section, timed on the measured models"})


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"cpu: {model}"


def result_lines(kind: str, name: str, row: dict[str, Any]) -> list[str]:
    """What ``absld bench`` prints of one result of :func:`run_bench` (its ``on_result`` calls)."""
    from .bench_projection import format_table

    if kind == "peaks":
        return [f"  matmul peak: fast {row['fast_tflop_s']:.3f} TFLOP/s, fp32 {row['fp32_tflop_s']:.3f} ({row['how']})"]
    if kind == "attacks":
        return [f"  attack {name:<7} {row['img_s']:9.1f} img/s"]
    if kind == "projection":
        return ["  projection of the paper profile's table (device-hours on this device):", *format_table(row)]
    line = f"  train  {name:<16} ours {row['ours_img_s']:8.1f} img/s  fp32 {row['ours_fp32_img_s']:8.1f}"
    if name in REFERENCE_METHODS:
        (lo, hi), (lo32, hi32) = row["ratio_iqr"], row["ratio_fp32_iqr"]
        line += (f"  reference {row['reference_img_s']:8.1f}  ratio {row['ratio']:.2f} [IQR {lo:.2f}-{hi:.2f}] "
                 f"(fp32 {row['ratio_fp32']:.2f} [{lo32:.2f}-{hi32:.2f}])")
    shares = "  ".join(f"{p} {row['anatomy'][p]['share']:.0%}" for p in PHASES)
    rate = row["achieved_tflop_s"]
    return [line, f"         anatomy: {shares}; {row['flops_per_image'] / 1e9:.3f} GFLOP/img, {rate * 1e3:.1f} GFLOP/s"
                  + (f" ({row['share_of_peak']:.0%} of peak)" if "share_of_peak" in row else "")]
