"""The house cut by stage, seen through real DVC: an edit reruns only the stages whose code it touches.

After a full run of a small tiny-profile DAG: an edit of an analysis figure or table module stales
`analyze` alone (the W&B report module, which no stage runs, stales nothing); an edit of the
evaluation cascade or the AutoAttack adapter stales every evaluation and never `teacher` or a
`distill@...`; and a student killed midway resumes after an analysis-only edit (but not after an
edit of the training loop, whose code made its state).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from absld.params import compose_profile
from tests.conftest import REPO
from tests.test_dvc_pipeline import dvc_project, run

pytestmark = pytest.mark.slow

EVALUATIONS = {"evaluate-teacher", "evaluate@absld-0", "evaluate@sat-0"}


def stale(project: Path) -> set[str]:
    """The stages `dvc status` reports as changed."""
    status = json.loads(run(["dvc", "status", "--json"], project).stdout or "{}")
    return {name.split(":")[-1] for name in status}


def edited(project: Path, module: str, expected: set[str], *, exact: bool = True) -> set[str]:
    """Append a comment to ``module``, read the stale stages, restore the file."""
    path = project / module
    original = path.read_text()
    path.write_text(original + "\n# an edit\n")
    try:
        found = stale(project)
    finally:
        path.write_text(original)
    assert (found == expected) if exact else (found <= expected), f"{module}: stale {sorted(found)}"
    return found


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    params = tmp_path_factory.mktemp("params") / "params.yaml"
    compose_profile("tiny", params, overrides=(
        "distill.methods=[absld,sat]", "evaluate.attacks=[pgd,aa]", "teacher.train.epochs=2",
        "teacher.train.milestones=[1]"), conf=REPO / "conf")
    project = dvc_project(tmp_path_factory.mktemp("staleness") / "project", params.read_text())
    run(["dvc", "repro"], project, WANDB_MODE="disabled", TQDM_DISABLE="1")
    assert stale(project) == set()
    return project


def test_an_analysis_only_edit_stales_analyze_alone(project):
    for module in ("absld/analyze/plots.py", "absld/analyze/tables.py", "absld/analyze/study.py"):
        edited(project, module, {"analyze"})
    edited(project, "absld/analyze/wandb_report.py", {"analyze"}, exact=False)  # `absld report` is no stage


def test_an_evaluation_only_edit_never_stales_training(project):
    for module in ("absld/evaluate/cascade.py", "absld/evaluate/autoattack.py"):
        found = edited(project, module, EVALUATIONS)
        assert not {s for s in found if s == "teacher" or s.startswith("distill")}
    edited(project, "absld/train/loop.py",  # the test can see training go stale (both teachers train in the loop)
           {"teacher", "teacher-clean", "distill@absld-0", "distill@sat-0"})


def test_a_killed_student_resumes_after_an_analysis_only_edit(project):
    env = dict(WANDB_MODE="disabled", TQDM_DISABLE="1")
    distill = ["absld", "distill", "--method", "sat", "--seed", "0"]
    for leftover in (project / "checkpoints/distill/sat/seed0").glob("*"):
        leftover.unlink()  # the finished run's last state
    run([*distill, "--stop-after", "1"], project, **env)  # killed after its first epoch

    def after_an_edit_of(module: str) -> str:
        path = project / module
        original = path.read_text()
        path.write_text(original + "\n# an edit\n")
        try:
            done = run([*distill, "--stop-after", "1"], project, **env)
        finally:
            path.write_text(original)
        return done.stdout + done.stderr

    assert "resuming after epoch 1" in after_an_edit_of("absld/analyze/plots.py")
    assert "starting afresh" in after_an_edit_of("absld/train/loop.py")  # its code made the saved state


def test_an_ad_hoc_student_leaves_dvc_and_git_as_they_were(project):
    """`absld distill --seed 99` outside the matrix, then its evaluation: analyze stays up to date
    (nothing lands in results/distill or results/eval) and Git sees no new untracked file."""
    env = dict(WANDB_MODE="disabled", TQDM_DISABLE="1")
    untracked = run(["git", "status", "--porcelain", "--untracked-files=all"], project).stdout
    done = run(["absld", "distill", "--method", "sat", "--seed", "99"], project, **env)
    run(["absld", "evaluate", "--model", "sat/seed99"], project, **env)
    assert stale(project) == set()
    assert run(["git", "status", "--porcelain", "--untracked-files=all"], project).stdout == untracked
    assert "scratch/" in done.stdout and (project / "scratch/results/eval/sat/seed99/records.npz").is_file()
