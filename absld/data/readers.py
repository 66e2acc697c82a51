"""Readers of the on-disk formats (CIFAR's pickles, Fashion-MNIST's idx files, Tiny-ImageNet's
JPEG folder or zip), the download, and the generated synthetic dataset."""

from __future__ import annotations

import gzip
import io
import os
import zlib
import pickle
import zipfile
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
        "tinyimagenet": f"{_TINY_ZIP} (extracted: {_TINY_DIR}/)",
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
    if dataset == "tinyimagenet":
        lines.append(f"  - download {TINY_IMAGENET_URL} (md5 {TINY_IMAGENET_MD5}) yourself and place it there;")
    lines.append("  - connect to the internet and keep data.download: true.")
    lines.append("No other dataset is substituted.")
    return "\n".join(lines)


def _unreadable(path: Path | str, exc: Exception) -> DataError:
    detail = str(exc).splitlines()[0][:120] if str(exc) else ""
    return DataError(f"{path} cannot be read ({type(exc).__name__}{': ' + detail if detail else ''}); the file is "
                     "truncated or corrupt: delete it and place (or download) the dataset again")


def _check_md5(path: Path, expected: str, whose: str) -> None:
    """A :class:`DataError` when ``path``'s md5 is not ``expected`` (``whose``: "torchvision's", ...)."""
    got = md5_file(path)
    if got != expected:
        raise DataError(
            f"{path}: md5 {got} differs from {whose} {expected}; the file is corrupt or not the official "
            "archive (delete it and download again, or set data.verify_md5: false for a deliberately "
            "custom dataset)"
        )


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
            _check_md5(folder / name, expected[name], "torchvision's")

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


TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
_TINY_DIR = "tiny-imagenet-200"
_TINY_ZIP = f"{_TINY_DIR}.zip"


class _TinyFiles:
    """The files of ``tiny-imagenet-200/``, from its extracted folder or straight from the official
    zip (no extraction). Names are relative to ``tiny-imagenet-200/``, e.g. ``val/val_annotations.txt``."""

    def __init__(self, path: Path):
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._folders: dict[str, list[str]] = {}
        if path.is_dir():
            return
        try:
            self._zip = zipfile.ZipFile(path)
            members = self._zip.namelist()
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
            raise _unreadable(path, exc) from None
        prefix = f"{_TINY_DIR}/"
        for member in members:  # one pass: the folder listings of 100,000 images
            if member.startswith(prefix) and not member.endswith("/"):
                folder, _, name = member[len(prefix):].rpartition("/")
                self._folders.setdefault(folder, []).append(name)

    def where(self, name: str) -> str:
        """``name`` as a message shows it: a path, or the zip and its member."""
        if self._zip is None:
            return str(self.path / name)
        return f"{self.path} (member {_TINY_DIR}/{name})"

    def _missing(self, name: str) -> DataError:
        return DataError(f"{self.where(name)} is missing: {self.path} is not the whole official "
                         f"Tiny-ImageNet (delete it and place or download {_TINY_ZIP} again)")

    def listdir(self, folder: str) -> list[str]:
        """The sorted names of the files in ``folder``."""
        if self._zip is not None:
            if folder not in self._folders:
                raise self._missing(folder + "/")
            return sorted(self._folders[folder])
        try:
            return sorted(entry.name for entry in os.scandir(self.path / folder) if entry.is_file())
        except FileNotFoundError:
            raise self._missing(folder + "/") from None
        except OSError as exc:
            raise _unreadable(self.where(folder), exc) from None

    def read(self, name: str) -> bytes:
        try:
            if self._zip is None:
                return (self.path / name).read_bytes()
            return self._zip.read(f"{_TINY_DIR}/{name}")
        except (FileNotFoundError, KeyError):
            raise self._missing(name) from None
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
            raise _unreadable(self.where(name), exc) from None

    def text_lines(self, name: str) -> list[str]:
        """The non-blank lines of a text file, without their line ends."""
        try:
            text = self.read(name).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _unreadable(self.where(name), exc) from None
        return [line for line in text.splitlines() if line.strip()]

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _find_tiny(dirs: list[Path]) -> Path | None:
    """The first ``tiny-imagenet-200/`` folder or, in the same directory, ``tiny-imagenet-200.zip``."""
    for base in dirs:
        if (base / _TINY_DIR).is_dir():
            return base / _TINY_DIR
        if (base / _TINY_ZIP).is_file():
            return base / _TINY_ZIP
    return None


def _tiny_classes(files: _TinyFiles) -> tuple[list[str], list[str]]:
    """The wnids (class k = line k of ``wnids.txt``) and their names: the first comma-separated
    name of each wnid's line in ``words.txt`` (the wnid itself where words.txt lacks it)."""
    wnids = [line.strip() for line in files.text_lines("wnids.txt")]
    expected = DATASETS["tinyimagenet"].num_classes
    if len(wnids) != expected or len(set(wnids)) != expected:
        raise DataError(f"{files.where('wnids.txt')} lists {len(set(wnids))} distinct classes, not {expected}: "
                        "not the official Tiny-ImageNet (delete it and place or download it again)")
    words = {}
    for line in files.text_lines("words.txt"):
        wnid, _, names = line.partition("\t")
        words[wnid.strip()] = names.split(",")[0].strip()
    return wnids, [words.get(wnid) or wnid for wnid in wnids]


def _tiny_train_files(files: _TinyFiles, wnids: list[str]) -> tuple[list[str], np.ndarray]:
    """``train/<wnid>/images/*.JPEG``, class by class in ``wnids.txt`` order, and their labels."""
    names, labels = [], []
    for k, wnid in enumerate(wnids):
        folder = f"train/{wnid}/images"
        images = [f"{folder}/{name}" for name in files.listdir(folder) if name.lower().endswith(".jpeg")]
        names += images
        labels += [k] * len(images)
    return names, np.asarray(labels, dtype=np.int64)


def _tiny_val_files(files: _TinyFiles, wnids: list[str]) -> tuple[list[str], np.ndarray]:
    """``val/images/*.JPEG`` in the order of ``val/val_annotations.txt`` (file, wnid, box) and their labels."""
    index = {wnid: k for k, wnid in enumerate(wnids)}
    names, labels = [], []
    annotations = "val/val_annotations.txt"
    for number, line in enumerate(files.text_lines(annotations), start=1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1].strip() not in index:
            raise DataError(f"{files.where(annotations)}, line {number}: {line[:80]!r} does not name an image "
                            "and a wnid of wnids.txt; the file is corrupt (delete the dataset and place it again)")
        names.append(f"val/images/{fields[0].strip()}")
        labels.append(index[fields[1].strip()])
    return names, np.asarray(labels, dtype=np.int64)


def _decode_jpeg(data: bytes, where: str, shape: tuple[int, int, int]) -> np.ndarray:
    """One JPEG as ``shape`` (C, H, W) uint8 RGB; grayscale (and CMYK) images are converted to RGB."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:  # no probing of other formats
            rgb = image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _unreadable(where, exc) from None
    if (rgb.height, rgb.width) != shape[1:]:
        raise DataError(f"{where} is {rgb.width}x{rgb.height}, not {shape[2]}x{shape[1]}: not an image of the "
                        "official Tiny-ImageNet (delete the dataset and place it again)")
    return np.asarray(rgb).transpose(2, 0, 1)


def _tiny_images(files: _TinyFiles, names: list[str]) -> np.ndarray:
    """Decode ``names`` into one preallocated (N, 3, 64, 64) uint8 array."""
    shape = DATASETS["tinyimagenet"].image_shape
    images = np.empty((len(names), *shape), dtype=np.uint8)
    for i, name in enumerate(names):
        images[i] = _decode_jpeg(files.read(name), files.where(name), shape)
    return images


def _read_tiny(path: Path, verify_md5: bool) -> RawDataset:
    """Tiny-ImageNet from ``tiny-imagenet-200/`` or ``tiny-imagenet-200.zip`` (read in place).

    Training split: ``train/`` (500 images per class). Test split: the official ``val/`` split
    (50 per class, labelled by ``val/val_annotations.txt``), because the official ``test/``
    split has no labels. With ``verify_md5`` the zip must be the official archive (an extracted
    folder has no checksums to compare).
    """
    if verify_md5 and path.is_file():
        _check_md5(path, TINY_IMAGENET_MD5, "the official archive's")
    files = _TinyFiles(path)
    try:
        wnids, class_names = _tiny_classes(files)
        train_names, train_labels = _tiny_train_files(files, wnids)
        test_names, test_labels = _tiny_val_files(files, wnids)
        train_images = _tiny_images(files, train_names)
        test_images = _tiny_images(files, test_names)
    finally:
        files.close()
    return RawDataset(train_images, train_labels, test_images, test_labels, class_names, str(path))


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
    dirs += [root, root / "FashionMNIST" / "raw"] if dataset == "fashion-mnist" else [root]
    found = _find(dataset, dirs)
    if found is None and source_dir is None and download:
        _download(dataset, root, dirs)
        found = _find(dataset, dirs)
    if found is None:
        why = "download disabled" if not download else ("data.source_dir is set" if source_dir else "")
        raise DataError(_missing_message(dataset, dirs, why or "not on disk"))
    if dataset == "fashion-mnist":
        raw = _read_fashion(found)
    elif dataset == "tinyimagenet":
        raw = _read_tiny(found, verify_md5)
    else:
        raw = _read_cifar_dir(dataset, found, verify_md5)
    _check_raw(dataset, raw)
    return raw


def _find(dataset: str, dirs: list[Path]) -> Path | None:
    """Where ``dataset``'s files are (what its reader takes), or None."""
    if dataset == "fashion-mnist":
        return _find_idx(dirs)
    if dataset == "tinyimagenet":
        return _find_tiny(dirs)
    return _find_cifar(dataset, dirs)


def _download(dataset: str, root: Path, dirs: list[Path]) -> None:
    from torchvision import datasets as tvd

    try:
        if dataset == "tinyimagenet":
            _download_tiny(root)
            return
        cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "fashion-mnist": tvd.FashionMNIST}[dataset]
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as exc:  # network errors come in many types
        raise DataError(
            _missing_message(dataset, dirs, f"download failed: {exc.__class__.__name__}: {exc}")
        ) from None


def _download_tiny(root: Path) -> None:
    """Download ``tiny-imagenet-200.zip`` into ``root`` (md5-checked; read in place, not extracted).
    It is written as ``.part`` and renamed when whole, so an interrupted download is never found."""
    from torchvision.datasets.utils import download_url

    part = root / f"{_TINY_ZIP}.part"
    try:
        download_url(TINY_IMAGENET_URL, str(root), filename=part.name, md5=TINY_IMAGENET_MD5)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, root / _TINY_ZIP)


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
