"""``absld fanout``: the plan read from DVC, the pool of GPU slots, DVC's repository lock.

The plan and the pool are tested on hand-written graphs and stand-in commands (fast); the tiny
profile runs through the real thing in tests/test_fanout_e2e.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from absld.fanout.local import Pool, Report, fan_out, make_slots, parse_gpus
from absld.fanout.plan import Plan, make_plan, order_key
from absld.fanout.runner import StageRun, backoff, lock_failure, repro_command
from absld.errors import UserError
from pipeline.cli import main

# The tiny DAG's shape: check -> prepare -> teacher, teacher-clean -> students -> evaluations -> analyze.
GRAPH = {
    "check": set(),
    "prepare": {"check"},
    "teacher": {"prepare"},
    "teacher-clean": {"prepare"},
    "distill@absld-0": {"prepare", "teacher", "teacher-clean"},
    "distill@sat-0": {"prepare", "teacher", "teacher-clean"},
    "distill@dafa-0": {"prepare", "teacher", "teacher-clean"},
    "evaluate-teacher": {"prepare", "teacher"},
    "evaluate@absld-0": {"prepare", "distill@absld-0"},
    "evaluate@sat-0": {"prepare", "distill@sat-0"},
    "evaluate@dafa-0": {"prepare", "distill@dafa-0"},
    "analyze": {"prepare", "distill@absld-0", "distill@sat-0", "distill@dafa-0", "evaluate-teacher",
                "evaluate@absld-0", "evaluate@sat-0", "evaluate@dafa-0"},
}
COSTS = {"absld": 300.0, "sat": 100.0, "dafa": 110.0 * 3}


def plan_of(stale) -> Plan:
    return make_plan(GRAPH, stale, COSTS, "test")


def test_a_fresh_project_plans_every_stage_in_waves_each_after_what_it_waits_for():
    plan = plan_of(GRAPH)
    waves = [[item.stage for item in wave] for wave in plan.waves()]
    assert waves[0] == ["check"] and waves[1] == ["prepare"] and set(waves[2]) == {"teacher", "teacher-clean"}
    assert set(waves[3]) == {"evaluate-teacher", "distill@absld-0", "distill@sat-0", "distill@dafa-0"}
    assert set(waves[4]) == {"evaluate@absld-0", "evaluate@sat-0", "evaluate@dafa-0"} and waves[5] == ["analyze"]
    position = {stage: k for k, stage in enumerate(plan.stages)}
    for item in plan.items:
        assert all(position[after] < position[item.stage] for after in item.after)
        assert set(item.after) == GRAPH[item.stage]  # every dep is planned here
    # within a wave: evaluations first (the teacher's as early as it can start), then students, longest first
    assert waves[3] == ["evaluate-teacher", "distill@dafa-0", "distill@absld-0", "distill@sat-0"]
    assert plan.item("distill@dafa-0").cost == 330.0 and plan.up_to_date == ()
    assert plan.direct_after(plan.item("analyze")) == (
        "evaluate-teacher", "evaluate@absld-0", "evaluate@dafa-0", "evaluate@sat-0")  # what the text shows
    assert plan.direct_after(plan.item("distill@sat-0")) == ("teacher", "teacher-clean")


def test_an_up_to_date_stage_is_left_out_and_a_stale_one_takes_its_downstream_along():
    plan = plan_of({"distill@sat-0"})
    assert plan.stages == ["distill@sat-0", "evaluate@sat-0", "analyze"]
    assert [item.stale for item in plan.items] == [True, False, False]  # the rest: if its inputs change
    assert plan.item("evaluate@sat-0").after == ("distill@sat-0",)  # prepare is up to date: not waited for
    assert "distill@absld-0" in plan.up_to_date and "teacher" in plan.up_to_date
    assert plan_of(set()).items == ()
    assert plan_of(set()).lines() == ["nothing to run: every stage is up to date"]


def test_checks_constant_output_stales_nothing_downstream():
    """Any edit of params.yaml stales check; its output never changes, so it reruns nothing else."""
    assert plan_of({"check"}).stages == ["check"]
    assert plan_of({"check", "distill@sat-0"}).stages == ["check", "distill@sat-0", "evaluate@sat-0", "analyze"]
    # prepare's output does change: everything downstream of it may run
    assert len(plan_of({"prepare"}).items) == len(GRAPH) - 1


def test_a_new_clean_teacher_plans_every_student_until_dvc_is_asked_again():
    plan = plan_of({"teacher-clean"})
    assert plan.upstream()[0].stage == "teacher-clean"
    assert {i.stage for i in plan.items if i.kind == "student"} == {"distill@absld-0", "distill@sat-0", "distill@dafa-0"}
    assert all(not i.stale for i in plan.items if i.kind == "student")


def test_the_dispatch_order_ranks_kinds_then_cost():
    plan = plan_of(GRAPH)
    ready = [plan.item(s) for s in ("analyze", "distill@sat-0", "evaluate@sat-0", "distill@dafa-0", "teacher")]
    assert [i.stage for i in sorted(ready, key=order_key)] == [
        "teacher", "evaluate@sat-0", "distill@dafa-0", "distill@sat-0", "analyze"]


def test_a_stale_stage_outside_the_graph_is_an_error():
    with pytest.raises(ValueError, match="distill@nope-0"):
        make_plan(GRAPH, {"distill@nope-0"}, COSTS, "test")


def test_the_dry_run_prints_each_wave_and_what_each_stage_waits_for():
    lines = plan_of({"distill@sat-0"}).lines()
    assert lines[0].startswith("3 stages to run in 3 waves (9 up to date)")
    assert any(line.split()[:3] == ["distill@sat-0", "student", "stale;"] and "at once" in line for line in lines)
    assert any("evaluate@sat-0" in line and "runs if its inputs change; after distill@sat-0" in line for line in lines)


def test_slots_interleave_the_gpus_and_bad_gpu_lists_are_refused():
    assert [s.name for s in make_slots(["0", "1"], 2)] == ["gpu0.0", "gpu1.0", "gpu0.1", "gpu1.1"]
    assert parse_gpus("0, 3") == ["0", "3"]
    for bad in ("0,,1", "a", "-1", "0,0", ""):
        with pytest.raises(UserError, match="--gpus"):
            parse_gpus(bad)


def test_the_command_line_refuses_bad_gpus_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["fanout", "--gpus", "0"])
    assert result.exit_code == 1 and "no dvc.yaml in" in result.output  # outside a project
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    result = CliRunner().invoke(main, ["fanout", "--gpus", "0,x", "--params", "missing.yaml"])
    assert result.exit_code == 1 and result.output.startswith("Error: --gpus '0,x'")  # before params or DVC
    result = CliRunner().invoke(main, ["fanout", "--per-gpu", "0"])
    assert result.exit_code == 2 and "--per-gpu" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml"]


# --- the pool, on stand-in commands -------------------------------------------------------------

STANDIN = """
import json, os, sys, time
stage = sys.argv[1]
print(json.dumps({"stage": stage, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "slot": os.environ.get("ABSLD_FANOUT_SLOT")}))
sys.stdout.flush()
time.sleep(float(os.environ.get("STANDIN_SECONDS", "0.3")))
sys.exit(3 if stage in os.environ.get("STANDIN_FAIL", "").split(",") else 0)
"""


def standin(tmp_path: Path):
    script = tmp_path / "standin.py"
    script.write_text(STANDIN)
    return lambda stage: [sys.executable, str(script), stage]


def events(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "logs" / "fanout" / "events.jsonl").read_text().splitlines()]


def intervals(root: Path) -> dict[str, tuple[str, float, float]]:
    start = {e["stage"]: e for e in events(root) if e["event"] == "start"}
    return {e["stage"]: (e["slot"], start[e["stage"]]["time"], e["time"]) for e in events(root) if e["event"] == "end"}


def test_no_two_running_items_share_a_slot_and_each_waits_for_its_deps(tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_SECONDS", "0.4")
    pool = Pool(tmp_path, make_slots(["0", "1"]), echo=lambda line: None, command=standin(tmp_path))
    report = pool.run(list(plan_of(GRAPH).items), Report())
    assert report.ok and set(report.outcomes) == set(GRAPH)
    spans = intervals(tmp_path)
    for a, (slot_a, start_a, end_a) in spans.items():
        for b, (slot_b, start_b, end_b) in spans.items():
            if a != b and slot_a == slot_b:
                assert end_a <= start_b or end_b <= start_a, f"{a} and {b} overlap on {slot_a}"
        for dep in GRAPH[a]:
            assert spans[dep][2] <= start_a, f"{a} started before {dep} ended"
    both = {slot for slot, _, _ in spans.values()}
    assert both == {"gpu0.0", "gpu1.0"}  # the two students ran side by side
    for stage, (slot, _, _) in spans.items():  # each child saw its slot's GPU
        said = json.loads([line for line in (tmp_path / "logs" / "fanout" / f"{stage}.log").read_text().splitlines()
                           if line.startswith("{")][0])
        assert said == {"stage": stage, "cuda": slot[3], "slot": slot}


def test_a_failed_item_skips_what_waits_for_it_and_the_rest_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_SECONDS", "0")
    monkeypatch.setenv("STANDIN_FAIL", "distill@sat-0")
    lines: list[str] = []
    pool = Pool(tmp_path, make_slots(["0"]), echo=lines.append, command=standin(tmp_path))
    report = pool.run(list(plan_of(GRAPH).items), Report())
    assert report.failed == ["distill@sat-0"] and not report.ok
    assert set(report.skipped) == {"evaluate@sat-0", "analyze"}
    assert report.outcomes["evaluate@absld-0"].ok and report.outcomes["distill@dafa-0"].ok
    assert any(line.startswith("FAILED distill@sat-0") and "exit 3" in line for line in lines)


def test_the_upstream_runs_first_then_the_plan_is_read_again(tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_SECONDS", "0")
    reads = []

    def plan_now() -> Plan:  # before: a new clean teacher; after it ran, DVC finds only b_mtard's student stale
        reads.append(len(reads))
        return plan_of({"teacher-clean"} if len(reads) == 1 else {"distill@sat-0"} if len(reads) == 2 else set())

    pool = Pool(tmp_path, make_slots(["0", "1"]), echo=lambda line: None, command=standin(tmp_path))
    report, after = fan_out(plan_now, pool)
    assert report.ok and list(report.outcomes) == ["teacher-clean", "distill@sat-0", "evaluate@sat-0", "analyze"]
    assert after.items == () and len(reads) == 3


def test_ctrl_c_stops_every_running_item_and_starts_no_other(tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_SECONDS", "30")
    pool = Pool(tmp_path, make_slots(["0", "1"]), echo=lambda line: None, command=standin(tmp_path))
    items = [plan_of(GRAPH).item(s) for s in ("distill@absld-0", "distill@sat-0", "distill@dafa-0")]
    items = [type(i)(i.stage, i.kind, (), i.cost, 0, True) for i in items]
    threading.Timer(1.5, lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)).start()
    began = time.monotonic()
    report = pool.run(items, Report())
    assert time.monotonic() - began < 15
    assert report.interrupted and len(report.outcomes) == 2 and len(report.not_started) == 1
    assert all(outcome.returncode != 0 for outcome in report.outcomes.values())


# --- DVC's repository lock ------------------------------------------------------------------------

def test_only_dvcs_lock_failure_is_retried_and_at_most_lock_retries_times(tmp_path):
    counter = tmp_path / "count"
    script = tmp_path / "flaky.py"
    script.write_text(f"""
import pathlib, sys
c = pathlib.Path({str(counter)!r}); n = int(c.read_text()) if c.exists() else 0; c.write_text(str(n + 1))
if n < int(sys.argv[1]):
    print("ERROR: failed to reproduce 'x': Unable to acquire lock. Most likely another DVC process is running")
    sys.exit(255)
sys.exit(int(sys.argv[2]))
""")
    waits: list[float] = []

    def run(fails: int, final: int, retries: int):
        counter.unlink(missing_ok=True)
        return StageRun(tmp_path, "x", lock_retries=retries, sleep=waits.append,
                        command=[sys.executable, str(script), str(fails), str(final)]).run()

    assert (run(3, 0, 8).ok, run(3, 0, 8).attempts) == (True, 4)
    assert (run(3, 0, 2).returncode, run(3, 0, 2).attempts) == (255, 3)  # bounded
    assert (run(0, 5, 8).returncode, run(0, 5, 8).attempts) == (5, 1)  # the stage's own failure: no retry
    assert lock_failure("Unable to acquire lock.") and not lock_failure("failed to run: absld distill")
    assert all(0 < backoff(k) <= 15 for k in range(1, 12)) and backoff(1) <= 1.0
    assert repro_command("distill@sat-0")[1:] == ["--wait-for-lock", "repro", "--single-item", "distill@sat-0"]
    assert repro_command("x", wait_for_lock=False)[1:] == ["repro", "--single-item", "x"]


LOCK_PROJECT = """stages:
  make:
    matrix:
      k: [a, b, c, d]
    cmd: python -c "import pathlib; pathlib.Path('out-${item.k}.txt').write_text('${item.k}')"
    outs:
      - out-${item.k}.txt
"""


def lock_project(root: Path) -> Path:
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([repro_command("x")[0], "init", "-q"], cwd=root, check=True)
    (root / "dvc.yaml").write_text(LOCK_PROJECT)
    return root


def start_four_at_once(root: Path, *, lock_retries: int, wait_for_lock: bool, hold_s: float) -> list:
    """Four items started at the same instant while another DVC process holds the repository lock
    for ``hold_s`` (as one recording its results does)."""
    import zc.lockfile

    lock = zc.lockfile.LockFile(str(root / ".dvc" / "tmp" / "lock"))
    threading.Timer(hold_s, lock.close).start()
    runs = [StageRun(root, f"make@{k}", lock_retries=lock_retries, wait_for_lock=wait_for_lock)
            for k in "abcd"]
    outcomes: list = [None] * 4
    threads = [threading.Thread(target=lambda k=k: outcomes.__setitem__(k, runs[k].run())) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return outcomes


@pytest.mark.slow
def test_four_items_started_at_once_all_succeed_with_the_retry_and_not_without(tmp_path):
    bare = start_four_at_once(lock_project(tmp_path / "bare"), lock_retries=0, wait_for_lock=False, hold_s=6)
    assert any(not o.ok and "Unable to acquire lock" in o.log.read_text() for o in bare)
    retried = start_four_at_once(lock_project(tmp_path / "retry"), lock_retries=8, wait_for_lock=False, hold_s=6)
    assert all(o.ok for o in retried) and any(o.attempts > 1 for o in retried)
    waited = start_four_at_once(lock_project(tmp_path / "wait"), lock_retries=0, wait_for_lock=True, hold_s=6)
    assert all(o.ok and o.attempts == 1 for o in waited)
    for project in ("retry", "wait"):
        status = subprocess.run([repro_command("x")[0], "status"], cwd=tmp_path / project, capture_output=True,
                                text=True, check=True).stdout
        assert "up to date" in status


def test_slurm_settings_come_from_key_value_pairs_and_bad_ones_are_named():
    from absld.fanout.slurm import SlurmError, settings_from_pairs

    settings = settings_from_pairs(["partition=gpu", "time_min=720", "mem_gb=64.5", "upstream_jobs=true",
                                    "constraint=a100", "exclusive", "setup=module load cuda", "setup=source env"])
    assert (settings.partition, settings.time_min, settings.mem_gb, settings.upstream_jobs) == ("gpu", 720, 64.5, True)
    assert dict(settings.extra) == {"constraint": "a100", "exclusive": True}
    assert settings.setup == ("module load cuda", "source env") and settings_from_pairs([]) == type(settings)()
    for bad, said in (("time_min=x", "time_min='x'"), ("upstream_jobs=maybe", "true or false"),
                      ("time_min", "needs a value"), ("=3", "KEY=VALUE"), ("extra=1", "KEY=VALUE"),
                      ("time_min=0", "time_min = 0"), ("signal=TERM", "USR1, USR2")):
        with pytest.raises(SlurmError, match=said):
            settings_from_pairs([bad])


def test_the_command_line_refuses_bad_slurm_settings_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    result = CliRunner().invoke(main, ["fanout", "--backend", "slurm", "--slurm", "time_min=soon"])
    assert result.exit_code == 1 and result.output.startswith("Error: --slurm time_min='soon'")
    result = CliRunner().invoke(main, ["fanout", "--slurm", "partition=gpu", "--gpus", "0"])
    assert result.exit_code == 1 and "is for --backend slurm" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml"]
