"""The teacher's clean logits as a table: every training image under every augmentation, computed once.

The distillation methods read the teacher's logits on the clean (augmented) batch. The loader's
augmentation is a crop offset ``(dy, dx)`` in ``[0, 2p]^2`` and a flip (:class:`absld.data.TensorLoader`,
``p = data.augment.crop_padding``), so one image has only ``V = (2p + 1)^2 x 2`` views (162 for
``p = 4``) and the teacher, frozen and in eval mode, gives each view the same logits in every epoch.
:func:`build_table` runs the teacher once over all of them, ``(N, V, C)`` float32 (CIFAR-10's 49,000
training images: 318 MB); each step then gathers ``table[batch.index, view]`` (:meth:`LogitTable.lookup`)
instead of a forward pass.

**Not a science change.** The table holds the same forward at the same precision (the teacher as the
method sees it, :class:`absld.runtime.AtPrecision`: float32 unless ``distill.teacher_amp``, eval mode,
no grad); it differs from the live forward only by floating-point rounding, when the build's batches
(each a block of images under one view) make the convolutions sum in another order than the
training batch's. ``tests/test_teacher_table.py`` bounds that at 1e-5 absolute over a whole epoch and
shows a short RSLAD run has the same losses either way.

**The param** ``distill.teacher_logits``: ``live`` (the forward every step), ``table``, or ``auto``
(:func:`choose`): the table where it fits ``distill.teacher_table_gib`` *and* a student trains at least
``V`` epochs, so that building it costs no more than one student's live clean forwards (the paper's 300
epochs with ``V = 162``: 54 % of them); live otherwise (every CPU profile: tiny 3 epochs, quick 5).
The choice depends on params only, never on the machine or on the cache, and the log says which.
The budget: 4 GiB by default, so CIFAR-10 (0.3 GB) and CIFAR-100 (3.2 GB) get a table and
Tiny-ImageNet (100,000 x 162 x 200 x 4 B = 13 GB) stays live unless the budget is raised; on CUDA the
table lives on the device (beside the models: an H100's 80 GB holds 13 GB easily; a CPU run holds it
in RAM).

**Methods that never read the clean logits** (:attr:`absld.methods.base.MethodBase.reads_teacher_logits`,
AdaAD with ``alpha = 1``) get neither the table nor the forward. B-MTARD's clean logits are its clean
teacher's: the table is always of the module ``method.logits_teacher`` returns, keyed by its
checkpoint's sha256.

**Shared across the students of one teacher** through a cache file (:meth:`absld.layout.Layout.teacher_table`,
under the gitignored ``scratch/``, which is neither a DVC dep nor an out): the key hashes the teacher
checkpoint's sha256, the training images' and labels' bytes, the augmentation, the teacher's precision,
the device type, the build's batch size, the file format and torch's version, i.e. everything that can
change a bit of it. The file (:class:`TableFile`) holds the key and the sha256 of the logits' bytes,
both checked on read; a file that fails either check is rebuilt and rewritten (atomically: temp file,
fsync, rename). Built alone, 7 students of one teacher pay ``V`` teacher passes each; shared, ``V``
in all (about 8 % of their live clean forwards at 300 epochs). Under ``runtime.distributed`` every
process builds or reads the table itself (rank 0 writes it). Because a cached table holds the same
bits this process would build (on the CPU, and on CUDA under ``runtime.deterministic``), a stage's
result does not depend on whether the cache existed (tested).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import Tensor, nn

from ..data import Batch, TensorLoader, crop_flip
from ..io import atomic_path, short_hash
from ..params.distill import TeacherLogits

TABLE_FORMAT = 1


def n_views(loader: TensorLoader) -> int:
    """``V``: crop offsets x flips of ``loader``'s augmentation (1 without augmentation)."""
    return loader.n_crops * (2 if loader.flip else 1)


def table_bytes(loader: TensorLoader, num_classes: int) -> int:
    """The table's size for ``loader``'s images, float32."""
    return len(loader.labels) * n_views(loader) * num_classes * 4


def choose(mode: TeacherLogits, loader: TensorLoader, num_classes: int, epochs: int,
           budget_gib: float) -> tuple[Literal["live", "table"], str]:
    """Resolve ``distill.teacher_logits`` to ``live`` or ``table``, with the reason (for the log)."""
    size, views = table_bytes(loader, num_classes), n_views(loader)
    shape = f"{len(loader.labels)} x {views} x {num_classes} float32, {size / 2**30:.2f} GiB"
    if mode != "auto":
        return mode, f"distill.teacher_logits: {mode} ({shape})" if mode == "table" else "distill.teacher_logits: live"
    if size > budget_gib * 2**30:
        return "live", f"auto: a table ({shape}) exceeds distill.teacher_table_gib = {budget_gib:g}"
    if epochs < views:
        return "live", (f"auto: {epochs} epochs < {views} views, so building the table ({shape}) would cost more "
                        "teacher passes than the live forward")
    return "table", f"auto: the table ({shape}) fits distill.teacher_table_gib = {budget_gib:g}"


@dataclass
class LogitTable:
    """``logits[i, v]``: the teacher's logits on image ``i`` of the loader under view ``v = crop * n_flips + flip``."""

    logits: Tensor  # (N, V, C) float32 on the training device
    n_flips: int  # 2 when the loader flips, else 1

    def lookup(self, batch: Batch) -> Tensor:
        """The batch's clean teacher logits, ``(B, C)`` float32, gathered on the device (no host sync)."""
        if batch.crop is None or batch.flip is None:
            view = torch.zeros_like(batch.index)
        else:
            view = batch.crop * self.n_flips + batch.flip.long()  # flip is all False without flips
        return self.logits[batch.index, view]

    def fits(self, loader: TensorLoader) -> bool:
        """Whether this table was built for ``loader``'s images and augmentation (shapes only)."""
        return (self.logits.shape[:2] == (len(loader.labels), n_views(loader))
                and self.n_flips == (2 if loader.flip else 1))


@torch.no_grad()
def build_table(teacher: nn.Module, loader: TensorLoader, num_classes: int,
                batch_size: int | None = None) -> LogitTable:
    """The teacher's logits on every image of ``loader`` under every view, in blocks of ``batch_size``
    images (default: the loader's) on the loader's device, in the loader's memory format; the teacher
    is called as it is (eval mode and precision are its caller's: the distill stage's AtPrecision)."""
    images, padding = loader.images, loader.crop_padding
    n, device = len(images), images.device
    n_flips, side, size = (2 if loader.flip else 1), 2 * padding + 1, batch_size or loader.batch_size
    logits = torch.empty(n, loader.n_crops * n_flips, num_classes, dtype=torch.float32, device=device)
    for start in range(0, n, size):
        block = images[start : start + size].float().div_(255)
        b = len(block)
        for crop in range(loader.n_crops):
            dy, dx = divmod(crop, side)
            for flip in range(n_flips):
                x = crop_flip(block, padding, torch.full((b,), dy, device=device) if padding else None,
                              torch.full((b,), dx, device=device) if padding else None,
                              torch.full((b,), bool(flip), device=device) if loader.flip else None)
                if loader.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                logits[start : start + b, crop * n_flips + flip] = teacher(x).float()
    return LogitTable(logits, n_flips)


def table_key(teacher_sha: str, loader: TensorLoader, *, bf16: bool, batch_size: int) -> str:
    """The cache key: everything that can change a bit of the table (see the module docstring)."""
    data = hashlib.sha256()
    for tensor in (loader.images, loader.labels):
        data.update(_bytes(tensor))
    return short_hash(TABLE_FORMAT, teacher_sha, data.hexdigest(), loader.crop_padding, loader.flip,
                      loader.channels_last, bf16, loader.images.device.type, batch_size, torch.__version__)


def _bytes(tensor: Tensor) -> memoryview:
    return memoryview(tensor.detach().cpu().contiguous().view(torch.uint8).numpy()).cast("B")


def _digest(logits: Tensor) -> str:
    return hashlib.sha256(_bytes(logits)).hexdigest()


def read_cached(path: Path, key: str, device: torch.device) -> tuple[LogitTable | None, str]:
    """The table cached at ``path`` if its key and its bytes' sha256 check, else None; with what happened."""
    if not path.is_file():
        return None, f"no cached table at {path}"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        ok = (isinstance(saved, dict) and saved.get("format") == TABLE_FORMAT and saved.get("key") == key
              and saved.get("sha256") == _digest(saved["logits"]))
    except Exception as exc:  # noqa: BLE001 - an unreadable cache is rebuilt, never fatal
        return None, f"the cached table {path} cannot be read ({type(exc).__name__}); rebuilding it"
    if not ok:
        return None, f"the cached table {path} fails its key or checksum; rebuilding it"
    return LogitTable(saved["logits"].to(device), int(saved["n_flips"])), f"read the cached table {path}"


def write_cached(path: Path, key: str, table: LogitTable) -> None:
    """Write ``table`` to ``path`` atomically (temp file, fsync, rename) with its key and checksum."""
    logits = table.logits.detach().cpu().contiguous()
    state = {"format": TABLE_FORMAT, "key": key, "n_flips": table.n_flips, "logits": logits,
             "sha256": _digest(logits)}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())


def cached_table(teacher: nn.Module, teacher_sha: str, loader: TensorLoader, num_classes: int, *,
                 cache: Callable[[str], Path] | None, bf16: bool, write: bool = True,
                 echo: Callable[[str], None] = print) -> LogitTable:
    """The table of ``teacher`` (whose checkpoint has sha256 ``teacher_sha``) for ``loader``: read from
    ``cache(key)`` when there and sound, else built (and written there when ``write``)."""
    batch_size = loader.batch_size
    key = table_key(teacher_sha, loader, bf16=bf16, batch_size=batch_size)
    path = cache(key) if cache is not None else None
    if path is not None:
        table, note = read_cached(path, key, loader.images.device)
        echo(f"teacher logits: {note}")
        if table is not None:
            return table
    started = time.perf_counter()
    table = build_table(teacher, loader, num_classes, batch_size)
    echo(f"teacher logits: built the table in {time.perf_counter() - started:.1f} s")
    if path is not None and write:
        write_cached(path, key, table)
    return table
