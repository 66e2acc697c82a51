"""The model registry: architecture names, their constructors, and :func:`build_model`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from torch import nn

from absld.models.cifar_resnet import resnet56
from absld.models.common import ImageClassifier, ModelError
from absld.models.mobilenet_v2 import mobilenet_v2
from absld.models.preact_resnet import preact_resnet18
from absld.models.resnet import resnet18
from absld.models.small_cnn import mini_cnn, small_cnn, tiny_cnn
from absld.models.wide_resnet import wrn34_10

ModelName = Literal[
    "resnet18", "preact_resnet18", "mobilenet_v2", "wrn34_10", "resnet56", "small_cnn", "mini_cnn", "tiny_cnn"
]
"""The registered architecture names (use in config models so typos fail validation)."""


class ModelConstructor(Protocol):
    """The call shape every registry entry has."""

    def __call__(
        self,
        *,
        num_classes: int,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> ImageClassifier: ...


MODELS: dict[str, ModelConstructor] = {
    "resnet18": resnet18,
    "preact_resnet18": preact_resnet18,
    "mobilenet_v2": mobilenet_v2,
    "wrn34_10": wrn34_10,
    "resnet56": resnet56,
    "small_cnn": small_cnn,
    "mini_cnn": mini_cnn,
    "tiny_cnn": tiny_cnn,
}


def _allowed_names() -> str:
    return ", ".join(sorted(MODELS))


def build_model(
    arch: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImageClassifier:
    """Construct the registered architecture ``arch``.

    Args:
        arch: a registry name (see :data:`MODELS`).
        num_classes: number of output logits.
        in_channels: number of input image channels.
        mean, std: per-channel normalisation applied inside ``forward``; None for none.

    Raises:
        ModelError: for an unknown name or invalid arguments.
    """
    if not isinstance(arch, str) or arch not in MODELS:
        raise ModelError(f"unknown model architecture {arch!r}; choose one of: {_allowed_names()}")
    return MODELS[arch](num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
            continue
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, nn.Module):
            model = inner
            continue
        return model
