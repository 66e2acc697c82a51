"""Model registry and checkpoints.

Every model takes images in [0, 1] and normalises them inside ``forward`` (see
:mod:`absld.models.common`), so eps is always in pixel space.

A checkpoint (**contract**) is a plain dict that
``torch.load(path, weights_only=True)`` reads::

    {"arch": "resnet18", "num_classes": 10, "in_channels": 3,
     "mean": [..] or None, "std": [..] or None, "state_dict": {...}, **meta}

``load_checkpoint`` needs only ``arch``, ``num_classes`` and ``state_dict``; ``in_channels``
defaults to 3 and ``mean``/``std`` to None (no normalisation).
"""

from __future__ import annotations

from absld.models.checkpoint import check_fits, checkpoint_meta, load_checkpoint, load_weights, save_checkpoint
from absld.models.common import ImageClassifier, ModelError
from absld.models.registry import MODELS, ModelName, build_model, unwrap_model
from absld.models.small_cnn import mini_cnn, small_cnn, tiny_cnn  # noqa: F401 - re-exported constructors
from absld.models.wide_resnet import WideResNet

__all__ = [
    "MODELS",
    "ImageClassifier",
    "ModelError",
    "ModelName",
    "WideResNet",
    "build_model",
    "check_fits",
    "checkpoint_meta",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
    "unwrap_model",
]
