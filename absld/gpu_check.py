"""``absld gpu-check``: what one CUDA GPU gives the pipeline, measured in one run of at most 8 minutes.

Six parts, each with its own time budget (:data:`BUDGETS_S`), run one after the other; each writes
its figures into one JSON (``results/gpu_check.json``) and one line of the printed table:

1. ``matmul``: the device's matmul ceilings, square ``n x n`` matmuls (n = 8192) in bf16, in fp32
   with TF32 allowed and in fp32 with TF32 off, timed with CUDA events (TFLOP/s = 2 n^3 / time).
2. ``bench``: :func:`absld.bench.run_bench` for every method of the profile (ResNet-18 student,
   WRN-34-10 teacher, batch 128): ours against the reference loop. Its result is copied as is.
3. ``busy``: the GPU-busy fraction of one ABSLD training step: the union of the CUDA kernels'
   (and copies') intervals that torch.profiler records over a few steps, divided by those steps'
   wall time measured with CUDA events without the profiler; plus the step's phases timed with
   CUDA events (teacher, attack, loss, backward, optimizer, the rest).
4. ``graph``: PGD-10 (:func:`absld.attacks.pgd`) on a ResNet-18 in eval mode captured in a CUDA
   graph against eager, on static input buffers with the same start noise: both timed, ``x_adv``
   compared bit for bit (and eager against eager, the control). A failed capture is reported with
   its error.
5. ``sharing``: 1, 2 and 4 processes training RSLAD students on the one GPU at the same time (each
   a subprocess of this module's worker entry point, started together after their warm-up):
   aggregate images/s for each count.
6. ``precision``: a ResNet-18 adversarially trained for a few epochs on the ``synthetic`` dataset
   (generated, no download), then PGD-20 and CW-inf (the evaluation's attacks) at several radii
   under bf16 autocast against fp32, and the soft labels ``softmax(logits / tau_min)`` of it and of
   a briefly trained WRN-34-10 in bf16 against fp32 (KL, largest absolute difference).

A part's budget is enforced: a SIGALRM timer raises :class:`PartCut` in the part (and every part
checks its budget between units of work), so a part that would overrun stops with what it has
measured and ``status: cut``; the run goes on with the next part. A part that fails records
``status: error`` with the error. ``cpu_smoke`` runs every part at toy scale on the CPU (the
CUDA-only parts 1, 3, 4 are ``skipped``) so that the code paths are tested without a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

PARTS = ("matmul", "bench", "busy", "graph", "sharing", "precision")
"""The parts of the check, in the order they run."""

CUDA_ONLY = ("matmul", "busy", "graph")
"""Parts that measure CUDA itself: skipped on the CPU."""

BUDGETS_S = {"matmul": 30.0, "bench": 210.0, "busy": 30.0, "graph": 30.0, "sharing": 75.0, "precision": 90.0}
"""Seconds each part may take (465 in all; the imports and model builds around them stay under 15)."""

TOTAL_BUDGET_S = 470.0
"""The whole check's budget: a part never gets more than what is left of it (8 minutes = 480 s)."""

HOW = {
    "matmul": "torch.mm of two n x n matrices, 3 warm-up calls, then 5 timings of 10 calls between CUDA events; "
              "TFLOP/s = 2 n^3 / median time per call (max: from the fastest timing)",
    "bench": "absld.bench.run_bench(params, methods, settings, on_result), result copied as is; 'rows' are its "
             "on_result reports in order (kept when the part is cut)",
    "busy": "GPU busy = union of the intervals of the CUDA kernels, copies and memsets torch.profiler records over "
            "the steps / the wall time of the same number of steps timed with CUDA events without the profiler; "
            "phases: CUDA events at the phase boundaries of each step (stream order), median over the steps",
    "graph": "absld.attacks.pgd (CE, uniform start, noise= a fixed draw) on static buffers; torch.cuda.CUDAGraph "
             "captured after 3 warm-up calls on a side stream; replay vs eager timed with CUDA events (median); "
             "x_adv compared with torch.equal",
    "sharing": "N worker processes (python -m absld.gpu_check --worker) each build, warm up, then wait for a common "
               "start; each times its steps (synchronised); aggregate = all images / (last end - first start)",
    "precision": "quick PGD-AT on the synthetic dataset; PGD-20 and CW-inf (absld.evaluate.cascade.build_attacks) "
                 "with the same per-sample start noise, attack and verdict under bf16 autocast vs fp32; soft labels "
                 "softmax(logits / tau) on the clean test images, fp32 vs bf16 autocast",
}
"""How each part measures (written into the JSON)."""


@dataclass(frozen=True)
class Scale:
    """The sizes of a run: the GPU check's, or the CPU smoke run's toy ones."""

    student: str
    teacher: str
    batch_size: int
    bench_warmup: int
    bench_repeats: int
    bench_methods: tuple[str, ...] | None  # None: every method of the profile's distill.methods
    attack_steps: int | None  # None: the profile's distill.attack.steps
    matmul_size: int
    busy_warmup: int
    busy_steps: int
    graph_batch: int
    graph_timings: int
    share_counts: tuple[int, ...]
    share_warmup: int
    share_steps: int
    precision_train_per_class: int
    precision_test_per_class: int
    precision_epochs: int
    precision_attack_steps: int
    precision_eps: tuple[float, ...]
    precision_batch: int


GPU_SCALE = Scale(student="resnet18", teacher="wrn34_10", batch_size=128, bench_warmup=2, bench_repeats=5, bench_methods=None,
                  attack_steps=None, matmul_size=8192, busy_warmup=3, busy_steps=5, graph_batch=128,
                  graph_timings=10, share_counts=(1, 2, 4), share_warmup=5, share_steps=30,
                  precision_train_per_class=500, precision_test_per_class=100, precision_epochs=4,
                  precision_attack_steps=3, precision_eps=(8 / 255, 16 / 255), precision_batch=250)

CPU_SMOKE_SCALE = Scale(student="tiny_cnn", teacher="tiny_cnn", batch_size=8, bench_warmup=0, bench_repeats=1,
                        bench_methods=("absld", "trades"),
                        attack_steps=2, matmul_size=64, busy_warmup=1, busy_steps=1, graph_batch=4,
                        graph_timings=1, share_counts=(1, 2), share_warmup=1, share_steps=2,
                        precision_train_per_class=8, precision_test_per_class=4, precision_epochs=1,
                        precision_attack_steps=1, precision_eps=(8 / 255,), precision_batch=20)


class GpuCheckError(UserError, RuntimeError):
    """The GPU check cannot run as asked."""


class PartCut(BaseException):
    """A part's time budget ran out (a BaseException: no ``except Exception`` in a library swallows it)."""


# ----------------------------------------------------------------------------------------------
# budgets
class Budget:
    """A part's deadline: :meth:`check` raises :class:`PartCut` once it has passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    def check(self) -> None:
        if self.left() <= 0:
            raise PartCut(f"budget of {self.seconds:g} s reached")


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise :class:`PartCut` in the main thread after ``seconds`` (SIGALRM; Python runs the handler
    between bytecodes, so a long C call such as a synchronise finishes first). Elsewhere than the
    main thread of a Unix process it does nothing: the parts' own :meth:`Budget.check` calls remain."""
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise PartCut(f"budget of {seconds:g} s reached")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def parse_budgets(items: Sequence[str]) -> dict[str, float]:
    """``PART=SECONDS`` items (``all=SECONDS`` for every part) over :data:`BUDGETS_S`."""
    budgets = dict(BUDGETS_S)
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or (name not in PARTS and name != "all"):
            raise GpuCheckError(f"--budget {item!r} must be PART=SECONDS with PART one of {', '.join(PARTS)} or all")
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds >= 0):
            raise GpuCheckError(f"--budget {item!r}: SECONDS must be a number >= 0, got {value!r}")
        budgets.update(dict.fromkeys(PARTS if name == "all" else (name,), seconds))
    return budgets


# ----------------------------------------------------------------------------------------------
# the run
@dataclass
class Context:
    """What every part reads."""

    params: Any  # absld.params.Params, with the scale's overrides
    scale: Scale
    device: torch.device
    profile: str
    cpu_smoke: bool

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def check_params(profile: str, cpu_smoke: bool) -> Any:
    """The profile's params as the check uses them (the CPU smoke run: tiny models everywhere, the
    training attack's steps cut, the clean teacher tiny, the device the CPU)."""
    from .params import load_profile

    params = load_profile(profile)
    scale = CPU_SMOKE_SCALE if cpu_smoke else GPU_SCALE
    distill = params.distill
    if scale.attack_steps is not None:
        distill = distill.model_copy(update={"attack": distill.attack.model_copy(update={"steps": scale.attack_steps})})
    update: dict[str, Any] = {"distill": distill}
    if cpu_smoke:
        clean = params.teacher_clean
        update["teacher_clean"] = clean.model_copy(update={"model": clean.model.model_copy(update={"arch": scale.teacher})})
        update["runtime"] = params.runtime.model_copy(update={"device": "cpu"})
    return params.model_copy(update=update)


def run_gpu_check(*, parts: Sequence[str] = PARTS, budgets: Sequence[str] = (), cpu_smoke: bool = False,
                  profile: str = "paper", output: Path | None = None,
                  echo: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Run the chosen parts (in :data:`PARTS` order) and return the report; with ``output``, the
    report is written there (atomically) after every part, so a killed run keeps the finished ones."""
    from .io import write_json

    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise GpuCheckError(f"unknown part(s) {', '.join(map(repr, unknown))}; choose from {', '.join(PARTS)}")
    if not cpu_smoke and not torch.cuda.is_available():
        raise GpuCheckError("absld gpu-check needs a CUDA GPU and none is available (torch.cuda.is_available() is "
                            "False); run it on a machine with one, or pass --cpu-smoke for the toy run on the CPU")
    seconds = parse_budgets(budgets)
    started = time.monotonic()
    scale = CPU_SMOKE_SCALE if cpu_smoke else GPU_SCALE
    ctx = Context(check_params(profile, cpu_smoke), scale, torch.device("cpu" if cpu_smoke else "cuda"), profile,
                  cpu_smoke)
    report: dict[str, Any] = {
        "device": _device_name(ctx.device), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cpu_smoke": cpu_smoke, "profile": profile, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "scale": dataclasses.asdict(scale), "budgets_s": {p: seconds[p] for p in parts},
        "total_budget_s": TOTAL_BUDGET_S, "parts": {}, "total_s": None,
    }
    chosen = [p for p in PARTS if p in parts]
    threads = torch.get_num_threads()
    if cpu_smoke:  # toy models: one thread is fastest, and on a busy machine many times so (no spinning)
        torch.set_num_threads(1)
    try:
        for index, name in enumerate(chosen, 1):
            left = TOTAL_BUDGET_S - (time.monotonic() - started)
            entry = run_part(name, ctx, max(0.0, min(seconds[name], left)))
            report["parts"][name] = entry
            report["total_s"] = round(time.monotonic() - started, 2)
            echo(f"[{index}/{len(chosen)}] {name}: {entry['status']}"
                 + (f" ({entry['reason']})" if entry.get("reason") else "") + f", {entry['seconds']:.1f} s")
            if output is not None:
                write_json(output, _jsonable(report))
    finally:
        torch.set_num_threads(threads)
    return _jsonable(report)


def run_part(name: str, ctx: Context, budget_s: float) -> dict[str, Any]:
    """One part under its budget: ``status`` ok | cut | error | skipped, ``seconds``, ``result``."""
    entry: dict[str, Any] = {"status": "ok", "budget_s": round(budget_s, 3), "seconds": 0.0, "how": HOW[name],
                             "result": {}}
    if name in CUDA_ONLY and not ctx.cuda:
        entry.update(status="skipped", reason="needs CUDA")
        return entry
    if ctx.cuda:
        _cuda_quietly(torch.cuda.reset_peak_memory_stats)
    start = time.monotonic()
    try:
        budget = Budget(budget_s)
        budget.check()
        with alarm(budget_s):
            PART_FUNCTIONS[name](ctx, entry["result"], budget)
    except PartCut as cut:
        entry.update(status="cut", reason=f"{cut} after {time.monotonic() - start:.1f} s; the result holds what "
                                          "was measured before")
    except Exception as exc:  # a failing part is reported, and the next one runs
        entry.update(status="error", reason=f"{type(exc).__name__}: {exc}",
                     traceback=traceback.format_exc(limit=8).splitlines()[-12:])
    finally:
        entry["seconds"] = round(time.monotonic() - start, 2)
        gc.collect()
        if ctx.cuda:
            _cuda_quietly(torch.cuda.synchronize)
            entry["peak_memory_gib"] = _cuda_quietly(lambda: round(torch.cuda.max_memory_allocated() / 2**30, 2))
            _cuda_quietly(torch.cuda.empty_cache)
    return entry


def _cuda_quietly(fn: Callable[[], Any]) -> Any:
    """``fn()``, or None if CUDA raises (e.g. after a failed graph capture): cleaning up between parts
    must never end the run."""
    try:
        return fn()
    except Exception:  # noqa: BLE001 - the part's own error is already recorded
        return None


# ----------------------------------------------------------------------------------------------
# 1. matmul ceilings
def part_matmul(ctx: Context, sink: dict[str, Any], budget: Budget) -> None:
    n = ctx.scale.matmul_size
    flop = 2 * n**3
    sink["size"] = n
    sink["bf16_reduced_precision_reduction"] = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    previous = torch.backends.cuda.matmul.allow_tf32
    modes = (("bf16", torch.bfloat16, previous), ("tf32", torch.float32, True), ("fp32", torch.float32, False))
    try:
        for name, dtype, tf32 in modes:
            budget.check()
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, device=ctx.device, dtype=dtype)
            b = torch.randn(n, n, device=ctx.device, dtype=dtype)
            out = torch.empty(n, n, device=ctx.device, dtype=dtype)
            for _ in range(3):
                torch.mm(a, b, out=out)
            per_call = []
            for _ in range(5):
                per_call.append(_cuda_seconds(functools.partial(_matmuls, a, b, out, 10)) / 10)
                budget.check()
            sink[name] = {"tflops": flop / statistics.median(per_call) / 1e12, "tflops_max": flop / min(per_call) / 1e12,
                          "ms_per_matmul": statistics.median(per_call) * 1e3}
            del a, b, out
            torch.cuda.empty_cache()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _matmuls(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, count: int) -> None:
    for _ in range(count):
        torch.mm(a, b, out=out)


def _cuda_seconds(fn: Callable[[], Any]) -> float:
    """Seconds of the GPU work ``fn`` queues, between two CUDA events (synchronised before reading)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000


def _seconds(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        return _cuda_seconds(fn)
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


# ----------------------------------------------------------------------------------------------
# 2. the training-step bench
def part_bench(ctx: Context, sink: dict[str, Any], budget: Budget) -> None:
    from . import bench

    params = ctx.params
    evaluate = params.evaluate.model_copy(update={"attacks": [a for a in params.evaluate.attacks if a != "aa"]})
    params = params.model_copy(update={"evaluate": evaluate})  # AutoAttack on untrained models says nothing
    reference = getattr(bench, "REFERENCE_METHODS", ())
    methods = list(ctx.scale.bench_methods or params.distill.methods)
    methods.sort(key=lambda m: m not in reference)  # the compared ones first: they survive a cut
    fields = {f.name for f in dataclasses.fields(bench.BenchSettings)}
    wanted = {"student": ctx.scale.student, "teacher": ctx.scale.teacher, "batch_size": ctx.scale.batch_size,
              "warmup": ctx.scale.bench_warmup, "repeats": ctx.scale.bench_repeats,
              "projection": False}  # the projection is its own tool (scripts/project_paper_gpu.py, absld bench)
    settings = bench.BenchSettings(**{k: v for k, v in wanted.items() if k in fields})
    sink["methods"] = methods
    sink["settings"] = dataclasses.asdict(settings)
    rows = sink.setdefault("rows", [])

    def on_result(kind: str, name: str, row: dict[str, Any]) -> None:
        rows.append({"kind": kind, "name": name, "row": _jsonable(row)})
        budget.check()

    sink["bench"] = _jsonable(bench.run_bench(params, methods, settings, on_result))


# ----------------------------------------------------------------------------------------------
# a training step as the loop runs it (parts 3 and 5)
def training_step(params: Any, method_name: str, student_arch: str, teacher_arch: str, batch_size: int,
                  rt: Any, seed: int = 0, marks: Callable[[str], None] | None = None) -> Callable[[], None]:
    """One training step of ``method_name`` as :func:`absld.train.fit` runs it (loader batch,
    :func:`absld.train.loop.method_loss`, backward, SGD step) on random images, untrained models.
    ``marks(phase)`` is called at each phase's end (teacher, attack, loss, backward, optimizer)."""
    import numpy as np

    from .data import DATASETS, TensorLoader
    from .methods import METHODS, MethodContext, build_method
    from .models import build_model
    from .train.loop import method_loss

    spec = DATASETS[params.data.dataset]
    torch.manual_seed(seed)

    def model(arch: str) -> torch.nn.Module:
        return rt.to_device(build_model(arch, num_classes=spec.num_classes, in_channels=spec.image_shape[0]))

    entry = METHODS[method_name]
    student = model(student_arch)
    teacher = model(teacher_arch).eval().requires_grad_(False) if entry.uses_teacher else None
    clean_teacher = None
    if entry.uses_clean_teacher:
        clean_teacher = model(params.teacher_clean.model.arch).eval().requires_grad_(False)
    method = build_method(method_name, params.distill.method_config(method_name), MethodContext(
        num_classes=spec.num_classes, attack=params.distill.attack, teacher=teacher, clean_teacher=clean_teacher,
        kl_reduction=params.distill.kl_reduction))
    cfg = params.distill.train
    optimizer = torch.optim.SGD(student.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    rng = np.random.default_rng(seed)
    n = batch_size * 8
    images = rng.integers(0, 256, (n, *spec.image_shape), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % spec.num_classes
    augment = params.data.augment
    loader = TensorLoader(images, labels, batch_size=batch_size, device=rt.device, shuffle=True,
                          crop_padding=augment.crop_padding, flip=augment.flip, seed=seed,
                          channels_last=rt.channels_last)
    mark = marks or (lambda phase: None)
    teacher_net = method.logits_teacher

    class TimedTeacher(torch.nn.Module):  # a module, as the loop tells a teacher from a logit table
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = teacher_net(x)
            mark("teacher")
            return out

    timed_teacher = TimedTeacher()

    perturb = method.perturb

    def timed_perturb(*args: Any, **kwargs: Any) -> torch.Tensor:
        out = perturb(*args, **kwargs)
        mark("attack")
        return out

    if marks is not None:
        method.perturb = timed_perturb  # an instance attribute: the class and every other run stay as they are

    def batches() -> Iterator[Any]:
        epoch = 0
        while True:
            epoch += 1
            loader.set_epoch(epoch)
            yield from loader

    stream = batches()

    def step() -> None:
        batch = next(stream)
        mark("data")
        out = method_loss(student, method, timed_teacher if teacher_net is not None else None, batch, rt)
        mark("loss")
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        mark("backward")
        optimizer.step()
        mark("optimizer")

    return step


# ----------------------------------------------------------------------------------------------
# 3. GPU-busy fraction of one ABSLD step
def part_busy(ctx: Context, sink: dict[str, Any], budget: Budget) -> None:
    from torch.profiler import ProfilerActivity, profile

    from .runtime import setup

    rt = setup(ctx.params.runtime)
    events: list[tuple[str, torch.cuda.Event]] = []
    recording = {"on": False}

    def mark(phase: str) -> None:
        if recording["on"]:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            events.append((phase, event))

    s = ctx.scale
    step = training_step(ctx.params, "absld", s.student, s.teacher, s.batch_size, rt, marks=mark)
    sink["settings"] = {"method": "absld", "student": s.student, "teacher": s.teacher, "batch_size": s.batch_size,
                        "amp": rt.amp, "channels_last": rt.channels_last, "steps": s.busy_steps}
    for _ in range(s.busy_warmup):
        step()
    torch.cuda.synchronize()
    budget.check()
    wall = _cuda_seconds(lambda: [step() for _ in range(s.busy_steps)])
    sink["wall_s_per_step"] = wall / s.busy_steps
    sink["img_s"] = s.batch_size * s.busy_steps / wall
    budget.check()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        wall_profiled = _cuda_seconds(lambda: [step() for _ in range(s.busy_steps)])
    torch.cuda.synchronize()
    budget.check()
    kernels = _device_intervals(prof)
    busy = _union_length(kernels)
    sink.update(wall_s_per_step_profiled=wall_profiled / s.busy_steps, kernel_sum_s=sum(e - b for b, e, _ in kernels) / 1e6,
                kernel_union_s=busy / 1e6, busy_fraction=busy / 1e6 / wall,
                busy_fraction_of_profiled_wall=busy / 1e6 / wall_profiled, n_kernels=len(kernels),
                top_kernels=_top_kernels(kernels, 10))
    # the phases: one more round with CUDA events at each phase boundary, no profiler
    recording["on"] = True
    for _ in range(s.busy_steps):
        begin = torch.cuda.Event(enable_timing=True)
        begin.record()
        events.append(("start", begin))
        step()
    torch.cuda.synchronize()
    sink["phases_ms"] = _phases(events)


def _device_intervals(prof: Any) -> list[tuple[float, float, str]]:
    """(start_us, end_us, name) of every device-side event (kernels, memcpy, memset) in the profile;
    not the ``gpu_user_annotation`` ranges that record_function (e.g. the optimiser's) projects onto the
    device timeline: they span gaps between kernels."""
    from torch.autograd import DeviceType

    out = []
    for event in prof.events():
        if getattr(event, "device_type", None) != DeviceType.CUDA or getattr(event, "is_user_annotation", False):
            continue
        if "annotation" in str(getattr(event, "activity_type", None) or ""):
            continue
        out.append((float(event.time_range.start), float(event.time_range.end), str(event.name)))
    return out


def _union_length(intervals: Sequence[tuple[float, float, str]]) -> float:
    """Length of the union of the intervals (overlapping kernels on several streams count once)."""
    total, reach = 0.0, -math.inf
    for begin, end, _ in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(begin, reach)
        reach = end
    return total


def _top_kernels(intervals: Sequence[tuple[float, float, str]], k: int) -> list[dict[str, Any]]:
    by_name: dict[str, list[float]] = {}
    for begin, end, name in intervals:
        by_name.setdefault(name, []).append(end - begin)
    total = sum(sum(v) for v in by_name.values()) or 1.0
    ranked = sorted(by_name.items(), key=lambda item: -sum(item[1]))[:k]
    return [{"name": name[:120], "ms": sum(v) / 1e3, "calls": len(v), "share": sum(v) / total} for name, v in ranked]


def _phases(events: Sequence[tuple[str, Any]]) -> dict[str, float]:
    """Median ms per phase over the steps: each phase from the previous mark to its own (``data`` and
    whatever is not a named phase add up in ``rest``)."""
    per_step: list[dict[str, float]] = []
    previous = None
    for phase, event in events:
        if phase == "start":
            per_step.append({})
        elif previous is not None and per_step:
            key = phase if phase in ("teacher", "attack", "loss", "backward", "optimizer") else "rest"
            per_step[-1][key] = per_step[-1].get(key, 0.0) + previous.elapsed_time(event)
        previous = event
    names = sorted({k for row in per_step for k in row})
    return {name: statistics.median(row.get(name, 0.0) for row in per_step) for name in names}


# ----------------------------------------------------------------------------------------------
# 4. the attack in a CUDA graph
def part_graph(ctx: Context, sink: dict[str, Any], budget: Budget) -> None:
    from .attacks import ce_loss, pgd
    from .data import DATASETS
    from .models import build_model
    from .runtime import setup

    setup(ctx.params.runtime)  # the runtime's cuDNN/TF32 settings, as the evaluation runs
    spec = DATASETS[ctx.params.data.dataset]
    attack_cfg = ctx.params.distill.attack
    torch.manual_seed(0)
    model = build_model(ctx.scale.student, num_classes=spec.num_classes, in_channels=spec.image_shape[0])
    model = model.to(ctx.device).eval().requires_grad_(False)
    shape = (ctx.scale.graph_batch, *spec.image_shape)
    generator = torch.Generator().manual_seed(0)
    static_x = torch.rand(shape, generator=generator).to(ctx.device)
    static_y = (torch.arange(shape[0]) % spec.num_classes).to(ctx.device)
    static_noise = (torch.rand(shape, generator=generator) * 2 - 1).to(ctx.device)
    steps = attack_cfg.steps
    sink["settings"] = {"model": ctx.scale.student, "batch_size": shape[0], "steps": steps, "eps": attack_cfg.eps,
                        "step": attack_cfg.step, "precision": "float32 (TF32 convolutions as the runtime sets)"}

    def attack() -> torch.Tensor:
        return pgd(model, static_x, ce_loss(static_y), eps=attack_cfg.eps, step=attack_cfg.step, steps=steps,
                   start="uniform", noise=static_noise)

    for _ in range(2):
        attack()
    torch.cuda.synchronize()
    eager = attack()
    eager_again = attack()
    torch.cuda.synchronize()
    sink["eager_repeat_bitwise_equal"] = bool(torch.equal(eager, eager_again))
    eager_times = []
    for _ in range(ctx.scale.graph_timings):
        eager_times.append(_cuda_seconds(attack))
        budget.check()
    sink["eager_ms"] = statistics.median(eager_times) * 1e3
    graph = torch.cuda.CUDAGraph()
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs' docs require
            for _ in range(3):
                attack()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            static_out = attack()
        graph.replay()
        torch.cuda.synchronize()
    except Exception as exc:  # e.g. a host sync inside the attack: capture refuses it
        sink.update(captured=False, error=f"{type(exc).__name__}: {exc}")
        _cuda_quietly(torch.cuda.synchronize)
        return
    sink["captured"] = True
    sink["bitwise_equal"] = bool(torch.equal(static_out, eager))
    sink["max_abs_diff"] = float((static_out - eager).abs().max())
    sink["n_different"] = int((static_out != eager).sum())
    graph_times = []
    for _ in range(ctx.scale.graph_timings):
        graph_times.append(_cuda_seconds(graph.replay))
        budget.check()
    sink["graph_ms"] = statistics.median(graph_times) * 1e3
    sink["speedup"] = sink["eager_ms"] / sink["graph_ms"]
    # new data in the same buffers: the replay must follow it
    static_x.copy_(torch.rand(shape, generator=generator).to(ctx.device))
    graph.replay()
    torch.cuda.synchronize()
    sink["bitwise_equal_new_input"] = bool(torch.equal(static_out, attack()))
    del graph, static_out


# ----------------------------------------------------------------------------------------------
# 5. students sharing one GPU
WORKER_TAG = "GPUCHECK "
"""The prefix of the worker's protocol lines on its stdout (anything else there is ignored)."""


def part_sharing(ctx: Context, sink: dict[str, Any], budget: Budget) -> None:
    s = ctx.scale
    sink["settings"] = {"method": "rslad", "student": s.student, "teacher": s.teacher, "batch_size": s.batch_size,
                        "warmup": s.share_warmup, "steps": s.share_steps}
    runs = sink.setdefault("runs", {})
    config = {"profile": ctx.profile, "cpu_smoke": ctx.cpu_smoke, "method": "rslad", "student": s.student,
              "teacher": s.teacher, "batch_size": s.batch_size, "warmup": s.share_warmup, "steps": s.share_steps}
    for count in s.share_counts:
        budget.check()
        rows = _run_workers(config, count)
        span = max(r["end"] for r in rows) - min(r["start"] for r in rows)
        images = sum(r["images"] for r in rows)
        runs[str(count)] = {"aggregate_img_s": images / span, "images": images,
                            "per_process_img_s": [r["images"] / r["seconds"] for r in rows], "span_s": span}
    if "1" in runs:
        alone = runs["1"]["aggregate_img_s"]
        sink["aggregate_over_alone"] = {n: run["aggregate_img_s"] / alone for n, run in runs.items()}


def _run_workers(config: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """Start ``count`` workers, wait until each is warm, release them together, collect their rows."""
    env = dict(os.environ, TQDM_DISABLE="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                           *filter(None, [os.environ.get("PYTHONPATH")])]))
    if config["cpu_smoke"]:
        env["OMP_NUM_THREADS"] = "1"
    procs: list[tuple[subprocess.Popen, Any]] = []
    try:
        for seed in range(count):
            log = tempfile.TemporaryFile(mode="w+")
            proc = subprocess.Popen([sys.executable, "-m", "absld.gpu_check", "--worker"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=log, text=True, env=env)
            procs.append((proc, log))
            proc.stdin.write(json.dumps({**config, "seed": seed}) + "\n")
            proc.stdin.flush()
        for proc, log in procs:
            _expect(proc, log, "ready")
        for proc, _ in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        rows = [json.loads(_expect(proc, log, "result")) for proc, log in procs]
        for proc, _ in procs:
            proc.wait(timeout=60)
        return rows
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


def _expect(proc: subprocess.Popen, log: Any, word: str) -> str:
    """The rest of the worker's next protocol line, which must start with ``word``."""
    while True:
        line = proc.stdout.readline()
        if not line:
            log.seek(0)
            tail = log.read()[-2000:]
            raise RuntimeError(f"a sharing worker ended (exit {proc.poll()}) before saying {word!r}: {tail}")
        if line.startswith(WORKER_TAG):
            kind, _, rest = line[len(WORKER_TAG):].strip().partition(" ")
            if kind != word:
                raise RuntimeError(f"a sharing worker said {kind!r}, expected {word!r}")
            return rest


def worker_main() -> None:
    """The sharing worker: a config line on stdin; builds, warms up, says ``ready``, waits for
    ``go``, times its steps and says ``result {images, seconds, start, end}``."""
    from .runtime import setup

    config = json.loads(sys.stdin.readline())
    params = check_params(config["profile"], config["cpu_smoke"])
    rt = setup(params.runtime)
    step = training_step(params, config["method"], config["student"], config["teacher"], config["batch_size"], rt,
                         seed=config["seed"])
    for _ in range(config["warmup"]):
        step()
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    print(WORKER_TAG + "ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    start = time.time()
    for _ in range(config["steps"]):
        step()
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    end = time.time()
    row = {"images": config["batch_size"] * config["steps"], "seconds": end - start, "start": start, "end": end}
    print(WORKER_TAG + "result " + json.dumps(row), flush=True)


# ----------------------------------------------------------------------------------------------
# 6. bf16 against fp32 on a quickly trained model
def part_precision(ctx: Context, sink: dict[str, Any], budget: Budget) -> None:
    from .data import make_synthetic
    from .evaluate.cascade import build_attacks, start_noise
    from .runtime import setup

    setup(ctx.params.runtime)
    s = ctx.scale
    raw = make_synthetic(s.precision_train_per_class, s.precision_test_per_class, seed=0)
    x_train = torch.as_tensor(raw.train_images).float().div_(255).to(ctx.device)
    y_train = torch.as_tensor(raw.train_labels).to(ctx.device)
    x_test = torch.as_tensor(raw.test_images).float().div_(255).to(ctx.device)
    y_test = torch.as_tensor(raw.test_labels).to(ctx.device)
    tau = float(ctx.params.distill.method_config("absld").tau_min)
    sink["settings"] = {"dataset": "synthetic", "train_images": len(y_train), "test_images": len(y_test),
                        "epochs": s.precision_epochs, "train_attack_steps": s.precision_attack_steps,
                        "eps": list(s.precision_eps), "tau": tau, "pgd_steps": ctx.params.evaluate.pgd.steps,
                        "cw_steps": ctx.params.evaluate.cw.steps}
    student = _quick_train(s.student, x_train, y_train, ctx, budget)
    sink["clean_acc"] = {p: _accuracy(student, x_test, y_test, None, ctx, p == "bf16") for p in ("fp32", "bf16")}
    attacks = sink.setdefault("attacks", {})
    for eps in s.precision_eps:
        cfg = ctx.params.evaluate.model_copy(update={"eps": eps, "attacks": ["pgd", "cw"]})
        for spec in build_attacks(cfg, ctx.device):
            budget.check()
            noise = start_noise(spec.noise_kind, tuple(x_test.shape), seed=cfg.seed, name=spec.name)
            accs = {p: _accuracy(student, x_test, y_test, (spec, noise), ctx, p == "bf16") for p in ("fp32", "bf16")}
            attacks[f"{spec.name}@{round(eps * 255)}/255"] = {**accs, "gap_points": 100 * (accs["bf16"] - accs["fp32"])}
    soft = sink.setdefault("soft_labels", {})
    soft[s.student] = _soft_label_shift(student, x_test, tau, ctx)
    del student
    budget.check()
    teacher = _quick_train(s.teacher, x_train, y_train, ctx, budget)
    soft[s.teacher] = _soft_label_shift(teacher, x_test, tau, ctx)


def _autocast(ctx: Context, bf16: bool) -> contextlib.AbstractContextManager:
    if bf16:
        return torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=ctx.device.type, enabled=False)


def _quick_train(arch: str, x: torch.Tensor, y: torch.Tensor, ctx: Context, budget: Budget) -> torch.nn.Module:
    """A few epochs of PGD-AT (CE, uniform start, step 2.5 eps / steps) under bf16 autocast on CUDA."""
    from .attacks import ce_loss, pgd
    from .models import build_model

    s = ctx.scale
    torch.manual_seed(0)
    model = build_model(arch, num_classes=int(y.max()) + 1, in_channels=x.shape[1]).to(ctx.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    eps = float(ctx.params.distill.attack.eps)
    generator = torch.Generator(device=ctx.device).manual_seed(0)
    for _ in range(s.precision_epochs):
        order = torch.randperm(len(y), device=ctx.device, generator=generator)
        for begin in range(0, len(y), s.batch_size):
            budget.check()
            index = order[begin:begin + s.batch_size]
            xb, yb = x[index], y[index]
            with _autocast(ctx, ctx.cuda):
                model.eval()
                x_adv = pgd(model, xb, ce_loss(yb), eps=eps, step=2.5 * eps / s.precision_attack_steps,
                            steps=s.precision_attack_steps, start="uniform")
                model.train()
                loss = torch.nn.functional.cross_entropy(model(x_adv).float(), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval().requires_grad_(False)


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Any, ctx: Context, bf16: bool) -> float:
    """Accuracy on (x, y), clean or under ``attack`` = (spec, noise), attack and verdict at one precision."""
    correct = 0
    for begin in range(0, len(y), ctx.scale.precision_batch):
        xb, yb = x[begin:begin + ctx.scale.precision_batch], y[begin:begin + ctx.scale.precision_batch]
        with _autocast(ctx, bf16):
            if attack is not None:
                spec, noise = attack
                xb = spec.run(model, xb, yb, noise[begin:begin + len(yb)].to(ctx.device))
            with torch.no_grad():
                correct += int((model(xb).argmax(dim=1) == yb).sum())
    return correct / len(y)


def _soft_label_shift(model: torch.nn.Module, x: torch.Tensor, tau: float, ctx: Context) -> dict[str, float]:
    """softmax(logits / tau) in fp32 against bf16 autocast on ``x``: KL(fp32 || bf16) per sample
    (mean, max), the largest absolute difference of a probability, and argmax agreement."""
    with torch.no_grad():
        logits = {p: torch.cat([_logits(model, x[i:i + ctx.scale.precision_batch], ctx, p == "bf16")
                                for i in range(0, len(x), ctx.scale.precision_batch)]) for p in ("fp32", "bf16")}
    log_p = {p: torch.log_softmax(v / tau, dim=1) for p, v in logits.items()}  # (N, C)
    kl = (log_p["fp32"].exp() * (log_p["fp32"] - log_p["bf16"])).sum(dim=1)  # (N,)
    return {"tau": tau, "kl_mean": float(kl.mean()), "kl_max": float(kl.max()),
            "max_abs_prob_diff": float((log_p["fp32"].exp() - log_p["bf16"].exp()).abs().max()),
            "argmax_agreement": float((logits["fp32"].argmax(1) == logits["bf16"].argmax(1)).float().mean())}


def _logits(model: torch.nn.Module, x: torch.Tensor, ctx: Context, bf16: bool) -> torch.Tensor:
    with _autocast(ctx, bf16):
        return model(x).float()


PART_FUNCTIONS: dict[str, Callable[[Context, dict[str, Any], Budget], None]] = {
    "matmul": part_matmul, "bench": part_bench, "busy": part_busy, "graph": part_graph, "sharing": part_sharing,
    "precision": part_precision,
}


# ----------------------------------------------------------------------------------------------
# the report
def table(report: dict[str, Any]) -> str:
    """The printed table: one block per part, its status and its headline figures."""
    lines = [f"absld gpu-check on {report['device']} (torch {report['torch']}, CUDA {report['cuda']})"
             + (" -- CPU smoke run, toy scale" if report["cpu_smoke"] else ""),
             f"{'part':<10} {'status':<8} {'s':>6}  figures"]
    for name, entry in report["parts"].items():
        figures = _headline(name, entry.get("result") or {})
        if entry["status"] == "skipped":
            figures = [f"({entry['reason']})"]
        lines.append(f"{name:<10} {entry['status']:<8} {entry['seconds']:>6.1f}  {figures[0] if figures else ''}")
        lines += [f"{'':<27}{line}" for line in figures[1:]]
        if entry["status"] in ("cut", "error"):
            lines.append(f"{'':<27}{entry['status']}: {entry['reason']}")
    lines.append(f"total {report['total_s']} s")
    return "\n".join(lines)


def _headline(name: str, result: dict[str, Any]) -> list[str]:
    def num(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    if name == "matmul":
        return [", ".join(f"{k} {result[k]['tflops']:.1f} TFLOP/s" for k in ("bf16", "tf32", "fp32") if k in result)]
    if name == "bench":
        train = (result.get("bench") or {}).get("train_step")
        if train is None:
            train = {r["name"]: r["row"] for r in result.get("rows", []) if r["kind"] == "train_step"}
        if not isinstance(train, dict):
            return []
        return [f"{method:<16} " + "  ".join(f"{k} {num(v)}" for k, v in row.items()
                                             if isinstance(v, (int, float)) and not isinstance(v, bool))
                for method, row in train.items() if isinstance(row, dict)]
    if name == "busy" and "busy_fraction" in result:
        phases = ", ".join(f"{k} {v:.1f}" for k, v in result.get("phases_ms", {}).items())
        return [f"busy {100 * result['busy_fraction']:.0f} % of {1e3 * result['wall_s_per_step']:.1f} ms/step, "
                f"{result['img_s']:.0f} img/s", f"phases (ms): {phases}"]
    if name == "graph" and "captured" in result:
        if not result["captured"]:
            return [f"capture failed: {result['error']}"]
        return [f"eager {result['eager_ms']:.2f} ms, graph {result['graph_ms']:.2f} ms ({result['speedup']:.2f}x), "
                f"bitwise equal {result['bitwise_equal']} (eager vs eager {result['eager_repeat_bitwise_equal']})"]
    if name == "sharing":
        return [f"{n} process{'es' if n != '1' else ''}: {run['aggregate_img_s']:.1f} img/s in all"
                for n, run in result.get("runs", {}).items()]
    if name == "precision":
        rows = [f"{k}: fp32 {v['fp32']:.3f} bf16 {v['bf16']:.3f} gap {v['gap_points']:+.1f} pt"
                for k, v in result.get("attacks", {}).items()]
        rows += [f"soft labels {arch} (tau {v['tau']}): KL mean {v['kl_mean']:.2e} max {v['kl_max']:.2e}, "
                 f"max |dp| {v['max_abs_prob_diff']:.2e}" for arch, v in result.get("soft_labels", {}).items()]
        return rows
    return []


def _jsonable(obj: Any) -> Any:
    """``obj`` with tensors, numpy scalars and tuples made plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    return str(obj)


def _device_name(device: torch.device) -> str:
    """:func:`absld.bench._device_name`, with a CUDA query that cannot end the check."""
    from . import bench

    if device.type == "cuda":
        return _cuda_quietly(lambda: torch.cuda.get_device_name(device)) or "cuda"
    return bench._device_name(device)


if __name__ == "__main__":  # the sharing worker: python -m absld.gpu_check --worker
    if sys.argv[1:] != ["--worker"]:
        sys.exit("usage: python -m absld.gpu_check --worker (started by `absld gpu-check`; reads its config on stdin)")
    worker_main()
