"""Data-parallel training on torch.distributed: torchrun starts one process per device, each
trains on its share of every batch, and DistributedDataParallel averages the gradients.

The split is exact for the data: every process holds the whole training set and draws the same
global batch (:class:`absld.data.TensorLoader` is seeded by ``(seed, epoch)``), then keeps the
samples ``rank, rank + world, ...`` of it (:func:`shard`). Each process's loss is multiplied by
``world * n_rank / B`` (:func:`loss_scale`), so that DDP's average of the gradients is the gradient
of the global batch's mean loss even when the last batch does not split evenly.

It is exact for the noise too: the training loop runs each step inside :func:`sharing`, and every
random draw of a step (PGD's uniform and gaussian starts, TRIX's random target class) goes through
:func:`draw_rows`, which draws the tensor of the whole global batch from the one seeded stream,
as a single process draws it, and keeps this process's rows. The shares get different noise, each
sample the noise it gets alone, and every process's RNG advances alike (rank 0's saved RNG state
resumes all of them). Outside :func:`sharing`, or with one process, :func:`draw_rows` is the
plain draw: a single process's numbers are unchanged bit for bit.

State measured on the validation split between epochs (FRL's and CFA's class-wise accuracies,
WAT's class costs) is measured once, by rank 0, and every process gets rank 0's numbers
(:func:`from_main`), so that no process can train with other class weights or radii (each one
measuring for itself could differ: BatchNorm's running statistics of its own share on the CPU,
cuDNN's per-device choice of algorithm on CUDA). Branches of a step are decided by the epoch, never
by a process's values (IAD's introspection term, :mod:`absld.methods.iad`), so every process runs
the same collectives. Sums over the epoch (the class risks of ABSLD and the re-weighting methods,
the training statistics) are summed across processes (:func:`all_reduce_sum`).

What is not exact: BatchNorm normalises each process's share with that share's statistics (on
CUDA, :func:`wrap` converts it to SyncBatchNorm, which uses the global batch's; torch has no
SyncBatchNorm on the CPU), statistics a method takes over its share of the batch (TRIX's split of
a batch into strong and weak samples; FRL's weight sums), and the floating-point
order of the sums: a real attack takes the sign of the input gradient, so a rounding difference
in the weights can flip a step (tests/test_distributed.py).

Launch: ``torchrun --nproc_per_node N -m pipeline.cli distill ...`` with ``runtime.distributed:
true`` (see docs/speed.md); the process of rank 0 writes every file and logs to W&B, and the
student's metrics.json records ``world``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

BatchT = TypeVar("BatchT")
"""An :class:`absld.data.Batch` (not imported: every stage's rank check imports this module)."""
T = TypeVar("T")


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def rank() -> int:
    """This process's rank (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init(device_type: str) -> tuple[int, int]:
    """Join torchrun's process group (NCCL on CUDA, gloo on the CPU); ``(rank, world)``. Outside
    torchrun: ``(0, 1)``, nothing joined."""
    if not launched():
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def local_device(device_type: str) -> torch.device:
    """``cuda:LOCAL_RANK`` under torchrun on CUDA; else the device type."""
    if device_type == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device_type)


def rows(rank: int, world: int) -> slice:
    """The rows of a global batch that process ``rank`` of ``world`` trains on: ``rank, rank + world, ...``."""
    return slice(rank, None, world)


def shard(batch: BatchT, rank: int, world: int) -> BatchT:
    """Samples ``rank, rank + world, ...`` of the global batch (:func:`rows`)."""
    if world == 1:
        return batch
    keep = rows(rank, world)
    views = {name: getattr(batch, name)[keep] for name in ("crop", "flip") if getattr(batch, name, None) is not None}
    return replace(batch, x=batch.x[keep], y=batch.y[keep], index=batch.index[keep], **views)  # type: ignore[attr-defined]


def loss_scale(local: int, total: int, world: int) -> float:
    """The factor on a process's mean loss over ``local`` of ``total`` samples that makes DDP's mean
    of the gradients the gradient of the mean loss over all ``total``."""
    return world * local / total


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over every process (itself outside a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (CUDA: with SyncBatchNorm first)."""
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(model)



@dataclass(frozen=True)
class Share:
    """Which rows of a global batch of ``total`` samples this process holds (:func:`rows`)."""

    rank: int
    world: int
    total: int

    @property
    def size(self) -> int:
        """How many rows: ``len(range(rank, total, world))``."""
        return len(range(self.rank, self.total, self.world))


_SHARE: ContextVar[Share | None] = ContextVar("absld_share", default=None)


@contextmanager
def sharing(rank: int, world: int, total: int) -> Iterator[None]:
    """Within: this process trains on its rows of a global batch of ``total`` samples, and
    :func:`draw_rows` draws the global batch's noise (nothing changes with ``world`` 1)."""
    token = _SHARE.set(Share(rank, world, total) if world > 1 else None)
    try:
        yield
    finally:
        _SHARE.reset(token)


def _global_like(like: Tensor, total: int) -> Tensor:
    """An empty tensor of the global batch's shape ``(total, *like.shape[1:])``, ``like``'s dtype,
    device and memory format (a share of a channels_last batch is a strided view of it: the format
    is read from one sample)."""
    sample = like[:1]
    channels_last = (like.dim() == 4 and not sample.is_contiguous()
                     and sample.is_contiguous(memory_format=torch.channels_last))
    return torch.empty((total, *like.shape[1:]), dtype=like.dtype, device=like.device,
                       memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def draw_rows(like: Tensor, draw: Callable[[Tensor], Tensor]) -> Tensor:
    """``draw(like)``: a random tensor shaped as ``like``, whose first dimension is this process's
    samples of the batch (e.g. ``draw_rows(x, torch.randn_like)``). Inside :func:`sharing` with
    several processes, ``draw`` runs on the whole global batch's shape, from the global RNG that
    every process holds alike, and this process keeps its rows: its samples get the noise a single
    process would draw for them, and every process's RNG advances as a single process's does."""
    share = _SHARE.get()
    if share is None:
        return draw(like)
    if len(like) != share.size:
        raise ValueError(f"draw_rows: a tensor of {len(like)} rows is not this process's share of the global "
                         f"batch ({share.size} of {share.total}, rank {share.rank} of {share.world})")
    return draw(_global_like(like, share.total))[rows(share.rank, share.world)]


def _grouped() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def from_main(value: T) -> T:
    """Rank 0's ``value`` on every process (``value`` itself outside a process group): for a result
    that rank 0 alone computes, the other processes passing anything (None). Sent as a pickle
    (``torch.distributed.broadcast_object_list``): keep tensors in it on the CPU."""
    if not _grouped():
        return value
    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
