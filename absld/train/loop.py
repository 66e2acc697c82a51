"""The one training loop: every method and the teacher go through :func:`fit`.

Per epoch ``e`` (counted from 1, as the reference code): learning rate
``lr * gamma ** #{m in milestones : m < e}`` (so the rate drops *after* epoch ``m``), one pass over
the :class:`~absld.data.TensorLoader`, ``method.on_epoch_end(e)``, an optional selection
evaluation (after the epochs of ``select_epochs``; it leaves the training RNG alone), and an
atomic checkpoint holding everything needed to continue exactly: model, optimiser, method state,
RNG states, history and the best weights so far. Calling :func:`fit`
again with the same ``fingerprint`` continues after the last finished epoch; a different
fingerprint (other params or data) starts afresh.
"""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Collection
from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import distributed
from . import compiled
from ..params import TrainConfig
from ..data import Batch, TensorLoader
from ..io import write_csv, write_torch
from ..methods.base import MethodBase, StepOutput
from ..runtime import Runtime, rng_state, set_rng_state
from ..errors import UserError, interrupted


class LogitTable(Protocol):
    """The teacher's clean logits looked up instead of computed (:class:`absld.train.teacher_table.LogitTable`;
    named here by its shape only, so that the teacher stage, which trains in this loop, does not import it)."""

    def lookup(self, batch: Batch) -> Tensor: ...  # (B, C) float32

    def fits(self, loader: TensorLoader) -> bool: ...

CHECKPOINT_FORMAT = 1

WALL_CLOCK_KEYS = ("epoch_seconds",)
"""History keys that measure time, not the model. They go to W&B and to the untracked ``logs/``,
never into a DVC-tracked file: identical inputs must give identical bytes, or DVC would rerun every
downstream stage."""


def without_wall_clock(row: dict[str, float]) -> dict[str, float]:
    """``row`` without :data:`WALL_CLOCK_KEYS`."""
    return {k: v for k, v in row.items() if k not in WALL_CLOCK_KEYS}


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says what happened."""


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate used during ``epoch`` (1-based); see ``TrainConfig.lr_decay``."""
    passed = sum(1 for m in cfg.milestones if m < epoch)
    if cfg.lr_decay == "from_base":
        passed = min(passed, 1)
    return cfg.lr * cfg.lr_gamma ** passed


@dataclass
class FitResult:
    history: list[dict[str, float]]
    final_state: dict[str, Tensor]
    best_state: dict[str, Tensor] | None = None
    best_epoch: int | None = None
    best_score: float | None = None
    resumed_from: int = 0
    timings: list[dict[str, float]] = field(default_factory=list)
    """Per epoch: ``epoch`` and the :data:`WALL_CLOCK_KEYS` (kept out of ``history`` and out of the
    resumable checkpoint, whose bytes must not depend on the clock). With ``timings_log`` the epochs
    resumed from a checkpoint get their rows back from that log; without it, or where it lacks them,
    ``epoch`` only."""
    extra: dict[str, Any] = field(default_factory=dict)


SelectFn = Callable[[nn.Module], dict[str, float]]
"""Evaluates the model (in eval mode) and returns metrics including ``"score"`` (higher = better)."""


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def sgd_implementation(device: torch.device) -> dict[str, bool]:
    """SGD's kernel by device: on CUDA ``fused=True`` (one kernel for every parameter's update; torch
    documents fused SGD for CUDA tensors of floating dtypes); elsewhere torch's default (on the CPU,
    the per-parameter loop), so CPU runs stay bit-identical to the plain ``torch.optim.SGD``."""
    return {"fused": True} if device.type == "cuda" else {}


def fit(
    model: nn.Module,
    method: MethodBase,
    loader: TensorLoader,
    cfg: TrainConfig,
    rt: Runtime,
    *,
    checkpoint: str | Path | None = None,
    fingerprint: str = "",
    select_fn: SelectFn | None = None,
    select_epochs: Collection[int] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    stop_after: int | None = None,
    desc: str = "train",
    timings_log: str | Path | None = None,
    teacher_table: LogitTable | None = None,
) -> FitResult:
    """Train ``model`` with ``method`` for ``cfg.epochs`` epochs (resuming from ``checkpoint``).

    Args:
        model: the network, already on ``rt.device``.
        method: the method's math (perturb / loss / epoch-end hook).
        loader: shuffled, augmenting batches of the training split.
        checkpoint: where the resumable state is kept (None: no checkpoints).
        fingerprint: identifies the configuration; a checkpoint with another one is not resumed.
        select_fn: evaluated for checkpoint selection (keeps the best ``score``; the first of equal
            scores) after each epoch of ``select_epochs``, after the method's epoch-end hook; its
            metrics enter that epoch's row as ``select_<key>``. It must not draw from the global
            RNG (:func:`absld.evaluate.fair_score` does not), or training would depend on it.
        select_epochs: the epochs (1-based) after which ``select_fn`` runs (None: every epoch).
        on_epoch: receives the metrics row of each epoch trained in this call (logging).
        stop_after: stop after this many epochs in this call (tests of resume; preemptible hosts).
        timings_log: the untracked CSV of :attr:`FitResult.timings` (``logs/``), rewritten after every
            epoch and read back on resume, so every column survives any number of resumes.
        teacher_table: the clean logits of ``method.logits_teacher`` on every image and view of ``loader``
            (:mod:`absld.train.teacher_table`), gathered each step instead of the teacher's forward.
    """
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, nesterov=cfg.nesterov, **sgd_implementation(rt.device),
    )
    result = FitResult(history=[], final_state={})
    start_epoch = 1
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    state, ckpt_used = _read_resumable(ckpt_path, desc) if ckpt_path is not None else (None, None)
    if state is not None:
        if state.get("format") == CHECKPOINT_FORMAT and state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            for group in optimizer.param_groups:  # the saved groups carry the saving device's kernel choice
                group.update({"foreach": None, "fused": None, **sgd_implementation(rt.device)})
            method.load_state_dict(state["method"])
            set_rng_state(state["rng"])
            result.history = list(state["history"])
            result.timings = _resumed_timings(timings_log, result.history)
            result.best_state = state.get("best_state")
            result.best_epoch = state.get("best_epoch")
            result.best_score = state.get("best_score")
            start_epoch = int(state["epoch"]) + 1
            result.resumed_from = int(state["epoch"])
            tqdm.write(f"[{desc}] resuming after epoch {state['epoch']} from {ckpt_used}")
        else:
            tqdm.write(f"[{desc}] {ckpt_path} belongs to other params, data or code: starting afresh")

    teacher = method.logits_teacher  # whose clean-input logits the method gets (B-MTARD: its clean teacher)
    if teacher_table is not None:  # the same logits, gathered (distill.teacher_logits: table)
        if not teacher_table.fits(loader):
            raise ValueError("teacher_table was built for other images or another augmentation than the loader's")
        teacher = teacher_table
    say = tqdm.write if rt.is_main else (lambda message: None)  # data-parallel: rank 0 speaks
    loss_model = distributed.wrap(model, rt.device) if rt.world > 1 else None  # after the resume: same weights
    attack_model = model
    if rt.compile:  # runtime.compile: the attack's and the loss's views of one compiled student (compiled.py)
        sizes = compiled.batch_sizes(len(loader.labels), loader.batch_size, loader.drop_last, rt.world)
        attack_model, loss_model = compiled.compile_student(model, loss_model, sizes)
    trained_here = 0
    for epoch in range(start_epoch, cfg.epochs + 1):
        if stop_after is not None and trained_here >= stop_after:
            break
        try:
            row = _train_epoch(attack_model, method, teacher, loader, optimizer, cfg, rt, epoch, desc, loss_model)
        except KeyboardInterrupt as exc:
            raise _stopped(exc, desc, epoch, cfg.epochs, "training") from None
        row.update(method.on_epoch_end(epoch))
        if select_fn is not None and (select_epochs is None or epoch in select_epochs):
            model.eval()
            try:
                selection = select_fn(model)
            except KeyboardInterrupt as exc:
                raise _stopped(exc, desc, epoch, cfg.epochs, "checkpoint selection after") from None
            row.update({f"select_{k}": v for k, v in selection.items()})
            score = selection["score"]
            if result.best_score is None or score > result.best_score:
                result.best_score, result.best_epoch = float(score), epoch
                result.best_state = _cpu_state(model)
            say(f"[{desc}] epoch {epoch}: selection score {float(score):.4f} "
                       f"(best {result.best_score:.4f}, epoch {result.best_epoch})")
        result.history.append(without_wall_clock(row))
        result.timings.append({"epoch": epoch, **{k: row[k] for k in WALL_CLOCK_KEYS}})
        trained_here += 1
        if ckpt_path is not None and rt.rank == 0:  # data-parallel: one writer
            _save(ckpt_path, model, optimizer, method, result, epoch, fingerprint)
        if timings_log is not None and rt.rank == 0:
            write_csv(timings_log, result.timings)
        if on_epoch is not None:
            on_epoch(row)

    model.eval()
    result.final_state = _cpu_state(model)
    return result


def _stopped(exc: KeyboardInterrupt, desc: str, epoch: int, epochs: int, doing: str) -> KeyboardInterrupt:
    """Ctrl-C in ``epoch``: where it stopped, and what the resumable checkpoint holds."""
    saved = {1: "no epoch is saved yet", 2: "epoch 1 is saved"}.get(epoch, f"epochs 1-{epoch - 1} are saved")
    return interrupted(exc, f"{desc} stopped in {doing} epoch {epoch} of {epochs} ({saved})")


def _resumed_timings(log: str | Path | None, history: list[dict[str, float]]) -> list[dict[str, float]]:
    """The wall-clock rows of the epochs of ``history`` (resumed from a checkpoint): each as ``log``
    recorded it (the :data:`WALL_CLOCK_KEYS` present there), else ``epoch`` alone."""
    saved: dict[int, dict[str, float]] = {}
    if log is not None and Path(log).is_file():
        try:
            with open(log, newline="") as handle:
                for row in csv.DictReader(handle):
                    saved[int(row["epoch"])] = {k: float(row[k]) for k in WALL_CLOCK_KEYS if row.get(k)}
        except (OSError, KeyError, ValueError, csv.Error):  # an unreadable log costs its times, not the run
            saved = {}
    return [{"epoch": row["epoch"], **saved.get(int(row["epoch"]), {})} for row in history]


def previous_checkpoint(path: Path) -> Path:
    """Where the checkpoint before ``path``'s current one is kept (``last.pt`` -> ``last.prev.pt``)."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _read_resumable(path: Path, desc: str) -> tuple[dict | None, Path | None]:
    """The newest readable resumable checkpoint: ``path``, else the one before it (a kill or a
    corrupted write of the newest one loses one epoch, not the run). None when neither exists;
    a :class:`TrainingError` naming both files when both exist but none can be read."""
    failures = []
    for candidate in (path, previous_checkpoint(path)):
        if not candidate.is_file():
            continue
        try:
            return torch.load(candidate, map_location="cpu", weights_only=True), candidate
        except Exception as exc:  # noqa: BLE001 - any unreadable file: report it, try the previous one
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            failures.append(f"{candidate} ({type(exc).__name__}: {message[:120]})")
            tqdm.write(f"[{desc}] cannot read the checkpoint {candidate}; trying the one before it")
    if failures:
        raise TrainingError(f"[{desc}] no resumable checkpoint can be read: {'; '.join(failures)}; delete "
                            f"{path.parent} to train from the start")
    return None, None


def _save(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, method: MethodBase,
          result: FitResult, epoch: int, fingerprint: str) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "method": method.state_dict(),
        "rng": rng_state(),
        "history": result.history,
        "best_state": result.best_state,
        "best_epoch": result.best_epoch,
        "best_score": result.best_score,
    }
    if path.is_file():  # keep the previous epoch's checkpoint until the new one is whole
        os.replace(path, previous_checkpoint(path))
    write_torch(path, state)


def method_loss(model: nn.Module, method: MethodBase, teacher: nn.Module | LogitTable | None, batch: Batch,
                rt: Runtime, loss_model: nn.Module | None = None) -> StepOutput:
    """One batch's forward work: the teacher's logits on the clean batch (once; at the teacher's
    own precision, :class:`absld.runtime.AtPrecision`: float32 unless distill.teacher_amp, since ABSLD
    divides them by temperatures down to 0.25; gathered from a :class:`LogitTable` of them when
    ``teacher`` is one; not at all for a method that never reads them, ``reads_teacher_logits``),
    the method's attack with the student in its authors' BatchNorm
    mode, then its loss with the student in train mode; both under ``rt.autocast()``.
    ``loss_model``: the student as the loss sees it (its DistributedDataParallel wrapper; the
    attack, whose backward passes must not synchronise gradients, uses ``model`` itself)."""
    teacher_logits = None
    if teacher is not None and not isinstance(teacher, nn.Module) and method.reads_teacher_logits:
        teacher_logits = teacher.lookup(batch)  # (B, C) float32
    elif teacher is not None and method.reads_teacher_logits:
        with torch.no_grad():
            teacher_logits = teacher(batch.x).float()  # (B, C)
    model.train(method.attack_mode == "train")
    with rt.autocast():
        x_adv = method.perturb(model, batch, teacher_logits)
    model.train()
    with rt.autocast():
        return method.loss(loss_model if loss_model is not None else model, batch, x_adv, teacher_logits)


def _train_epoch(model: nn.Module, method: MethodBase, teacher: nn.Module | None,
                 loader: TensorLoader, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                 rt: Runtime, epoch: int, desc: str, loss_model: nn.Module | None = None) -> dict[str, float]:
    lr = learning_rate(cfg, epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    loader.set_epoch(epoch)
    device = rt.device
    totals: dict[str, Tensor] = {}
    seen = 0
    correct_adv = torch.zeros((), device=device)
    correct_nat = torch.zeros((), device=device)
    n_adv = n_nat = skipped = 0
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite batch (no sync)
    started = time.perf_counter()
    bar = tqdm(loader, desc=f"[{desc}] epoch {epoch}/{cfg.epochs}", leave=False,
               disable=not rt.progress, dynamic_ncols=True)
    for step, batch in enumerate(bar):
        total = len(batch.y)
        batch = distributed.shard(batch, rt.rank, rt.world)  # this process's share (all of it alone)
        with distributed.sharing(rt.rank, rt.world, total):  # the step's noise: its rows of the global batch's
            out = method_loss(model, method, teacher, batch, rt, loss_model=loss_model)
        optimizer.zero_grad(set_to_none=True)
        if rt.nan_policy == "skip_batch":  # syncs: only when asked
            bad_here = (~torch.isfinite(out.loss.detach())).float()
            if float(distributed.all_reduce_sum(bad_here)) > 0:  # every process skips it together
                skipped += 1
                continue
        loss = out.loss
        if rt.world > 1:
            loss = loss * distributed.loss_scale(len(batch.y), total, rt.world)
        loss.backward()
        optimizer.step()
        bad = ~torch.isfinite(out.loss.detach())
        first_bad = torch.where((first_bad < 0) & bad, torch.full_like(first_bad, step), first_bad)

        size = len(batch.y)
        seen += size
        for key, value in {"loss": out.loss.detach(), **out.stats}.items():
            totals[key] = totals.get(key, torch.zeros((), device=device)) + value.float() * size
        if out.logits_adv is not None:
            correct_adv += (out.logits_adv.argmax(1) == batch.y).sum()
            n_adv += size
        if out.logits_nat is not None:
            correct_nat += (out.logits_nat.argmax(1) == batch.y).sum()
            n_nat += size
        if rt.progress and step % 10 == 0:
            bar.set_postfix(loss=f"{float(totals['loss']) / seen:.4f}",
                            acc_adv=f"{float(correct_adv) / max(n_adv, 1):.3f}" if n_adv else "-")
    bar.close()
    if rt.world > 1:  # the epoch's sums over every process's share
        keys = sorted(totals)
        counts = torch.tensor([seen, n_adv, n_nat], dtype=torch.float64, device=device)
        packed = distributed.all_reduce_sum(torch.cat([torch.stack([totals[k].double() for k in keys]),
                                                       torch.stack([correct_adv.double(), correct_nat.double()]),
                                                       counts]))
        totals = dict(zip(keys, packed[: len(keys)]))
        correct_adv, correct_nat = packed[len(keys)], packed[len(keys) + 1]
        seen, n_adv, n_nat = (int(v) for v in packed[len(keys) + 2:])
    if int(first_bad) >= 0:
        raise TrainingError(
            f"[{desc}] {method.name or type(method).__name__}'s training loss became NaN/inf in epoch {epoch}, "
            f"batch {int(first_bad) + 1} of {len(loader)}; the checkpoint of the last finished epoch is kept. "
            "Lower the learning rate, check the data, or set runtime.nan_policy: skip_batch")
    row: dict[str, float] = {"epoch": epoch, "lr": lr}
    row.update({f"train_{k}": float(v) / max(seen, 1) for k, v in totals.items()})
    if not math.isfinite(row["train_loss"]):
        raise TrainingError(f"[{desc}] the training loss became {row['train_loss']} in epoch {epoch}; "
                            "lower the learning rate or check the data")
    if n_adv:
        row["train_acc_adv"] = float(correct_adv) / n_adv
    if n_nat:
        row["train_acc_nat"] = float(correct_nat) / n_nat
    if skipped:
        row["skipped_batches"] = skipped
    row["epoch_seconds"] = time.perf_counter() - started
    return row
