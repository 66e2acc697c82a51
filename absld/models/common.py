"""What every architecture shares: input normalisation, constructor metadata, pooling.

Models take images in [0, 1] and normalise them inside ``forward`` (RobustBench's
convention), so an attack's eps is always measured in pixel space. The per-channel
mean/std live in buffers registered with ``persistent=False``: they follow the model
across devices and dtypes but never appear in ``state_dict``, so a model's keys are
exactly those of the reference implementation it reproduces (e.g. the public TRADES
WRN-34-10 checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
import torch.nn.functional as F
from ..errors import UserError

__all__ = [
    "ImageClassifier",
    "ModelError",
    "adaptive_avg_pool2d",
    "global_avg_pool2d",
]


class ModelError(UserError, ValueError):
    """A user error about models or checkpoints; its message is one line meant for the user."""


def _channel_stats(
    name: str, values: Sequence[float] | None, in_channels: int
) -> tuple[float, ...] | None:
    """Validate one per-channel statistic (mean or std) and return it as a tuple of floats."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ModelError(
            f"{name} must be a sequence of {in_channels} numbers or None, got {values!r}"
        )
    try:
        stats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ModelError(f"{name} must contain numbers only, got {list(values)!r}") from None
    if len(stats) != in_channels:
        raise ModelError(
            f"{name} has {len(stats)} values but the model has in_channels={in_channels}; "
            f"give one value per channel"
        )
    return stats


class ImageClassifier(nn.Module):
    """Base class of every registered model: normalise the [0, 1] input, then classify.

    Subclasses build their layers after calling ``super().__init__`` and implement
    :meth:`forward_normalized`, which receives the already-normalised input.

    Constructor arguments are kept as plain Python attributes (``arch``, ``num_classes``,
    ``in_channels``, ``mean``, ``std``) so that ``save_checkpoint`` can record them and
    ``load_checkpoint`` can rebuild the model from the registry.

    Args:
        arch: the registry name that rebuilds this model (e.g. ``"resnet18"``).
        num_classes: number of output logits.
        in_channels: number of input image channels.
        mean: per-channel mean subtracted from the input, or None for no normalisation.
        std: per-channel standard deviation dividing the input, or None for none.
            mean and std are given together or not at all.
    """

    def __init__(
        self,
        *,
        arch: str,
        num_classes: int,
        in_channels: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelError(f"{name} must be a positive integer, got {value!r}")
        if (mean is None) != (std is None):
            raise ModelError("give both mean and std, or neither (no normalisation)")
        mean_t = _channel_stats("mean", mean, in_channels)
        std_t = _channel_stats("std", std, in_channels)
        if std_t is not None and min(std_t) <= 0:
            raise ModelError(f"std must be positive in every channel, got {list(std_t)}")

        self.arch: str = arch
        self.num_classes: int = num_classes
        self.in_channels: int = in_channels
        self.mean: tuple[float, ...] | None = mean_t
        self.std: tuple[float, ...] | None = std_t
        if mean_t is not None and std_t is not None:
            # (1, C, 1, 1); not persistent: never part of state_dict.
            self.register_buffer(
                "input_mean", torch.tensor(mean_t).view(1, -1, 1, 1), persistent=False
            )
            self.register_buffer(
                "input_std", torch.tensor(std_t).view(1, -1, 1, 1), persistent=False
            )

    def normalize(self, x: Tensor) -> Tensor:
        """Map a [0, 1] image batch (B, C, H, W) to the network's input space."""
        if self.mean is None:
            return x
        return (x - self.input_mean) / self.input_std

    def forward_normalized(self, x: Tensor) -> Tensor:
        """Logits (B, num_classes) of an already-normalised batch (B, C, H, W)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, num_classes) of a batch of images (B, C, H, W) in [0, 1]."""
        return self.forward_normalized(self.normalize(x))

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch!r}, num_classes={self.num_classes}, "
            f"in_channels={self.in_channels}, mean={self.mean}, std={self.std}"
        )


def global_avg_pool2d(x: Tensor) -> Tensor:
    """Average over the spatial dimensions: (B, C, H, W) -> (B, C), for any H, W.

    A plain ``mean`` is used rather than ``F.adaptive_avg_pool2d`` so the backward pass is
    deterministic on CUDA (``torch.use_deterministic_algorithms`` accepts it).
    """
    return x.mean(dim=(2, 3))


def _pooling_matrix(in_size: int, out_size: int, like: Tensor) -> Tensor:
    """(out_size, in_size) averaging matrix with PyTorch's adaptive-pooling windows.

    Output cell i averages input positions [floor(i * n / m), ceil((i + 1) * n / m)).
    """
    cell = torch.arange(out_size, device=like.device)
    start = (cell * in_size) // out_size  # (m,)
    end = ((cell + 1) * in_size + out_size - 1) // out_size  # (m,)
    position = torch.arange(in_size, device=like.device)  # (n,)
    window = (position >= start[:, None]) & (position < end[:, None])  # (m, n)
    return window.to(like.dtype) / (end - start).to(like.dtype)[:, None]


def adaptive_avg_pool2d(x: Tensor, output_size: int) -> Tensor:
    """Same result as ``F.adaptive_avg_pool2d(x, output_size)``, deterministic on CUDA.

    PyTorch's adaptive average pooling has no deterministic backward on CUDA (it raises under
    ``torch.use_deterministic_algorithms(True)``). When the input size is a multiple of the
    output size this is a plain ``avg_pool2d``; otherwise the (possibly overlapping) windows
    are applied as two small averaging matrices.
    """
    height, width = x.shape[-2:]
    if height % output_size == 0 and width % output_size == 0:
        return F.avg_pool2d(x, kernel_size=(height // output_size, width // output_size))
    rows = _pooling_matrix(height, output_size, x)  # (m, H)
    cols = _pooling_matrix(width, output_size, x)  # (m, W)
    return torch.einsum("bchw,ih,jw->bcij", x, rows, cols)
