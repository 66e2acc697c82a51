"""End to end: the tiny profile through the real dvc.yaml with `dvc exp run -S` (no network)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from absld.models import checkpoint_meta, load_checkpoint
from absld.vocab import METHOD_LABELS
from tests.conftest import REPO, committed_params_text

PROJECT_FILES = ["absld", "pipeline", "params.yaml", "conf", "hydra_plugins", "references", "dvc.yaml", ".dvc/config",
                 ".dvc/plots",
                 ".dvcignore",
                 "pyproject.toml"]


def run(cmd: list[str], cwd: Path, *, ok: bool = True, **env_vars: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", PYTHONPATH=str(cwd), **env_vars)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if ok:
        assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def outputs(project: Path) -> dict[str, tuple[int, int]]:
    """Every file under the stages' output folders: (size, mtime in ns)."""
    return {str(p.relative_to(project)): (p.stat().st_size, p.stat().st_mtime_ns)
            for folder in ("models", "results", "plots", "data") for p in (project / folder).rglob("*") if p.is_file()}


def dvc_project(project: Path, params_text: str | None = None) -> Path:
    """A Git repository at ``project`` holding the pipeline's files (the code, dvc.yaml, conf/,
    .dvc/) and ``params_text`` as params.yaml (default: the committed one), all committed."""
    project.mkdir()
    for name in PROJECT_FILES:
        source = REPO / name
        target = project / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)
    (project / "params.yaml").write_text(params_text if params_text is not None else committed_params_text())
    shutil.copy(REPO / ".gitignore", project / ".gitignore")
    run(["git", "init", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "init"], project)
    return project


TINY_METHODS = ("absld", "rslad", "sat", "frl_rw", "frl_rwrm", "cfa", "fair_ard", "fair_iad", "wat", "dafa", "trix", "b_mtard")


@pytest.mark.slow
def test_tiny_profile_runs_the_dag_through_dvc_exp_run(tmp_path):
    project = dvc_project(tmp_path / "project")

    run(["dvc", "exp", "run", "-S", "profile=tiny"], project)  # DVC composes params.yaml from conf/ (Hydra)
    assert yaml.safe_load((project / "params.yaml").read_text())["profile"] == "tiny"

    teacher = json.loads((project / "models" / "teacher.json").read_text())
    assert teacher["arch"] == "tiny_cnn" and teacher["n"] == 40
    assert teacher["clean_acc"] > 0.2  # learnt something (10 classes: chance is 0.1)
    for method in TINY_METHODS:
        student = load_checkpoint(project / "models" / "students" / method / "seed0.pt")
        assert student.arch == "tiny_cnn" and not student.training
        meta = checkpoint_meta(project / "models" / "students" / method / "seed0.pt")
        if method == "cfa":  # its student is the weight average: distill.select does not apply
            assert meta["select"] == "weight_average" and meta["selection_split"] is None
        else:
            assert meta["select"] == "val_fair_best" and meta["selection_split"] == "validation"
        assert (project / "plots" / "distill" / method / "seed0" / "training.png").stat().st_size > 0
    for method in ("fair_ard", "fair_iad", "dafa", "trix"):  # the class weights after each epoch
        rows = (project / "results" / "distill" / method / "seed0" / "weights.csv").read_text().strip().splitlines()
        assert rows[0].startswith("epoch,class,w") and len(rows) == 1 + 3 * 10
    for method, state in (("frl_rw", "frl_state"), ("frl_rwrm", "frl_state"), ("cfa", "cfa_state"), ("wat", "wat_state")):
        rows = (project / "results" / "distill" / method / "seed0" / f"{state}.csv").read_text().strip().splitlines()
        assert len(rows) == 1 + 3 * 10  # measured after each of the 3 epochs (FRL: the first is its hot start)
        assert (project / "plots" / "distill" / method / "seed0" / f"{state}.png").stat().st_size > 0
    temperatures = (project / "results" / "distill" / "absld" / "seed0" / "temperatures.csv").read_text()
    lines = temperatures.strip().splitlines()
    assert lines[0] == "epoch,class,tau_adv,tau_nat,risk_adv,risk_nat,beta" and len(lines) == 1 + 3 * 10
    assert (project / "plots" / "distill" / "absld" / "seed0" / "temperatures.png").is_file()
    records = np.load(project / "results" / "eval" / "absld" / "seed0" / "records.npz")
    assert {"index", "y", "eps", "protocol", "correct_clean", "correct_fgsm", "correct_pgd", "correct_cw", "correct_aa",
            "correct_worst"} <= set(records.files)
    assert records["index"].tolist() == list(range(40))
    fairness = json.loads((project / "results" / "fairness.json").read_text())
    assert set(fairness) == {"teacher", *(f"{m}/seed0" for m in TINY_METHODS)}
    # the tiny profile's AutoAttack is APGD-CE alone: AA*, keyed aa_star wherever DVC shows it
    assert "aa" not in fairness["absld/seed0"]
    assert set(fairness["absld/seed0"]["aa_star"]) >= {"avg", "worst", "nsd", "class_acc", "avg_ci", "worst_ci", "nsd_ci"}
    assert sorted(p.name for p in (project / "plots" / "eval" / "absld" / "seed0").iterdir()) == ["classwise.png"]
    table = (project / "results" / "table.md").read_text()
    assert all(METHOD_LABELS[m] in table for m in TINY_METHODS)
    assert (project / "results" / "report.md").is_file() and (project / "plots" / "analyze").is_dir()
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    (listed,) = metrics.values()
    assert set(listed["data"]) == {"results/headline.json"}  # the only metrics file: dvc exp show stays readable
    headline = listed["data"]["results/headline.json"]["data"]
    assert set(headline) == {"teacher", *TINY_METHODS}
    assert set(headline["absld"]) == {"clean_avg", "pgd_avg", "pgd_worst", "pgd_nsd", "aa_star_avg", "aa_star_worst",
                                      "aa_star_nsd"}
    assert headline["absld"]["pgd_worst"] == fairness["absld/seed0"]["pgd"]["worst"]
    status = run(["dvc", "status"], project).stdout
    assert "up to date" in status.lower()

    # A forced rerun of the teacher from scratch writes the same bytes: nothing downstream is stale
    # (same thread count: CPU kernels may sum in another order on another number of threads).
    teacher_bytes = (project / "models" / "teacher.pt").read_bytes()
    shutil.rmtree(project / "checkpoints" / "teacher")
    run(["dvc", "repro", "--force", "--single-item", "teacher"], project)
    assert (project / "models" / "teacher.pt").read_bytes() == teacher_bytes
    assert "up to date" in run(["dvc", "status"], project).stdout.lower()

    # What cannot change a result is not a param: W&B settings, bars and threads come from the
    # environment, and a run with other values of them reruns nothing.
    repro = run(["dvc", "repro"], project, WANDB_PROJECT="elsewhere", WANDB_ENTITY="someone",
                WANDB_TAGS="a-new-tag", WANDB_RUN_GROUP="another-group", TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    assert "Running stage" not in repro.stdout, repro.stdout
    assert "up to date" in run(["dvc", "status"], project).stdout.lower()

    # A typo in any key, tracked or not, stops DVC at the `check` stage with one line, nothing deleted.
    committed = (project / "params.yaml").read_text()
    before = outputs(project)
    for section, key in (("distill", "not_a_key"), ("evaluate", "stepz")):  # untracked / inside a tracked section
        params = yaml.safe_load(committed)
        params[section][key] = 3
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        failed = run(["dvc", "repro"], project, ok=False)
        assert failed.returncode != 0
        assert f"unknown key '{section}.{key}'" in failed.stdout + failed.stderr
        assert "Traceback" not in failed.stdout + failed.stderr
        assert outputs(project) == before
    (project / "params.yaml").write_text(committed)
    assert "up to date" in run(["dvc", "status"], project).stdout.lower()

    # The README's recipe, literally: a DVC remote (a directory here: an experiment carries its baseline
    # commit's .dvc/config, so the remote comes first), commit the run, then experiments that DVC
    # compares in numbers.
    run(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "dvc-remote")], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "tiny profile"], project)
    assert not run(["git", "status", "--porcelain"], project).stdout.strip()  # nothing left untracked
    run(["dvc", "exp", "run", "-n", "beta-half", "-S", "profile=tiny", "-S", "distill.absld.beta=0.5"], project)
    beta_half_student = (project / "models" / "students" / "absld" / "seed0.pt").read_bytes()
    rows = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    experiments = {exp["name"]: exp for row in rows for exp in [row, *(e for e in row.get("experiments") or []
                                                                        for e in e.get("revs", []))]}
    def headline_of(exp: dict) -> dict | None:  # None where DVC shows "!" (no such file in that experiment)
        entry = ((exp.get("data") or {}).get("metrics") or {}).get("results/headline.json") or {}
        return entry.get("data")

    headlines = {name: data for name, exp in experiments.items() if (data := headline_of(exp))}
    assert {"beta-half"} <= set(headlines) and len(headlines) >= 2, list(experiments)
    shown = experiments["beta-half"]["data"]["params"]["params.yaml"]["data"]
    assert shown["profile"] == "tiny" and shown["distill"]["absld"]["beta"] == 0.5  # dvc exp show: which profile
    # the documented view fits a 200-column terminal and shows what the experiment changed
    view = run(["dvc", "exp", "show", "--no-pager", "--only-changed", "--drop", ".*/.*|params.yaml"], project,
               COLUMNS="200").stdout
    assert max(len(line) for line in view.splitlines()) <= 200 and "…" not in view, view  # nothing cut
    assert "distill.absld.beta" in view and "rslad." not in view and "teacher." not in view, view  # only ABSLD changed
    # a PGD-steps sweep compares like with like: every headline number diffs as a number
    run(["dvc", "exp", "run", "-n", "pgd-2", "-S", "profile=tiny", "-S", "evaluate.pgd.steps=2"], project)
    diff = json.loads(run(["dvc", "exp", "diff", "HEAD", "pgd-2", "--all", "--json"], project).stdout)
    compared = diff["metrics"]["results/headline.json"]
    assert {f"{m}.pgd_{s}" for m in headline for s in ("avg", "worst")} <= set(compared), sorted(compared)
    assert all(isinstance(compared[f"{m}.pgd_{s}"]["old"], (int, float)) and isinstance(compared[f"{m}.pgd_{s}"]["new"], (int, float))
               for m in headline for s in ("avg", "worst")), compared  # numbers both sides, not "diff not supported"
    steps = diff["params"]["params.yaml"]["evaluate.pgd.steps"]
    assert (steps["old"], steps["new"]) == (3, 2)

    # Models reach a second clone through a DVC remote (a directory here), experiments too.
    run(["git", "init", "-q", "--bare", str(tmp_path / "origin.git")], project)
    run(["git", "remote", "add", "origin", str(tmp_path / "origin.git")], project)
    run(["git", "push", "-q", "origin", "HEAD:main"], project)
    run(["dvc", "push"], project)
    run(["dvc", "exp", "push", "origin", "beta-half"], project)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", "-b", "main", str(tmp_path / "origin.git"), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    assert "up to date" in run(["dvc", "status"], clone).stdout.lower()
    run(["dvc", "exp", "pull", "origin", "beta-half"], clone)
    run(["dvc", "exp", "apply", "beta-half"], clone)
    assert (clone / "models" / "students" / "absld" / "seed0.pt").read_bytes() == beta_half_student

    # dvc plots diff overlays the two experiments: per attack one chart with every model and both revisions
    plots = json.loads(run(["dvc", "plots", "diff", "HEAD", "beta-half", "--json"], project).stdout)["data"]
    for name in ("plots/analyze/classwise/pgd.csv", "plots/analyze/training.csv", "plots/analyze/temperatures.csv",
                 "plots/analyze/tradeoff.csv"):
        (chart,) = plots[name]
        values = chart["content"]["data"]["values"]
        assert {v["rev"] for v in values} == {"HEAD", "beta-half"}, name
    classwise = plots["plots/analyze/classwise/pgd.csv"][0]["content"]
    assert {v["model"] for v in classwise["data"]["values"]} == {"Teacher", *(METHOD_LABELS[m] for m in TINY_METHODS)}
    assert [layer["encoding"]["yOffset"]["field"] for layer in classwise["spec"]["layer"]] == ["model", "model"]
    assert classwise["facet"]["column"]["field"] == "panel" and "row" not in classwise["facet"]  # revisions side by side
    assert {"lo", "hi", "attack"} <= set(classwise["data"]["values"][0])
    assert classwise["title"]["text"] == "Class-wise accuracy of every model"
