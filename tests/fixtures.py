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


def write_cifar100(root: str | Path, train_per_class: int = 3, test_per_class: int = 1, seed: int = 0) -> Path:
    """Write ``root/cifar-100-python`` (train, test, meta) in torchvision's layout: dicts with ``data``
    uint8 (N, 3072), ``fine_labels`` and ``coarse_labels``; meta's ``fine_label_names``."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, per_class, offset in (("train", train_per_class, 1), ("test", test_per_class, 2)):
        labels = rng.permutation(np.repeat(np.arange(100), per_class))
        images = synthetic_images(labels, (3, 32, 32), seed + offset).reshape(len(labels), -1)
        _dump(folder / split, {"data": images, "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist()})
    _dump(folder / "meta", {"fine_label_names": [f"fine{k:02d}" for k in range(100)],
                            "coarse_label_names": [f"coarse{k:02d}" for k in range(20)]})
    return folder


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)


TINY_CLASS_BASE = 28
"""A Tiny-ImageNet fixture image of class k has a flat gray top-left 16x16 block at 28 + k."""


def tiny_class_of(image: np.ndarray) -> int:
    """The class a :func:`write_tiny_imagenet` image encodes, from a decoded (3, 64, 64) array
    (the middle of its flat block, which JPEG keeps exact)."""
    return int(round(float(image[:, 2:14, 2:14].mean()))) - TINY_CLASS_BASE


def write_tiny_imagenet(root: str | Path, train_per_class: int = 4, val_per_class: int = 2,
                        num_classes: int = 200, seed: int = 0, as_zip: bool = False) -> Path:
    """Write Tiny-ImageNet in the official archive's layout under ``root``: the folder
    ``tiny-imagenet-200/`` or, with ``as_zip``, ``tiny-imagenet-200.zip`` (members under
    ``tiny-imagenet-200/``); returns that folder or zip.

    wnids ``n%08d`` of random numbers, not sorted (class k = line k of wnids.txt, as in the real
    file), words.txt lines "wnid<TAB>class k, other name" sorted by wnid (plus wnids of no class), ``train/<wnid>/images/<wnid>_<i>.JPEG`` and ``<wnid>_boxes.txt``,
    ``val/images/val_<i>.JPEG`` in shuffled class order labelled by ``val/val_annotations.txt``
    (its lines shuffled too, so a reader must follow them, not the file names),
    and two unlabelled ``test/images``. Real JPEGs of :func:`synthetic_images` content whose
    top-left block encodes the class (:func:`tiny_class_of`); every seventh image is a grayscale
    ('L') JPEG.
    """
    from io import BytesIO
    import zipfile

    from PIL import Image

    rng = np.random.default_rng(seed)
    wnids = [f"n{v:08d}" for v in rng.choice(10**8 - 2, size=num_classes, replace=False)]
    train_labels = np.repeat(np.arange(num_classes), train_per_class)
    val_labels = rng.permutation(np.repeat(np.arange(num_classes), val_per_class))
    count = [0]

    def jpeg(pixels: np.ndarray, label: int) -> bytes:
        pixels = pixels.copy()
        pixels[:, :16, :16] = TINY_CLASS_BASE + label
        image = Image.fromarray(pixels.transpose(1, 2, 0))
        if count[0] % 7 == 0:
            image = image.convert("L")
        count[0] += 1
        buffer = BytesIO()
        image.save(buffer, "JPEG", quality=90)
        return buffer.getvalue()

    files: dict[str, bytes] = {
        "wnids.txt": "".join(f"{w}\n" for w in wnids).encode(),
        "words.txt": "".join(sorted(f"{w}\tclass {k}, other name\n" for k, w in
                                    enumerate(["n99999998", *wnids, "n99999999"], start=-1))).encode(),
    }
    train = synthetic_images(train_labels, (3, 64, 64), seed + 1)
    for i, k in enumerate(train_labels):
        files[f"train/{wnids[k]}/images/{wnids[k]}_{i % train_per_class}.JPEG"] = jpeg(train[i], int(k))
    for k, wnid in enumerate(wnids):
        files[f"train/{wnid}/{wnid}_boxes.txt"] = "".join(
            f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n" for i in range(train_per_class)).encode()
    val = synthetic_images(val_labels, (3, 64, 64), seed + 2)
    annotations = []
    for i, k in enumerate(val_labels):
        files[f"val/images/val_{i}.JPEG"] = jpeg(val[i], int(k))
        annotations.append(f"val_{i}.JPEG\t{wnids[k]}\t0\t3\t60\t61\n")
    files["val/val_annotations.txt"] = "".join(rng.permutation(annotations)).encode()
    for i, pixels in enumerate(synthetic_images(np.zeros(2, dtype=np.int64), (3, 64, 64), seed + 3)):
        files[f"test/images/test_{i}.JPEG"] = jpeg(pixels, 0)

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if as_zip:
        path = root / "tiny-imagenet-200.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, content in files.items():
                archive.writestr(f"tiny-imagenet-200/{name}", content)
        return path
    folder = root / "tiny-imagenet-200"
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder
