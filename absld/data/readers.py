"""Readers of the on-disk formats (CIFAR's pickles, Fashion-MNIST's idx files), the download, and the generated synthetic dataset."""

from __future__ import annotations

import gzip
import zlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import md5_file
from .base import DataError
from .registry import DATASETS
from .registry import FASHION_MNIST_CLASSES
from .registry import _CIFAR_FILES
from .registry import _torchvision_md5


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


def _unreadable(path: Path, exc: Exception) -> DataError:
    detail = str(exc).splitlines()[0][:120] if str(exc) else ""
    return DataError(f"{path} cannot be read ({type(exc).__name__}{': ' + detail if detail else ''}); the file is "
                     "truncated or corrupt: delete it and place (or download) the dataset again")


def _unpickle(path: Path, keys: tuple[str, ...] = ()) -> dict:
    """A CIFAR batch file (a pickled dict holding ``keys``)."""
    try:
        with open(path, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
        missing = [key for key in keys if key not in entry]
        if missing:
            raise KeyError(f"no {', '.join(missing)}")
        return entry
    except (EOFError, pickle.UnpicklingError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _unreadable(path, exc) from None


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
            entry = _unpickle(folder / name, ("data", files["label_key"]))
            try:
                images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            except ValueError as exc:
                raise _unreadable(folder / name, exc) from None
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
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise _unreadable(path, exc) from None
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    try:
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except ValueError as exc:
        raise _unreadable(path, exc) from None


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
