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


def dead_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_killed_writers_temporaries_are_removed_by_the_next_write_and_a_live_ones_kept(tmp_path):
    """SIGKILL skips the clean-up of a temporary; the next write of the same file (or directory)
    removes what dead processes left and nothing of a process that still runs."""
    dead = dead_pid()
    left = {
        "file": tmp_path / f".out.json.{dead}.abc123.tmp",
        "dir": tmp_path / f".eval.{dead}.def456.tmp",
        "live": tmp_path / f".out.json.{os.getpid()}.zzz.tmp",
        "other file": tmp_path / f".other.json.{dead}.abc.tmp",
    }
    left["file"].write_text("{half")
    left["dir"].mkdir()
    (left["dir"] / "records.npz").write_bytes(b"half")
    left["live"].write_text("being written")
    left["other file"].write_text("{")
    write_json(tmp_path / "out.json", {"a": 1})
    with atomic_dir(tmp_path / "eval") as out:
        (out / "x").write_text("whole")
    assert not left["file"].exists() and not left["dir"].exists()
    assert left["live"].exists() and left["other file"].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [left["live"].name, left["other file"].name, "eval", "out.json"])


def test_resumable_work_of_other_code_is_not_resumed(tmp_path, monkeypatch):
    """A stage killed, its code edited, then rerun (DVC reruns it because its code changed) must
    not resume the old code's checkpoint: the fingerprint holds a digest of the source."""
    import shutil

    from click.testing import CliRunner

    import absld.code as code
    import absld.train.distill as distill
    from absld.layout import Layout
    from absld.params import load_params
    from pipeline.cli import main
    from tests.conftest import REPO, profile_params_text

    root = tmp_path / "repo"  # the stage's code digest, measured on a copy of the project's code
    for package in ("absld", "pipeline"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(code, "PROJECT", root)

    def digest() -> str:
        code.stage_digest.cache_clear()
        return code.stage_digest("distill")

    try:
        before = digest()
        with open(root / "absld" / "methods" / "absld.py", "a") as handle:
            handle.write("\nBETA = 0.2\n")
        assert digest() != before
        code_only = digest()
        (root / "absld" / "notes.md").write_text("not code")
        assert digest() == code_only
        assert "absld/notes.md" not in code.stage_files("distill", root)
    finally:
        code.stage_digest.cache_clear()

    # the code digest is part of the fingerprint that decides whether fit() resumes a checkpoint
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(profile_params_text("tiny"))
    monkeypatch.chdir(project)
    assert CliRunner().invoke(main, ["prepare"], catch_exceptions=False).exit_code == 0
    params = load_params(project / "params.yaml")

    class Stop(Exception):
        pass

    fingerprints = []

    def fit(*args, fingerprint, **kwargs):
        fingerprints.append(fingerprint)
        raise Stop

    monkeypatch.setattr(distill, "fit", fit)
    for digest_of_code in ("old code", "old code", "new code"):
        with pytest.raises(Stop):
            distill.run_distill(params, "sat", 0, Layout(project), code=digest_of_code, echo=lambda line: None)
    assert fingerprints[0] == fingerprints[1]
    assert fingerprints[2] != fingerprints[0]


def strict_loads(text):
    """json.loads that refuses NaN, Infinity and -Infinity (which Python's json accepts by default)."""
    import json

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_metrics_file_with_a_nan_is_strict_json_with_null(tmp_path):
    """write_json wrote NaN (json.dumps(allow_nan=True)), which is not JSON: jq, JavaScript and
    strict parsers refuse the whole file."""
    import numpy as np

    nan = float("nan")
    write_json(tmp_path / "metrics.json", {"pgd": {"avg": 0.5, "nsd": nan, "class_acc": [0.25, nan]},
                                           "ci": (np.float64("inf"), -np.inf), "n": np.int64(3),
                                           "tau": np.float32(0.5), "ok": np.bool_(True)})
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert strict_loads(text) == {"pgd": {"avg": 0.5, "nsd": None, "class_acc": [0.25, None]},
                                  "ci": [None, None], "n": 3, "tau": 0.5, "ok": True}


def test_the_json_writer_refuses_a_non_finite_number_that_escapes_the_conversion(tmp_path, monkeypatch):
    import absld.io

    monkeypatch.setattr(absld.io, "json_safe", lambda obj: obj)  # as if a value slipped past it
    with pytest.raises(ValueError, match="JSON compliant"):
        write_json(tmp_path / "metrics.json", {"nsd": float("nan")})
    assert list(tmp_path.iterdir()) == []
