"""Data-parallel training on torch.distributed: torchrun starts one process per device, each
trains on its share of every batch, and DistributedDataParallel averages the gradients.

The split is exact for the data: every process holds the whole training set and draws the same
global batch (:class:`absld.data.TensorLoader` is seeded by ``(seed, epoch)``), then keeps the
samples ``rank, rank + world, ...`` of it (:func:`shard`). Each process's loss is multiplied by
``world * n_rank / B`` (:func:`loss_scale`), so that DDP's average of the gradients is the gradient
of the global batch's mean loss even when the last batch does not split evenly. Sums over the epoch
(the class risks of ABSLD and the re-weighting methods, the training statistics) are summed across
processes (:func:`all_reduce_sum`). What is not exact: BatchNorm normalises each process's share
with that share's statistics (on CUDA, :func:`wrap` converts it to SyncBatchNorm, which uses the
global batch's; torch has no SyncBatchNorm on the CPU), and the floating-point order of the sums.

Launch: ``torchrun --nproc_per_node N -m pipeline.cli distill ...`` with ``runtime.distributed:
true`` (see docs/speed.md); the process of rank 0 writes every file and logs to W&B.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

BatchT = TypeVar("BatchT")
"""An :class:`absld.data.Batch` (not imported: every stage's rank check imports this module)."""


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


def shard(batch: BatchT, rank: int, world: int) -> BatchT:
    """Samples ``rank, rank + world, ...`` of the global batch."""
    if world == 1:
        return batch
    keep = slice(rank, None, world)
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

