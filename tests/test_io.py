"""Atomic writing: a failed write leaves neither a half file nor a temp file behind."""

from __future__ import annotations

import os

import pytest

from absld.io import atomic_dir, atomic_path, write_csv, write_json


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text().strip().endswith("}") and '"v": 1' in target.read_text()
    assert os.listdir(tmp_path) == ["out.json"]


def test_written_files_get_normal_permissions(tmp_path):
    write_json(tmp_path / "a.json", {})
    mode = (tmp_path / "a.json").stat().st_mode & 0o777
    assert mode & 0o044  # readable by group/others (mkstemp alone gives 0600)


def test_failed_directory_write_keeps_the_previous_directory(tmp_path):
    target = tmp_path / "data"
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            (tmp / "x").write_text("2")
            raise ValueError
    assert (target / "x").read_text() == "1" and sorted(os.listdir(tmp_path)) == ["data"]


def test_csv_columns_are_the_union_of_all_rows(tmp_path):
    write_csv(tmp_path / "log.csv", [{"epoch": 1}, {"epoch": 2, "extra": 0.5}])
    assert (tmp_path / "log.csv").read_text() == "epoch,extra\n1,\n2,0.5\n"
