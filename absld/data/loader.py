"""The tensor loader: uint8 images on the device, augmented whole batches at a time (airbench style).

An epoch's random numbers (the order, then per batch the crop offsets ``dy``, ``dx`` and the flip
mask, in that order, from one CPU generator seeded by ``(seed, epoch)``) are drawn when the epoch
starts and copied to the device once (on CUDA from pinned memory, ``non_blocking``), so a step does
no host-to-device copy and no host sync; the batches are bitwise those of drawing batch by batch.
Each :class:`Batch` says which view of its images it holds (``crop``, ``flip``): the teacher's
logit table (absld/train/teacher_table.py) is gathered by them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import Tensor



def draw_augmentation(
    batch: int, padding: int, flip: bool, generator: torch.Generator
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """One batch's random numbers on the CPU ``generator``, in this order: the row offsets ``dy``
    and column offsets ``dx`` (each ``(B,)`` int64 in ``[0, 2 * padding]``; None without padding),
    then the flip mask (``(B,)`` bool; None without flips)."""
    dy = dx = mask = None
    if padding > 0:
        dy = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    if flip:
        mask = torch.rand(batch, generator=generator) < 0.5
    return dy, dx, mask


def crop_flip(images: Tensor, padding: int, dy: Tensor | None, dx: Tensor | None,
              mask: Tensor | None) -> Tensor:
    """Crop ``(B, C, H, W)`` ``images`` zero-padded by ``padding`` at offsets ``(dy, dx)`` (``(B,)``
    each, None: no crop) and flip horizontally where ``mask`` (``(B,)`` bool, None: no flip); every
    tensor on the images' device (the gathering is there, with no host sync)."""
    batch, _, height, width = images.shape
    out = images
    if padding > 0 and dy is not None and dx is not None:
        padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
        rows = dy[:, None] + torch.arange(height, device=images.device)  # (B, H)
        cols = dx[:, None] + torch.arange(width, device=images.device)  # (B, W)
        batch_idx = torch.arange(batch, device=images.device)[:, None, None, None]
        chan_idx = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        out = padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]
    if mask is not None:
        out = torch.where(mask[:, None, None, None], out.flip(3), out)
    return out


def random_crop_flip(
    images: Tensor, padding: int, flip: bool, generator: torch.Generator
) -> Tensor:
    """Random crop with zero padding and horizontal flip on a whole batch ``(B, C, H, W)``.

    The random numbers come from a CPU ``generator`` (:func:`draw_augmentation`, so a run is the
    same on every device) and the gathering happens on the batch's device (:func:`crop_flip`).
    :class:`TensorLoader` draws a whole epoch's numbers at once instead, in the same order.
    """
    dy, dx, mask = draw_augmentation(len(images), padding, flip, generator)
    on_device = [t.to(images.device) if t is not None else None for t in (dy, dx, mask)]
    return crop_flip(images, padding, *on_device)


@dataclass
class Batch:
    x: Tensor  # (B, C, H, W) float in [0, 1]
    y: Tensor  # (B,) int64
    index: Tensor  # (B,) positions in the loader's dataset
    crop: Tensor | None = None
    """(B,) int64 on the batch's device: the crop offset of each image, ``dy * (2 * padding + 1) + dx``
    (0 for every image when the loader flips without padding); None when the loader does not augment."""
    flip: Tensor | None = None
    """(B,) bool on the batch's device: which images were flipped (all False when the loader crops
    without flipping); None when the loader does not augment."""


class TensorLoader:
    """Batches from uint8 images held on ``device``; augmentation on whole batches there.

    The order and augmentation of epoch ``e`` depend only on ``(seed, e)``, so a resumed run
    sees exactly the batches an uninterrupted run would.
    """

    def __init__(
        self,
        images: np.ndarray | Tensor,
        labels: np.ndarray | Tensor,
        *,
        batch_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        drop_last: bool = False,
        crop_padding: int = 0,
        flip: bool = False,
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        self.images = torch.as_tensor(images, dtype=torch.uint8).to(device)
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(device)
        if self.images.ndim != 4 or len(self.images) != len(self.labels):
            raise ValueError("images must be (N, C, H, W) with one label each")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.crop_padding = crop_padding
        self.flip = flip
        self.seed = seed
        self.channels_last = channels_last
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def augments(self) -> bool:
        """Whether batches are cropped or flipped (then :attr:`Batch.crop`/:attr:`Batch.flip` are set)."""
        return bool(self.crop_padding or self.flip)

    @property
    def n_crops(self) -> int:
        """How many crop offsets there are, ``(2 * padding + 1) ** 2`` (1 without padding)."""
        return (2 * self.crop_padding + 1) ** 2

    def _to_device(self, tensor: Tensor) -> Tensor:
        """``tensor`` (CPU) on the images' device: on CUDA from pinned memory with ``non_blocking``, an
        asynchronous copy that does not stall the host (torch's ``Tensor.to`` docs)."""
        device = self.images.device
        if device.type == "cuda":
            return tensor.pin_memory().to(device, non_blocking=True)
        return tensor.to(device)

    def __iter__(self) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        sizes = [min(self.batch_size, n - b * self.batch_size) for b in range(len(self))]
        used = sum(sizes)
        # The epoch's random numbers, drawn up front in the order a batch-by-batch draw would take them
        # (per batch: dy, dx, flip mask), then one copy to the device: no host-to-device copy per batch.
        rows = [order[:used]]
        if self.augments:
            draws = [draw_augmentation(size, self.crop_padding, self.flip, generator) for size in sizes]
            zeros = torch.zeros(used, dtype=torch.int64)
            dy = torch.cat([d[0] for d in draws]) if self.crop_padding else zeros
            dx = torch.cat([d[1] for d in draws]) if self.crop_padding else zeros
            mask = torch.cat([d[2] for d in draws]).long() if self.flip else zeros
            rows += [dy, dx, mask]
        packed = self._to_device(torch.stack(rows))  # (1 or 4, used) int64
        side = 2 * self.crop_padding + 1
        start = 0
        for size in sizes:
            part = packed[:, start : start + size]
            start += size
            idx = part[0]
            x = self.images[idx].float().div_(255)
            crop = flip = None
            if self.augments:
                dy, dx, flip = part[1], part[2], part[3].bool()
                x = crop_flip(x, self.crop_padding, dy if self.crop_padding else None,
                              dx if self.crop_padding else None, flip if self.flip else None)
                crop = dy * side + dx
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield Batch(x, self.labels[idx], idx, crop=crop, flip=flip)
