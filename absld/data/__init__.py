"""Datasets: a registry, readers of the on-disk formats, the prepared layout, and a tensor loader.

The prepared form of a dataset (``absld prepare``) is a directory of uint8 image arrays
``(N, C, H, W)``, int64 label arrays and ``manifest.json`` (sha256 of every file, class names,
split sizes, per-channel mean/std of the training images, and the stratified held-out validation
indices). Training reads it into a :class:`TensorLoader`, which keeps the images as uint8 on the
device and augments whole batches there (airbench style): no per-image Python on the hot path.
"""

from __future__ import annotations

# One module per job; `from absld import data` keeps every name.
from .base import (  # noqa: F401
    DataError,
    FORMAT_VERSION,
    MANIFEST,
)
from .registry import (  # noqa: F401
    CIFAR10_CLASSES,
    DATASETS,
    DatasetSpec,
    FASHION_MNIST_CLASSES,
)
from .readers import (  # noqa: F401
    RawDataset,
    make_synthetic,
    read_raw,
    synthetic_images,
)
from .prepared import (  # noqa: F401
    Manifest,
    MANIFEST_KEYS,
    Prepared,
    class_subset,
    load_prepared,
    prepare,
    read_manifest,
    stratified_split,
)
from .loader import (  # noqa: F401
    Batch,
    TensorLoader,
    crop_flip,
    draw_augmentation,
    random_crop_flip,
)
