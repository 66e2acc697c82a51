"""``data``: which dataset, its splits and augmentation."""

from __future__ import annotations


from pydantic import (
    Field,
)

from ..vocab import DatasetName
from .common import NonNegInt, PosInt, Section


class AugmentConfig(Section):
    crop_padding: NonNegInt = 4
    flip: bool = True


class SyntheticConfig(Section):
    """The generated ``synthetic`` dataset (pipeline checks in seconds; no download, no results)."""

    train_per_class: PosInt = 20
    test_per_class: PosInt = 6
    seed: NonNegInt = 0


class DataConfig(Section):
    dataset: DatasetName = "cifar10"
    root: str = "data/raw"
    """Where torchvision's archives are looked for (and downloaded to, when allowed)."""
    source_dir: str | None = None
    """An existing directory holding the dataset's files, e.g. /usr/share/datasets/fashion-mnist."""
    download: bool = True
    verify_md5: bool = True
    """Check the CIFAR archives against torchvision's md5 sums."""
    val_per_class: NonNegInt = 100
    """Stratified validation images per class, held out from training (0: no validation split)."""
    train_per_class: PosInt | None = None
    """Stratified subset of the training set per class (small profiles); null: all."""
    split_seed: NonNegInt = 0
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    """Sizes of data.dataset: synthetic (ignored for the real datasets)."""
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
