"""Datasets: a registry, readers of the on-disk formats, the prepared layout, and a tensor loader.

The prepared form of a dataset (``absld prepare``) is a directory of uint8 image arrays
``(N, C, H, W)``, int64 label arrays and ``manifest.json`` (sha256 of every file, class names,
split sizes, per-channel mean/std of the training images, and the stratified held-out validation
indices). Training reads it into a :class:`TensorLoader`, which keeps the images as uint8 on the
device and augments whole batches there (airbench style): no per-image Python on the hot path.
"""

from __future__ import annotations

import gzip
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from .io import atomic_dir, md5_file, sha256_file, write_json, write_npy
from .errors import UserError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class DataError(UserError, RuntimeError):
    """The data cannot be found, read or trusted; the message says how to fix it."""


# ----------------------------------------------------------------------------------------------
# registry
@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    class_names: tuple[str, ...] = field(default=())


CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec("cifar10", 10, (3, 32, 32), CIFAR10_CLASSES),
    "cifar100": DatasetSpec("cifar100", 100, (3, 32, 32)),  # names read from the archive's meta
    "fashion-mnist": DatasetSpec("fashion-mnist", 10, (1, 28, 28), FASHION_MNIST_CLASSES),
    "synthetic": DatasetSpec("synthetic", 10, (3, 32, 32), (
        "alfa", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett")),
}
"""The readable datasets, keyed by the names of :data:`absld.vocab.DATASET_NAMES` (a test holds them equal)."""

# torchvision's md5 sums of the extracted CIFAR python files (torchvision.datasets.CIFAR10/100)
_CIFAR_FILES = {
    "cifar10": {
        "dir": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "label_key": "labels",
        "names_key": "label_names",
    },
    "cifar100": {
        "dir": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "label_key": "fine_labels",
        "names_key": "fine_label_names",
    },
}


def _torchvision_md5(dataset: str) -> dict[str, str]:
    from torchvision import datasets as tvd

    cls = tvd.CIFAR10 if dataset == "cifar10" else tvd.CIFAR100
    entries = list(cls.train_list) + list(cls.test_list) + [[cls.meta["filename"], cls.meta["md5"]]]
    return {name: md5 for name, md5 in entries}


# ----------------------------------------------------------------------------------------------
# raw readers
@dataclass
class RawDataset:
    train_images: np.ndarray  # (N, C, H, W) uint8
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    source: str


def _missing_message(dataset: str, looked: list[Path], why: str) -> str:
    archive = {
        "cifar10": "cifar-10-python.tar.gz (extracted: cifar-10-batches-py/)",
        "cifar100": "cifar-100-python.tar.gz (extracted: cifar-100-python/)",
        "fashion-mnist": "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]",
    }[dataset]
    lines = [
        f"dataset {dataset!r} not found ({why}). Looked in: " + ", ".join(str(p) for p in looked),
        "Ways to fix it:",
        f"  - place {archive} under one of those directories;",
        "  - set data.source_dir to a directory that holds those files;",
    ]
    if dataset == "fashion-mnist":
        lines.append(
            "  - install the Debian package (apt-get install dataset-fashion-mnist) and set "
            "data.source_dir: /usr/share/datasets/fashion-mnist;"
        )
    lines.append("  - connect to the internet and keep data.download: true.")
    lines.append("No other dataset is substituted.")
    return "\n".join(lines)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as handle:
        return pickle.load(handle, encoding="latin1")


def _read_cifar_dir(dataset: str, base: Path, verify_md5: bool) -> RawDataset:
    files = _CIFAR_FILES[dataset]
    folder = base / files["dir"]
    if verify_md5:
        expected = _torchvision_md5(dataset)
        for name in files["train"] + files["test"] + [files["meta"]]:
            got = md5_file(folder / name)
            if got != expected[name]:
                raise DataError(
                    f"{folder / name}: md5 {got} differs from torchvision's {expected[name]}; the "
                    "file is corrupt or not the official archive (delete it and download again, or "
                    "set data.verify_md5: false for a deliberately custom dataset)"
                )

    def read(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for name in names:
            entry = _unpickle(folder / name)
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(entry[files["label_key"]], dtype=np.int64))
        return np.concatenate(images), np.concatenate(labels)

    train_x, train_y = read(files["train"])
    test_x, test_y = read(files["test"])
    meta = _unpickle(folder / files["meta"])
    names = [str(n) for n in meta.get(files["names_key"], [])]
    return RawDataset(train_x, train_y, test_x, test_y, names, str(folder))


def _find_cifar(dataset: str, dirs: list[Path]) -> Path | None:
    folder = _CIFAR_FILES[dataset]["dir"]
    for base in dirs:
        if (base / folder).is_dir():
            return base
    return None


_IDX = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _idx_path(base: Path, stem: str) -> Path | None:
    for candidate in (base / stem, base / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(dirs: list[Path]) -> Path | None:
    for base in dirs:
        if all(_idx_path(base, stem) for stem in _IDX.values()):
            return base
    return None


def _read_fashion(base: Path) -> RawDataset:
    arrays = {key: _read_idx(_idx_path(base, stem)) for key, stem in _IDX.items()}  # type: ignore[arg-type]
    return RawDataset(
        arrays["train_images"][:, None].copy(),
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"][:, None].copy(),
        arrays["test_labels"].astype(np.int64),
        list(FASHION_MNIST_CLASSES),
        str(base),
    )


def synthetic_images(labels: np.ndarray, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Learnable uint8 images: noise in [0, 96), plus a brighter band of rows whose position is the
    class, plus a class-dependent tint of one channel."""
    rng = np.random.default_rng(seed)
    channels, height, width = shape
    images = rng.integers(0, 96, size=(len(labels), channels, height, width)).astype(np.int16)
    band = height // 10 or 1
    for k in np.unique(labels):
        rows = slice((k * band) % height, (k * band) % height + band + 2)
        images[labels == k, :, rows, :] += 120
        images[labels == k, k % channels] += 20 * (k // channels)
    return np.clip(images, 0, 255).astype(np.uint8)


def make_synthetic(train_per_class: int, test_per_class: int, seed: int) -> RawDataset:
    """The ``synthetic`` dataset: CIFAR-shaped, 10 classes, generated from ``seed`` (nothing to
    download; for pipeline checks in seconds, never for results)."""
    spec = DATASETS["synthetic"]
    rng = np.random.default_rng(seed)
    train_labels = rng.permutation(np.repeat(np.arange(spec.num_classes), train_per_class))
    test_labels = np.repeat(np.arange(spec.num_classes), test_per_class)
    rng.shuffle(test_labels)
    return RawDataset(
        train_images=synthetic_images(train_labels, spec.image_shape, seed + 1),
        train_labels=train_labels.astype(np.int64),
        test_images=synthetic_images(test_labels, spec.image_shape, seed + 2),
        test_labels=test_labels.astype(np.int64),
        class_names=list(spec.class_names),
        source=f"synthetic(train_per_class={train_per_class}, test_per_class={test_per_class}, seed={seed})",
    )


def read_raw(
    dataset: str, root: str | Path, source_dir: str | Path | None, download: bool, verify_md5: bool,
    *, synthetic: tuple[int, int, int] = (20, 6, 0),
) -> RawDataset:
    """Find the dataset on disk (``source_dir`` first, then ``root``), downloading if allowed.
    ``synthetic`` (train and test images per class, seed) sizes the generated ``synthetic`` dataset.

    Raises :class:`DataError` listing the ways to fix it; never substitutes another dataset.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if dataset == "synthetic":
        return make_synthetic(*synthetic)
    root = Path(root)
    if source_dir is not None and not Path(source_dir).is_dir():
        raise DataError(f"data.source_dir {str(source_dir)!r} is not a directory")
    dirs = [Path(source_dir)] if source_dir is not None else []
    if dataset == "fashion-mnist":
        dirs += [root, root / "FashionMNIST" / "raw"]
        found = _find_idx(dirs)
    else:
        dirs += [root]
        found = _find_cifar(dataset, dirs)
    if found is None and source_dir is None and download:
        _download(dataset, root, dirs)
        found = _find_idx(dirs) if dataset == "fashion-mnist" else _find_cifar(dataset, dirs)
    if found is None:
        why = "download disabled" if not download else ("data.source_dir is set" if source_dir else "")
        raise DataError(_missing_message(dataset, dirs, why or "not on disk"))
    raw = _read_fashion(found) if dataset == "fashion-mnist" else _read_cifar_dir(dataset, found, verify_md5)
    _check_raw(dataset, raw)
    return raw


def _download(dataset: str, root: Path, dirs: list[Path]) -> None:
    from torchvision import datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "fashion-mnist": tvd.FashionMNIST}[dataset]
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as exc:  # network errors come in many types
        raise DataError(
            _missing_message(dataset, dirs, f"download failed: {exc.__class__.__name__}: {exc}")
        ) from None


def _check_raw(dataset: str, raw: RawDataset) -> None:
    spec = DATASETS[dataset]
    for split, images, labels in (
        ("train", raw.train_images, raw.train_labels),
        ("test", raw.test_images, raw.test_labels),
    ):
        if images.shape[1:] != spec.image_shape:
            raise DataError(f"{raw.source}: {split} images have shape {images.shape[1:]}, "
                            f"expected {spec.image_shape} for {dataset}")
        if len(images) != len(labels):
            raise DataError(f"{raw.source}: {len(images)} {split} images but {len(labels)} labels")
        if labels.min() < 0 or labels.max() >= spec.num_classes:
            raise DataError(f"{raw.source}: {split} labels outside 0..{spec.num_classes - 1}")
    if len(raw.class_names) != spec.num_classes:
        raw.class_names = list(spec.class_names) or [f"class{k}" for k in range(spec.num_classes)]


# ----------------------------------------------------------------------------------------------
# splits and the prepared layout
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
) -> dict:
    """Read ``dataset`` and write its prepared form to ``out_dir`` atomically; return the manifest."""
    raw = read_raw(dataset, root, source_dir, download, verify_md5, synthetic=synthetic)
    spec = DATASETS[dataset]
    train_idx, val_idx = stratified_split(
        raw.train_labels, spec.num_classes, val_per_class, train_per_class, split_seed
    )
    pixels = raw.train_images[train_idx].astype(np.float64) / 255.0  # (N, C, H, W)
    mean = pixels.mean(axis=(0, 2, 3))
    std = pixels.std(axis=(0, 2, 3))
    del pixels
    arrays = {
        "train_images.npy": raw.train_images,
        "train_labels.npy": raw.train_labels,
        "test_images.npy": raw.test_images,
        "test_labels.npy": raw.test_labels,
    }
    with atomic_dir(out_dir) as tmp:
        for name, array in arrays.items():
            write_npy(tmp / name, np.ascontiguousarray(array))
        manifest = {
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

    manifest: dict
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

    def training_subset(self, per_class: int | None, seed: int,
                        key: str = "train_per_class") -> tuple[np.ndarray, np.ndarray]:
        """The training images and labels of :func:`class_subset` (all when ``per_class`` is None)."""
        index = class_subset(self.train_labels, self.num_classes, per_class, seed, key)
        return self.train_images[index], self.train_labels[index]


MANIFEST_KEYS = ("sha256", "class_names", "train_indices", "val_indices")


def read_manifest(directory: str | Path, keys: tuple[str, ...] = MANIFEST_KEYS) -> dict:
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


# ----------------------------------------------------------------------------------------------
# the tensor loader
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
