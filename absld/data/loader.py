"""The tensor loader: uint8 images on the device, augmented whole batches at a time (airbench style)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import Tensor



def random_crop_flip(
    images: Tensor, padding: int, flip: bool, generator: torch.Generator
) -> Tensor:
    """Random crop with zero padding and horizontal flip on a whole batch ``(B, C, H, W)``.

    The random numbers come from a CPU ``generator`` (so a run is the same on every device) and
    the gathering happens on the batch's device.
    """
    batch, _, height, width = images.shape
    out = images
    if padding > 0:
        padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(images.device)
        dx = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(images.device)
        rows = dy[:, None] + torch.arange(height, device=images.device)  # (B, H)
        cols = dx[:, None] + torch.arange(width, device=images.device)  # (B, W)
        batch_idx = torch.arange(batch, device=images.device)[:, None, None, None]
        chan_idx = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        out = padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        mask = (torch.rand(batch, generator=generator) < 0.5).to(images.device)
        out = torch.where(mask[:, None, None, None], out.flip(3), out)
    return out


@dataclass
class Batch:
    x: Tensor  # (B, C, H, W) float in [0, 1]
    y: Tensor  # (B,) int64
    index: Tensor  # (B,) positions in the loader's dataset


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

    def __iter__(self) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        order = order.to(self.images.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images[idx].float().div_(255)
            if self.crop_padding or self.flip:
                x = random_crop_flip(x, self.crop_padding, self.flip, generator)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield Batch(x, self.labels[idx], idx)
