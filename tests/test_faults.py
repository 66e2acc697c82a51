"""Fault injection, black box: `dvc repro` of the tiny profile is killed with SIGKILL (the whole
process group: DVC and the stage, as a scheduler's preemption does) right after the teacher,
a student or an evaluation saved its resumable state, and run again until it finishes; the
outputs and dvc.lock must be byte-identical to those of a run that was never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import profile_params_text
from tests.test_dvc_pipeline import dvc_project, run

TARGET = "evaluate@absld-0"  # check, prepare, teacher, distill@absld-0, evaluate@absld-0
RESUMABLE = {  # what each stage saves as it goes, and how many of its saves get a kill
    "teacher": ("checkpoints/teacher/last.pt", 2),
    "distill": ("checkpoints/distill/absld/seed0/last.pt", 2),
    "evaluate": ("checkpoints/eval/absld/seed0/progress.npz", 3),
}
ENV = {"ABSLD_EVAL_SAVE_SECONDS": "0", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def final_files(project: Path) -> dict[str, bytes]:
    """Every file the pipeline leaves that DVC or the user reads (not logs/: wall-clock times)."""
    out = {"dvc.lock": (project / "dvc.lock").read_bytes()}
    for folder in ("data", "models", "results", "plots"):
        out.update({str(p.relative_to(project)): p.read_bytes() for p in (project / folder).rglob("*") if p.is_file()})
    return out


def stamp(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def repro_killed_after_a_save(project: Path, kills_left: dict[str, int]) -> tuple[str | None, int | None]:
    """Start `dvc repro TARGET` in its own process group; SIGKILL the group as soon as a stage
    with kills left saves its resumable state. Returns (stage killed or None, exit code)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(project), **ENV)
    watched = {stage: project / path for stage, (path, _) in RESUMABLE.items() if kills_left[stage] > 0}
    before = {stage: stamp(path) for stage, path in watched.items()}
    process = subprocess.Popen(["dvc", "repro", TARGET], cwd=project, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        for stage, path in watched.items():
            if stamp(path) != before[stage]:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                kills_left[stage] -= 1
                return stage, process.returncode
        time.sleep(0.005)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("dvc repro did not finish in 300 s")
    assert process.returncode == 0, process.stderr.read()
    return None, 0


@pytest.mark.slow
def test_sigkill_at_any_save_then_dvc_repro_ends_byte_identical_to_an_uninterrupted_run(tmp_path):
    params = profile_params_text("tiny")
    reference = dvc_project(tmp_path / "reference", params)
    run(["dvc", "repro", TARGET], reference, **ENV)

    project = dvc_project(tmp_path / "killed", params)
    kills_left = {stage: kills for stage, (_, kills) in RESUMABLE.items()}
    killed = []
    for _ in range(sum(kills_left.values()) + 1):
        stage, code = repro_killed_after_a_save(project, kills_left)
        if stage is None:
            break
        assert code == -signal.SIGKILL
        killed.append(stage)
    else:
        pytest.fail("dvc repro never finished")
    assert killed == ["teacher"] * 2 + ["distill"] * 2 + ["evaluate"] * 3  # every planned kill happened

    ours, theirs = final_files(project), final_files(reference)
    assert sorted(ours) == sorted(theirs)
    # byte-identical, but for the two files DVC appends to as stages finish: with the clean teacher's
    # stage beside the teacher's, a kill can change which of the two finishes first, and with it the
    # order of dvc.lock's stages and of models/.gitignore's lines (same content, other order)
    order_only = {"dvc.lock": lambda b: yaml.safe_load(b), "models/.gitignore": lambda b: sorted(b.splitlines())}
    assert [name for name in theirs
            if order_only.get(name, lambda b: b)(ours[name]) != order_only.get(name, lambda b: b)(theirs[name])] == []
    leftovers = [p for p in project.rglob("*.tmp") if ".dvc" not in p.parts and ".git" not in p.parts]
    assert leftovers == []  # a killed writer's temporaries are gone once its file is written again
    assert not (project / "checkpoints" / "eval" / "absld" / "seed0" / "progress.npz").exists()
    assert "up to date" in run(["dvc", "status", "--with-deps", TARGET], project).stdout.lower()
