"""Datasets: readers, the prepared layout, stratified splits, clear errors, batch augmentation."""

from __future__ import annotations

import gzip
import json
import pickle

import numpy as np
import pytest
import torch

from absld import data
from absld.data import DataError, TensorLoader, load_prepared, random_crop_flip, stratified_split


def prepare_fixture(root, out, **kwargs):
    options = dict(root=root, source_dir=None, download=False, verify_md5=False, val_per_class=2,
                   train_per_class=None, split_seed=0)
    options.update(kwargs)
    return data.prepare("cifar10", out, **options)


def test_prepare_writes_arrays_and_a_manifest_with_checksums(cifar_fixture, tmp_path):
    out = tmp_path / "data" / "cifar10"
    manifest = prepare_fixture(cifar_fixture, out)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["sizes"] == {"train_all": 200, "train": 180, "val": 20, "test": 60}
    assert manifest["class_names"][0] == "airplane"
    assert set(manifest["sha256"]) == {"train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy"}
    prepared = load_prepared(out)
    assert prepared.train_images.shape == (180, 3, 32, 32) and prepared.train_images.dtype == np.uint8
    assert prepared.train_labels.dtype == np.int64
    assert len(prepared.mean) == 3 and all(0 < s < 1 for s in prepared.std)


def test_validation_split_is_stratified_and_disjoint_from_training(cifar_fixture, tmp_path):
    manifest = prepare_fixture(cifar_fixture, tmp_path / "out", val_per_class=3)
    val, train = set(manifest["val_indices"]), set(manifest["train_indices"])
    assert not val & train and len(val | train) == 200
    prepared = load_prepared(tmp_path / "out")
    assert np.bincount(prepared.val_labels, minlength=10).tolist() == [3] * 10


def test_train_subset_takes_the_same_number_of_images_per_class():
    labels = np.repeat(np.arange(4), 10)
    train, val = stratified_split(labels, 4, val_per_class=1, train_per_class=5, seed=1)
    assert np.bincount(labels[train]).tolist() == [5] * 4
    assert np.bincount(labels[val]).tolist() == [1] * 4


def test_a_tampered_prepared_file_is_detected(cifar_fixture, tmp_path):
    out = tmp_path / "out"
    prepare_fixture(cifar_fixture, out)
    labels = np.load(out / "test_labels.npy")
    labels[0] = (labels[0] + 1) % 10
    np.save(out / "test_labels.npy", labels)
    with pytest.raises(DataError, match="sha256"):
        load_prepared(out)


def test_missing_dataset_offline_lists_the_fixes_and_writes_nothing(tmp_path):
    out = tmp_path / "data" / "cifar10"
    with pytest.raises(DataError) as info:
        data.prepare("cifar10", out, root=tmp_path / "nothing", source_dir=None, download=False,
                     verify_md5=True, val_per_class=1, train_per_class=None, split_seed=0)
    message = str(info.value)
    assert "data.source_dir" in message and "internet" in message and "No other dataset" in message
    assert not (tmp_path / "data").exists()


def test_missing_fashion_mnist_suggests_the_debian_package(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        data.read_raw("fashion-mnist", tmp_path, None, download=False, verify_md5=False)


def test_md5_mismatch_names_the_file(cifar_fixture):
    with pytest.raises(DataError, match="test_batch: md5|data_batch_1: md5"):
        data.read_raw("cifar10", cifar_fixture, None, download=False, verify_md5=True)


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_is_read_from_idx_files_in_source_dir(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 10)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    raw = data.read_raw("fashion-mnist", tmp_path / "root", tmp_path, download=False, verify_md5=False)
    assert raw.train_images.shape == (30, 1, 28, 28) and raw.test_labels.tolist() == list(range(10))
    assert raw.class_names[0] == "T-shirt/top"


def test_cifar_reader_returns_channel_first_images(cifar_fixture):
    raw = data.read_raw("cifar10", cifar_fixture, None, download=False, verify_md5=False)
    with open(cifar_fixture / "cifar-10-batches-py" / "test_batch", "rb") as handle:
        first = pickle.load(handle)["data"][0]
    assert raw.test_images.shape == (60, 3, 32, 32)
    assert np.array_equal(raw.test_images[0].reshape(-1), first)


def test_augmentation_keeps_shape_range_and_dtype():
    images = torch.rand(16, 3, 32, 32)
    out = random_crop_flip(images, padding=4, flip=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0 and out.max() <= 1


def test_crop_is_a_shifted_window_of_the_zero_padded_image():
    image = torch.arange(1 * 1 * 6 * 6, dtype=torch.float32).reshape(1, 1, 6, 6) + 1
    gen = torch.Generator().manual_seed(3)
    out = random_crop_flip(image, padding=2, flip=False, generator=gen)
    padded = torch.nn.functional.pad(image, (2, 2, 2, 2))
    windows = [padded[..., dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
    assert any(torch.equal(out, w) for w in windows)


def test_flip_only_mirrors_images():
    images = torch.rand(64, 1, 5, 5)
    out = random_crop_flip(images, padding=0, flip=True, generator=torch.Generator().manual_seed(0))
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 64


def test_loader_epochs_are_reproducible_and_differ_from_each_other():
    images = np.random.default_rng(0).integers(0, 255, (50, 3, 8, 8), dtype=np.uint8)
    labels = np.arange(50) % 10
    loader = TensorLoader(images, labels, batch_size=16, shuffle=True, crop_padding=2, flip=True, seed=5)

    def epoch(e):
        loader.set_epoch(e)
        return [b.x for b in loader], [b.y for b in loader]

    x1, y1 = epoch(1)
    x1_again, y1_again = epoch(1)
    x2, _ = epoch(2)
    assert all(torch.equal(a, b) for a, b in zip(x1, x1_again))
    assert not torch.equal(x1[0], x2[0])
    assert sorted(torch.cat(y1).tolist()) == sorted(labels.tolist())
    assert len(loader) == 4 and x1[0].min() >= 0 and x1[0].max() <= 1


def test_class_subset_takes_per_class_images_nested_across_sizes():
    from absld.data import class_subset

    labels = np.repeat(np.arange(3), [7, 5, 6])
    np.random.default_rng(1).shuffle(labels)
    small = class_subset(labels, 3, 2, seed=4)
    large = class_subset(labels, 3, 4, seed=4)
    assert np.bincount(labels[small], minlength=3).tolist() == [2, 2, 2]
    assert np.bincount(labels[large], minlength=3).tolist() == [4, 4, 4]
    assert set(small) <= set(large)  # students' images are a subset of the teacher's
    assert not np.array_equal(class_subset(labels, 3, 2, seed=5), small)  # the seed matters
    assert np.array_equal(class_subset(labels, 3, None, seed=4), np.arange(len(labels)))


def test_class_subset_larger_than_a_class_names_the_key():
    from absld.data import DataError, class_subset

    labels = np.repeat(np.arange(2), [3, 5])
    with pytest.raises(DataError, match=r"distill.train_per_class = 4 but class 0 has only 3"):
        class_subset(labels, 2, 4, seed=0, key="distill.train_per_class")


def test_synthetic_dataset_is_generated_to_size_and_from_its_seed(tmp_path):
    """`data.dataset: synthetic` (the tiny profile on a fresh clone): no files needed, sizes per
    class as configured, the same images for the same seed and others for another."""
    def make(out, seed):
        return data.prepare("synthetic", tmp_path / out, root=tmp_path / "none", source_dir=None, download=False,
                            verify_md5=False, val_per_class=2, train_per_class=None, split_seed=0,
                            synthetic=(7, 3, seed))

    manifest = make("a", 0)
    assert manifest["sizes"] == {"train_all": 70, "train": 50, "val": 20, "test": 30}
    assert manifest["class_names"][:2] == ["alfa", "bravo"]
    labels = np.load(tmp_path / "a" / "test_labels.npy")
    assert np.bincount(labels).tolist() == [3] * 10
    assert make("b", 0)["sha256"] == manifest["sha256"]
    assert make("c", 1)["sha256"] != manifest["sha256"]
    for split in ("train_images", "test_images"):
        assert not np.array_equal(np.load(tmp_path / "a" / f"{split}.npy"), np.load(tmp_path / "c" / f"{split}.npy"))


def test_the_manifest_prepare_writes_has_exactly_the_typed_keys(tmp_path):
    manifest = data.prepare("synthetic", tmp_path / "s", root=tmp_path, source_dir=None, download=False,
                            verify_md5=False, val_per_class=1, train_per_class=None, split_seed=0)
    assert list(manifest) == list(data.Manifest.__annotations__)
    assert data.read_manifest(tmp_path / "s") == manifest


def test_csv_cells_with_commas_quotes_and_newlines_read_back_unchanged(tmp_path):
    import csv

    from absld.io import write_csv

    rows = [{"name": 'T-shirt, "top"', "value": 0.5, "note": "two\nlines"}, {"name": "plain", "value": 1}]
    write_csv(tmp_path / "t.csv", rows)
    with open(tmp_path / "t.csv", newline="") as handle:
        back = list(csv.DictReader(handle))
    assert back == [{"name": 'T-shirt, "top"', "value": "0.5", "note": "two\nlines"},
                    {"name": "plain", "value": "1", "note": ""}]
