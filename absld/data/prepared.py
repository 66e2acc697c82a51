"""The prepared layout (``absld prepare``): stratified splits, the arrays, ``manifest.json`` and their reading back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from ..io import atomic_dir, sha256_file, write_json, write_npy
from .base import DataError
from .base import FORMAT_VERSION
from .base import MANIFEST
from .readers import read_raw
from .registry import DATASETS


class Manifest(TypedDict):
    """``manifest.json`` of a prepared dataset, as :func:`prepare` writes it."""

    format: int
    dataset: str
    source: str
    num_classes: int
    image_shape: list[int]
    class_names: list[str]
    sizes: dict[str, int]  # train_all, train, val, test
    mean: list[float]
    std: list[float]
    split: dict[str, Any]  # seed, val_per_class, train_per_class
    train_indices: list[int]
    val_indices: list[int]
    sha256: dict[str, str]  # file name -> sha256


def _ranked_by_class(labels: np.ndarray, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded shuffle grouped by class: ``order`` (indices), ``rank`` (each position's place
    within its class) and the class ``counts``; the first k of every class is a stratified draw."""
    order = np.random.default_rng(seed).permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]  # grouped by class, shuffled within
    counts = np.bincount(labels, minlength=num_classes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(labels)) - np.repeat(starts, counts)  # position within its class
    return order, rank, counts


def stratified_split(
    labels: np.ndarray, num_classes: int, val_per_class: int, train_per_class: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per class: shuffle (seeded), the first ``val_per_class`` go to validation, the next
    ``train_per_class`` (all remaining when None) to training. Returns sorted index arrays."""
    order, rank, counts = _ranked_by_class(labels, num_classes, seed)
    too_small = np.flatnonzero(counts <= val_per_class)
    if too_small.size:
        k = int(too_small[0])
        raise DataError(
            f"class {k} has {counts[k]} training images, not more than data.val_per_class "
            f"({val_per_class}); lower data.val_per_class"
        )
    is_val = rank < val_per_class
    is_train = ~is_val
    if train_per_class is not None:
        is_train &= rank < val_per_class + train_per_class
    return np.sort(order[is_train]), np.sort(order[is_val])


def class_subset(labels: np.ndarray, num_classes: int, per_class: int | None, seed: int,
                 key: str = "train_per_class") -> np.ndarray:
    """Sorted indices of a stratified subset: per class, the first ``per_class`` samples of a
    seeded shuffle (all when None). Subsets of one seed are nested: a smaller ``per_class``
    picks a prefix of a larger one, so students trained on fewer images per class only see
    images their teacher saw. ``key`` names the param in the error message."""
    if per_class is None:
        return np.arange(len(labels))
    order, rank, counts = _ranked_by_class(labels, num_classes, seed)
    if counts.min() < per_class:
        k = int(counts.argmin())
        raise DataError(f"{key} = {per_class} but class {k} has only {counts[k]} prepared training "
                        f"images; lower {key} (or data.val_per_class)")
    return np.sort(order[rank < per_class])


_ONE_PASS_STATS = 2**28
"""Pixel values whose mean and std are taken from one float64 copy (2 GiB; CIFAR's 45,000 training
images are 138 million)."""


def _channel_mean_std(images: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (pixels in [0, 1]) of ``images[index]`` (N, C, H, W) uint8.

    Up to :data:`_ONE_PASS_STATS` pixel values (CIFAR, Fashion-MNIST) from one float64 copy, as
    before, so their manifests keep their bytes; larger sets (Tiny-ImageNet: 80,000 x 3 x 64 x 64,
    an ~8 GB copy) from exact per-channel histograms of batches of 1,024 images."""
    if len(index) * int(np.prod(images.shape[1:])) <= _ONE_PASS_STATS:
        pixels = images[index].astype(np.float64) / 255.0
        return pixels.mean(axis=(0, 2, 3)), pixels.std(axis=(0, 2, 3))
    counts = np.zeros((images.shape[1], 256), dtype=np.int64)
    for start in range(0, len(index), 1024):
        batch = images[index[start:start + 1024]]
        for c in range(images.shape[1]):
            counts[c] += np.bincount(batch[:, c].ravel(), minlength=256)
    values = np.arange(256) / 255.0
    total = counts.sum(axis=1)
    mean = counts @ values / total
    var = (counts * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / total
    return mean, np.sqrt(var)


def prepare(
    dataset: str,
    out_dir: str | Path,
    *,
    root: str | Path,
    source_dir: str | Path | None,
    download: bool,
    verify_md5: bool,
    val_per_class: int,
    train_per_class: int | None,
    split_seed: int,
    synthetic: tuple[int, int, int] = (20, 6, 0),
) -> Manifest:
    """Read ``dataset`` and write its prepared form to ``out_dir`` atomically; return the manifest."""
    raw = read_raw(dataset, root, source_dir, download, verify_md5, synthetic=synthetic)
    spec = DATASETS[dataset]
    train_idx, val_idx = stratified_split(
        raw.train_labels, spec.num_classes, val_per_class, train_per_class, split_seed
    )
    mean, std = _channel_mean_std(raw.train_images, train_idx)
    arrays = {
        "train_images.npy": raw.train_images,
        "train_labels.npy": raw.train_labels,
        "test_images.npy": raw.test_images,
        "test_labels.npy": raw.test_labels,
    }
    with atomic_dir(out_dir) as tmp:
        for name, array in arrays.items():
            write_npy(tmp / name, np.ascontiguousarray(array))
        manifest: Manifest = {
            "format": FORMAT_VERSION,
            "dataset": dataset,
            "source": raw.source,
            "num_classes": spec.num_classes,
            "image_shape": list(spec.image_shape),
            "class_names": raw.class_names,
            "sizes": {
                "train_all": int(len(raw.train_labels)),
                "train": int(len(train_idx)),
                "val": int(len(val_idx)),
                "test": int(len(raw.test_labels)),
            },
            "mean": [float(m) for m in mean],
            "std": [float(s) for s in std],
            "split": {
                "seed": split_seed,
                "val_per_class": val_per_class,
                "train_per_class": train_per_class,
            },
            "train_indices": train_idx.tolist(),
            "val_indices": val_idx.tolist(),
            "sha256": {name: sha256_file(tmp / name) for name in arrays},
        }
        write_json(tmp / MANIFEST, manifest)
    return manifest


@dataclass
class Prepared:
    """A prepared dataset in memory (numpy, CPU)."""

    manifest: Manifest
    train_images: np.ndarray  # (N_train, C, H, W) uint8, validation images removed
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def mean(self) -> list[float]:
        return list(self.manifest["mean"])

    @property
    def std(self) -> list[float]:
        return list(self.manifest["std"])

    @property
    def in_channels(self) -> int:
        return int(self.manifest["image_shape"][0])

    def classes_without_images(self, labels: np.ndarray) -> list[int]:
        """The classes (indices) of which ``labels`` holds no image (class accuracies need every one)."""
        return [int(k) for k in np.flatnonzero(np.bincount(labels, minlength=self.num_classes) == 0)]

    def training_subset(self, per_class: int | None, seed: int,
                        key: str = "train_per_class") -> tuple[np.ndarray, np.ndarray]:
        """The training images and labels of :func:`class_subset` (all when ``per_class`` is None)."""
        index = class_subset(self.train_labels, self.num_classes, per_class, seed, key)
        return self.train_images[index], self.train_labels[index]


MANIFEST_KEYS = ("sha256", "class_names", "train_indices", "val_indices")


def read_manifest(directory: str | Path, keys: tuple[str, ...] = MANIFEST_KEYS) -> Manifest:
    """The ``manifest.json`` of a prepared directory (the one reader of that file), with the
    ``keys`` the caller relies on checked (all of :data:`MANIFEST_KEYS` by default)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise DataError(f"{directory} is not a prepared dataset (no {MANIFEST}); run `absld prepare`")
    try:
        manifest = json.loads(path.read_text())
    except ValueError:
        raise DataError(f"{path} is not JSON; run `absld prepare` again") from None
    missing = [k for k in keys if k not in manifest]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; run `absld prepare` again")
    return manifest


def load_prepared(directory: str | Path, verify: bool = True) -> Prepared:
    """Load a directory written by :func:`prepare`, checking every file's sha256."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    arrays = {}
    for name, digest in manifest["sha256"].items():
        path = directory / name
        if not path.is_file():
            raise DataError(f"{path} is missing; run `absld prepare` again")
        if verify and sha256_file(path) != digest:
            raise DataError(f"{path}: sha256 differs from {MANIFEST}; run `absld prepare` again")
        arrays[name] = np.load(path, allow_pickle=False)
    train_x, train_y = arrays["train_images.npy"], arrays["train_labels.npy"]
    train_idx = np.asarray(manifest["train_indices"], dtype=np.int64)
    val_idx = np.asarray(manifest["val_indices"], dtype=np.int64)
    return Prepared(
        manifest,
        train_x[train_idx],
        train_y[train_idx],
        train_x[val_idx],
        train_y[val_idx],
        arrays["test_images.npy"],
        arrays["test_labels.npy"],
    )
