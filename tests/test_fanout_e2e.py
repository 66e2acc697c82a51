"""``absld fanout --backend local --gpus 0,1`` on the tiny profile (three students), against a
sequential ``dvc repro`` of the same project in a second clone: the plan, the slots, the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import profile_params_text
from tests.test_dvc_pipeline import dvc_project, run

METHODS = ["absld", "rslad", "sat"]
ENV = {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "WANDB_MODE": "disabled", "DVC_NO_ANALYTICS": "1"}


def tiny_params() -> str:
    params = yaml.safe_load(profile_params_text("tiny"))
    params["distill"]["methods"] = METHODS
    return yaml.safe_dump(params, sort_keys=False)


def lock_outs(project: Path) -> dict[str, str]:
    """Every output of every stage in dvc.lock: path -> md5."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def plan_waves(project: Path) -> list[list[str]]:
    text = run(["absld", "fanout", "--dry-run"], project, **ENV).stdout
    waves: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("wave "):
            waves.append([])
        elif line.startswith("  "):
            waves[-1].append(line.split()[0])
    return waves


@pytest.mark.slow
def test_fanout_over_two_slots_plans_runs_and_records_what_a_sequential_dvc_repro_does(tmp_path):
    params = tiny_params()
    project = dvc_project(tmp_path / "fanout", params)
    students = [f"distill@{m}-0" for m in METHODS]

    # the plan of a fresh project: every stage, in waves
    waves = plan_waves(project)
    assert waves[:3] == [["check"], ["prepare"], ["teacher", "teacher-clean"]]
    assert waves[3] == ["evaluate-teacher", *students]  # the teacher's evaluation first, then the students
    assert sorted(waves[4]) == [f"evaluate@{m}-0" for m in METHODS] and waves[5] == ["analyze"]

    result = run(["absld", "fanout", "--backend", "local", "--gpus", "0,1"], project, **ENV)
    assert "dvc status: every stage up to date" in result.stdout, result.stdout

    # no two running items ever shared a slot; each child logged the GPU of its slot
    events = [json.loads(line) for line in (project / "logs/fanout/events.jsonl").read_text().splitlines()]
    starts = {e["stage"]: e for e in events if e["event"] == "start"}
    spans = {e["stage"]: (e["slot"], starts[e["stage"]]["time"], e["time"]) for e in events if e["event"] == "end"}
    assert len(spans) == 12 and {slot for slot, _, _ in spans.values()} == {"gpu0.0", "gpu1.0"}
    for a, (slot_a, start_a, end_a) in spans.items():
        for b, (slot_b, start_b, end_b) in spans.items():
            assert a == b or slot_a != slot_b or end_a <= start_b or end_b <= start_a, (a, b)
        if a.split("@")[0] in ("teacher", "teacher-clean", "distill", "evaluate", "evaluate-teacher"):
            log = (project / "logs/fanout" / f"{a}.log").read_text()  # the stage itself says which GPU it has
            said = [line for line in log.splitlines() if line.startswith("CUDA_VISIBLE_DEVICES=")]
            assert said == [f"CUDA_VISIBLE_DEVICES={slot_a[3]} (absld fanout slot {slot_a})"], log[-2000:]
    overlapped = any(spans[a][1] < spans[b][2] and spans[b][1] < spans[a][2] for a in students for b in students if a != b)
    assert overlapped  # two students trained side by side

    assert "up to date" in run(["dvc", "status"], project, **ENV).stdout
    sequential = dvc_project(tmp_path / "sequential", params)
    run(["dvc", "repro"], sequential, **ENV)
    assert lock_outs(project) == lock_outs(sequential) and len(lock_outs(project)) > 20

    # after one method's knob changes, the plan holds that student and what follows it, nothing else
    edited = yaml.safe_load(params)
    edited["distill"]["sat"]["start"] = "gaussian"
    (project / "params.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    assert plan_waves(project) == [["check", "distill@sat-0"], ["evaluate@sat-0"], ["analyze"]]
