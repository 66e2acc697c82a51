"""records.npz has one owner (absld.evaluate.records): what evaluate saves is what the analysis loads."""

from __future__ import annotations

import numpy as np
import pytest

from absld.evaluate.records import Records, RecordsError


def make(model: str = "absld/seed0") -> Records:
    y = np.array([0, 1, 2, 1], dtype=np.int64)
    correct = {"clean": np.array([True, True, False, True]), "aa": np.array([True, False, False, True]),
               "worst": np.array([True, False, False, False])}
    return Records(model, np.arange(4, dtype=np.int64), y, correct, 8 / 255, protocol={"precision": "float32"},
                   evaluated={"aa": np.array([True, True, False, True]), "worst": np.array([True, True, False, True])},
                   cascade=True, seconds={"clean": 0.1})


def test_saved_records_load_back_the_same_and_byte_identically(tmp_path):
    records = make()
    records.save(tmp_path / "a.npz")
    records.save(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded = Records.load(tmp_path / "a.npz", "absld/seed0")
    assert loaded.names == ["clean", "aa", "worst"] and loaded.eps == pytest.approx(8 / 255)
    assert all(np.array_equal(loaded.correct[k], records.correct[k]) for k in records.correct)
    assert np.array_equal(loaded.evaluated["aa"], records.evaluated["aa"])
    assert loaded.protocol == {"precision": "float32"}
    correct, y = loaded.column("aa")  # the AA column covers its subset only
    assert correct.tolist() == [True, False, True] and y.tolist() == [0, 1, 1]


def test_a_records_file_without_its_worst_case_names_the_fix(tmp_path):
    arrays = make().arrays()
    del arrays["correct_worst"]
    np.savez(tmp_path / "r.npz", **arrays)
    with pytest.raises(RecordsError, match="missing array.*correct_worst.*re-run the evaluate stage of m"):
        Records.load(tmp_path / "r.npz", "m")
