"""The dataset registry: names, class names, image shapes, and torchvision's CIFAR file lists and md5 sums."""

from __future__ import annotations

from dataclasses import dataclass, field




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
    "tinyimagenet": DatasetSpec("tinyimagenet", 200, (3, 64, 64)),  # names read from the archive's words.txt
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
