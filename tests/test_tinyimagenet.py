"""Tiny-ImageNet (64x64, 200 classes): the reader of the official layout (folder or zip), its
errors, the prepared arrays, and the models at 64x64. Fixtures are written here; no network."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from absld import data
from absld.data import DataError, load_prepared, read_raw
from absld.data import prepared as prepared_module
from absld.models import MODELS, build_model
from tests.fixtures import tiny_class_of, write_tiny_imagenet

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return write_tiny_imagenet(tmp_path_factory.mktemp("tiny") / "raw")


@pytest.fixture(scope="module")
def tiny_raw(tiny_folder):
    return read_raw("tinyimagenet", tiny_folder.parent, None, download=False, verify_md5=True)


def _read(root, **kwargs):
    options = dict(source_dir=None, download=False, verify_md5=False)
    options.update(kwargs)
    return read_raw("tinyimagenet", root, **options)


def test_folder_reads_uint8_images_labels_in_wnids_order_and_names_from_words(tiny_raw, tiny_folder):
    assert tiny_raw.train_images.shape == (800, 3, 64, 64) and tiny_raw.train_images.dtype == np.uint8
    assert tiny_raw.test_images.shape == (400, 3, 64, 64) and tiny_raw.test_images.dtype == np.uint8
    assert tiny_raw.train_labels.dtype == np.int64 and tiny_raw.test_labels.dtype == np.int64
    assert tiny_raw.train_labels.tolist() == np.repeat(np.arange(200), 4).tolist()
    assert np.bincount(tiny_raw.test_labels, minlength=200).tolist() == [2] * 200
    assert tiny_raw.class_names == [f"class {k}" for k in range(200)]
    assert tiny_raw.source == str(tiny_folder)
    # every image's pixels encode its class: the labels belong to the images they sit beside
    assert [tiny_class_of(x) for x in tiny_raw.train_images] == tiny_raw.train_labels.tolist()
    assert [tiny_class_of(x) for x in tiny_raw.test_images] == tiny_raw.test_labels.tolist()


def test_the_test_split_is_the_val_split_labelled_by_val_annotations(tiny_raw, tiny_folder):
    lines = (tiny_folder / "val" / "val_annotations.txt").read_text().splitlines()
    name, wnid = lines[5].split("\t")[:2]
    assert name != "val_5.JPEG"  # the lines are not in the order of the file names
    decoded = np.asarray(Image.open(tiny_folder / "val" / "images" / name).convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(tiny_raw.test_images[5], decoded)  # test image i: line i of val_annotations.txt
    wnids = (tiny_folder / "wnids.txt").read_text().split()
    assert wnids != sorted(wnids)  # class k is line k, not the k-th wnid in sorted order
    label = wnids.index(wnid)
    assert tiny_raw.test_labels[5] == label
    assert tiny_class_of(tiny_raw.test_images[5]) == label
    assert len(set(tiny_raw.test_labels[:20].tolist())) > 5  # shuffled: the order of the file matters


def test_grayscale_jpegs_become_three_equal_channels(tiny_raw, tiny_folder):
    names = [line.split("\t")[0] for line in (tiny_folder / "val" / "val_annotations.txt").read_text().splitlines()]
    gray = [i for i, name in enumerate(names) if Image.open(tiny_folder / "val" / "images" / name).mode == "L"]
    assert 10 < len(gray) < 400
    for i in gray:
        image = tiny_raw.test_images[i]
        assert (image[0] == image[1]).all() and (image[1] == image[2]).all()
    colour = [i for i in range(400) if i not in gray]
    assert any((tiny_raw.test_images[i][0] != tiny_raw.test_images[i][2]).any() for i in colour)
    wnid = (tiny_folder / "wnids.txt").read_text().split()[0]
    assert Image.open(tiny_folder / "train" / wnid / "images" / f"{wnid}_0.JPEG").mode == "L"
    first = tiny_raw.train_images[0]
    assert (first[0] == first[1]).all() and (first[0] == first[2]).all()


def test_the_zip_is_read_in_place_from_source_dir_with_the_same_arrays(tiny_raw, tmp_path):
    archive = write_tiny_imagenet(tmp_path / "src", as_zip=True)
    raw = _read(tmp_path / "empty-root", source_dir=tmp_path / "src")
    assert raw.source == str(archive)
    assert not (tmp_path / "src" / "tiny-imagenet-200").exists()  # nothing extracted
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        assert np.array_equal(getattr(raw, field), getattr(tiny_raw, field)), field
    assert raw.class_names == tiny_raw.class_names


def test_missing_dataset_names_the_zip_the_folder_the_directories_and_the_url(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def no_download(*args, **kwargs):
        raise AssertionError("a set data.source_dir must never download")

    monkeypatch.setattr(tv_utils, "download_url", no_download)
    with pytest.raises(DataError) as info:
        _read(tmp_path / "root")
    message = str(info.value)
    for text in ("tiny-imagenet-200.zip", "tiny-imagenet-200/", str(tmp_path / "root"), URL,
                 "90528d7ca1a48142e341f4ef8d21d0de", "download disabled", "data.source_dir"):
        assert text in message, text
    with pytest.raises(DataError, match="data.source_dir is set"):
        _read(tmp_path / "root", source_dir=tmp_path, download=True)


def test_prepare_of_a_missing_dataset_writes_nothing(tmp_path):
    with pytest.raises(DataError, match="tiny-imagenet-200.zip"):
        data.prepare("tinyimagenet", tmp_path / "out", root=tmp_path, source_dir=None, download=False,
                     verify_md5=False, val_per_class=1, train_per_class=None, split_seed=0)
    assert not (tmp_path / "out").exists()


def test_a_truncated_zip_is_a_data_error_naming_it(tmp_path):
    archive = write_tiny_imagenet(tmp_path, train_per_class=1, val_per_class=1, as_zip=True)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        _read(tmp_path)
    assert str(archive) in str(info.value)


def test_a_corrupt_zip_member_is_a_data_error_naming_the_member(tmp_path):
    archive = write_tiny_imagenet(tmp_path, train_per_class=1, val_per_class=1, as_zip=True)
    member = "tiny-imagenet-200/val/images/val_3.JPEG"
    with zipfile.ZipFile(archive) as handle:
        info = handle.getinfo(member)
    blob = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size // 2
    blob[start:start + 16] = bytes(16)  # inside the member's data: inflating it or its CRC fails
    archive.write_bytes(bytes(blob))
    with pytest.raises(DataError) as caught:
        _read(tmp_path)
    assert str(archive) in str(caught.value) and "val_3.JPEG" in str(caught.value)


def test_an_undecodable_or_wrongly_sized_jpeg_names_the_file(tmp_path):
    folder = write_tiny_imagenet(tmp_path, train_per_class=1, val_per_class=1)
    wnid = (folder / "wnids.txt").read_text().split()[7]
    bad = folder / "train" / wnid / "images" / f"{wnid}_0.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        _read(tmp_path)
    assert str(bad) in str(info.value)
    Image.new("RGB", (32, 32)).save(bad, "JPEG")
    with pytest.raises(DataError, match="32x32, not 64x64") as info:
        _read(tmp_path)
    assert str(bad) in str(info.value)


def test_a_missing_image_or_unknown_wnid_or_wrong_class_count_is_a_data_error(tmp_path):
    folder = write_tiny_imagenet(tmp_path / "a", train_per_class=1, val_per_class=1)
    (folder / "val" / "images" / "val_9.JPEG").unlink()
    with pytest.raises(DataError, match="val_9.JPEG is missing"):
        _read(tmp_path / "a")
    annotations = folder / "val" / "val_annotations.txt"
    wnid = (folder / "wnids.txt").read_text().split()[3]
    annotations.write_text(annotations.read_text().replace(wnid, "n99999999"))
    with pytest.raises(DataError, match="line .*n99999999"):
        _read(tmp_path / "a")
    write_tiny_imagenet(tmp_path / "b", train_per_class=1, val_per_class=1, num_classes=10)
    with pytest.raises(DataError, match="10 distinct classes, not 200"):
        _read(tmp_path / "b")


def test_md5_of_a_zip_that_is_not_the_official_archive_names_it(tmp_path):
    archive = write_tiny_imagenet(tmp_path, train_per_class=1, val_per_class=1, as_zip=True)
    with pytest.raises(DataError, match="differs from the official archive's 90528d7c") as info:
        _read(tmp_path, verify_md5=True)
    assert str(archive) in str(info.value)


def test_a_failed_download_is_a_data_error_listing_the_fixes(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def offline(url, root, filename=None, md5=None, **_):
        calls.append((url, root, filename, md5))
        (tmp_path / "root" / filename).write_bytes(b"partial")
        raise OSError("network unreachable")

    (tmp_path / "root").mkdir()
    monkeypatch.setattr(tv_utils, "download_url", offline)
    with pytest.raises(DataError, match="download failed: OSError: network unreachable") as info:
        _read(tmp_path / "root", download=True)
    assert "tiny-imagenet-200.zip" in str(info.value) and URL in str(info.value)
    assert calls and calls[0][0] == URL and calls[0][3] == "90528d7ca1a48142e341f4ef8d21d0de"
    assert list((tmp_path / "root").iterdir()) == []  # no partial file left to be found later


def test_a_download_lands_as_the_zip_and_is_read(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    source = write_tiny_imagenet(tmp_path / "server", train_per_class=1, val_per_class=1, as_zip=True)

    def download_url(url, root, filename=None, md5=None, **_):  # torchvision's makes root, then writes filename
        Path(root).mkdir(parents=True, exist_ok=True)
        shutil.copy(source, Path(root) / filename)

    monkeypatch.setattr(tv_utils, "download_url", download_url)
    raw = _read(tmp_path / "root", download=True)
    assert raw.source == str(tmp_path / "root" / "tiny-imagenet-200.zip")
    assert raw.train_images.shape == (200, 3, 64, 64)
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["tiny-imagenet-200.zip"]


def test_prepare_writes_64x64_arrays_200_classes_and_a_stratified_validation_split(tiny_folder, tmp_path):
    out = tmp_path / "data" / "tinyimagenet"
    manifest = data.prepare("tinyimagenet", out, root=tiny_folder.parent, source_dir=None, download=False,
                            verify_md5=True, val_per_class=1, train_per_class=None, split_seed=0)
    assert manifest["num_classes"] == 200 and manifest["image_shape"] == [3, 64, 64]
    assert manifest["sizes"] == {"train_all": 800, "train": 600, "val": 200, "test": 400}
    assert manifest["class_names"][199] == "class 199"
    assert len(manifest["mean"]) == 3 and all(0 < s < 1 for s in manifest["std"])
    prepared = load_prepared(out)
    assert prepared.train_images.shape == (600, 3, 64, 64) and prepared.test_images.shape == (400, 3, 64, 64)
    assert np.bincount(prepared.val_labels, minlength=200).tolist() == [1] * 200
    assert np.bincount(prepared.train_labels, minlength=200).tolist() == [3] * 200


def test_channel_statistics_of_large_sets_match_the_one_pass_float64_ones(monkeypatch):
    images = np.random.default_rng(3).integers(0, 256, size=(2500, 3, 8, 8), dtype=np.uint8)
    images[:, 1] //= 3  # channels that differ
    index = np.arange(0, 2500, 2)
    pixels = images[index].astype(np.float64) / 255.0
    mean, std = prepared_module._channel_mean_std(images, index)  # small: the one-pass formula, bit for bit
    assert np.array_equal(mean, pixels.mean(axis=(0, 2, 3))) and np.array_equal(std, pixels.std(axis=(0, 2, 3)))
    monkeypatch.setattr(prepared_module, "_ONE_PASS_STATS", 0)  # large: batched histograms
    big_mean, big_std = prepared_module._channel_mean_std(images, index)
    np.testing.assert_allclose(big_mean, mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(big_std, std, rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_models_give_200_logits_on_64x64_images(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=200, mean=[0.48, 0.45, 0.40], std=[0.27, 0.26, 0.28]).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 200) and torch.isfinite(logits).all()
