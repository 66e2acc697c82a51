"""Test fixtures written in torchvision's on-disk formats (no network, no real dataset)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from absld.data import synthetic_images

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: str | Path, train_per_class: int = 20, test_per_class: int = 6, seed: int = 0) -> Path:
    """Write ``root/cifar-10-batches-py`` (5 train batches, test_batch, batches.meta) in
    torchvision's layout: dicts with ``data`` uint8 (N, 3072) and ``labels``."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_labels = rng.permutation(np.repeat(np.arange(10), train_per_class))
    test_labels = np.repeat(np.arange(10), test_per_class)
    rng.shuffle(test_labels)
    train = synthetic_images(train_labels, (3, 32, 32), seed + 1).reshape(len(train_labels), -1)
    test = synthetic_images(test_labels, (3, 32, 32), seed + 2).reshape(len(test_labels), -1)
    for i, part in enumerate(np.array_split(np.arange(len(train_labels)), 5), start=1):
        _dump(folder / f"data_batch_{i}", {"data": train[part], "labels": train_labels[part].tolist()})
    _dump(folder / "test_batch", {"data": test, "labels": test_labels.tolist()})
    _dump(folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_vis": 3072})
    return folder


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)
