"""The Slurm backend of the fan-out (absld/fanout/slurm.py): the #SBATCH lines submitit writes for a
plan, against stub sbatch/squeue/sacct/scancel/srun on PATH, and one real job through submitit's
local executor that is preempted as Slurm preempts (SIGTERM, then SIGUSR1), requeued, resumed from
checkpoints/, and ends with a student byte-identical to an uninterrupted run's."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from absld.errors import UserError
from absld.fanout import slurm
from absld.fanout.plan import make_plan

submitit = pytest.importorskip("submitit")  # the slurm extra: ./reproduce.sh test installs it

GRAPH = {  # the DAG of a two-method matrix, as plan.dvc_state reads it
    "check": set(), "prepare": {"check"}, "teacher": {"prepare"}, "teacher-clean": {"prepare"},
    "distill@absld-0": {"teacher", "teacher-clean"}, "distill@sat-0": {"teacher", "teacher-clean"},
    "evaluate-teacher": {"teacher"}, "evaluate@absld-0": {"distill@absld-0"}, "evaluate@sat-0": {"distill@sat-0"},
    "analyze": {"evaluate-teacher", "evaluate@absld-0", "evaluate@sat-0"},
}
COSTS = {"absld": 2.0, "sat": 1.0}

STUBS = {
    # sbatch: keep a copy of the script and the argv, answer as Slurm does
    "sbatch": """#!/bin/sh
record="$(dirname "$0")/../record"
mkdir -p "$record"
n=$(( $(cat "$record/count" 2>/dev/null || echo 100) + 1 ))
echo "$n" > "$record/count"
for last in "$@"; do :; done
cp "$last" "$record/$n.sh"
printf '%s\\n' "$@" > "$record/$n.argv"
echo "Submitted batch job $n"
""",
    "sacct": "#!/bin/sh\necho 'JobID|State|NodeList'\n",  # submitit's watcher: header, no job known yet
    "squeue": "#!/bin/sh\necho 'JOBID PARTITION NAME USER ST TIME NODES NODELIST(REASON)'\n",
    "scancel": "#!/bin/sh\nexit 0\n",
    "srun": "#!/bin/sh\nexec \"$@\"\n",  # submitit's SlurmExecutor looks for srun to know it is on a cluster
}


@pytest.fixture()
def stub_slurm(tmp_path, monkeypatch):
    """Stub Slurm commands first on PATH; returns the folder where sbatch records its scripts."""
    bin_dir = tmp_path / "stub-bin"
    bin_dir.mkdir()
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "record"


def sbatch_lines(script: str) -> dict[str, str | bool]:
    """``#SBATCH --key=value`` lines as ``{key: value}`` (a bare flag: True)."""
    out: dict[str, str | bool] = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, eq, value = line[len("#SBATCH --"):].partition("=")
            out[key] = value if eq else True
    return out


def submitted_scripts(record: Path) -> dict[str, dict[str, str | bool]]:
    """Job id -> its #SBATCH lines, for every job the stub sbatch took."""
    return {path.stem: sbatch_lines(path.read_text()) for path in sorted(record.glob("*.sh"))}


def submit_graph(project: Path, stale: set[str], settings: slurm.SlurmSettings):
    plan = make_plan(GRAPH, stale, COSTS, "test")
    executor = submitit.SlurmExecutor(folder=project / settings.folder / "%j")
    return plan, slurm.submit(project, plan, settings, executor=executor)


def test_every_item_is_one_requeueable_one_gpu_job_after_the_jobs_it_waits_for(tmp_path, stub_slurm):
    project = tmp_path / "project"
    project.mkdir()
    settings = slurm.SlurmSettings(upstream_jobs=True, partition="gpu", time_min=90)
    plan, jobs = submit_graph(project, set(GRAPH), settings)

    assert [s.item.stage for s in jobs] == plan.stages  # one job per item, in plan order
    ids = {s.item.stage: s.job_id for s in jobs}
    assert [int(i) for i in ids.values()] == list(range(101, 101 + len(GRAPH)))
    scripts = submitted_scripts(stub_slurm)
    assert sorted(scripts) == sorted(ids.values())
    for stage, job_id in ids.items():
        lines = scripts[job_id]
        item = plan.item(stage)
        waits = [ids[d] for d in item.after]
        rule = (f"afterok:{':'.join(waits)}," if waits else "") + "singleton"
        assert lines["dependency"] == rule, stage
        assert lines["job-name"] == f"absld-{slurm.project_tag(project)}-{stage}"
        assert lines["requeue"] is True and lines["signal"] == "USR1@120"
        if stage in ("check", "prepare", "analyze"):  # no GPU work
            assert "gpus-per-node" not in lines
        else:
            assert lines["gpus-per-node"] == "1", stage
        assert lines["partition"] == "gpu" and lines["time"] == "90"
        assert lines["output"].startswith(f"{project}/logs/slurm/%j/")
    assert len({scripts[i]["job-name"] for i in ids.values()}) == len(ids)  # singleton: one name per stage
    # evaluations afterok their own student, analyze after every evaluation
    assert scripts[ids["evaluate@sat-0"]]["dependency"] == f"afterok:{ids['distill@sat-0']},singleton"
    assert scripts[ids["analyze"]]["dependency"] == (
        f"afterok:{ids['evaluate-teacher']}:{ids['evaluate@absld-0']}:{ids['evaluate@sat-0']},singleton")
    script = (stub_slurm / f"{ids['distill@sat-0']}.sh").read_text()
    assert "export SUBMITIT_PREEMPT_SIGNAL=USR1" in script  # submitit's handler listens for the signal sent
    assert (project / "logs" / "slurm" / ids["distill@sat-0"] / f"{ids['distill@sat-0']}_submitted.pkl").is_file()


def test_check_and_prepare_run_here_and_nothing_waits_on_them(tmp_path, stub_slurm, monkeypatch):
    ran = []

    class Here:
        def __init__(self, root, stage, **options):
            self.stage = stage

        def run(self):
            ran.append(self.stage)
            return type("Outcome", (), {"ok": True, "returncode": 0, "log": Path("x")})()

    monkeypatch.setattr("absld.fanout.runner.StageRun", Here)
    project = tmp_path / "project"
    project.mkdir()
    _, jobs = submit_graph(project, {"check", "prepare", "teacher"}, slurm.SlurmSettings())
    assert ran == ["check", "prepare"]
    assert jobs[0].item.stage == "teacher"
    assert submitted_scripts(stub_slurm)[jobs[0].job_id]["dependency"] == "singleton"


def test_the_dry_run_says_where_each_item_runs_and_after_what(tmp_path):
    plan = make_plan(GRAPH, set(GRAPH), COSTS, "test")
    lines = dict(line.split(None, 1) for line in slurm.describe(tmp_path, plan, slurm.SlurmSettings()))
    assert lines["prepare"].startswith("here")
    assert lines["teacher"] == f"job {slurm.job_name(tmp_path, 'teacher')}: --gpus-per-node=1, at once, singleton"
    assert lines["evaluate@sat-0"].endswith("--gpus-per-node=1, afterok distill@sat-0, singleton")
    assert "no GPU, afterok evaluate-teacher, evaluate@absld-0, evaluate@sat-0" in lines["analyze"]


def test_an_upstream_stage_failing_here_submits_nothing(tmp_path, stub_slurm, monkeypatch):
    class Fails:
        def __init__(self, root, stage, **options):
            pass

        def run(self):
            return type("Outcome", (), {"ok": False, "returncode": 2, "log": Path("logs/fanout/prepare.log")})()

    monkeypatch.setattr("absld.fanout.runner.StageRun", Fails)
    project = tmp_path / "project"
    project.mkdir()
    with pytest.raises(UserError, match="prepare failed here .*nothing was submitted"):
        submit_graph(project, {"prepare", "teacher"}, slurm.SlurmSettings())
    assert not stub_slurm.exists()


def test_without_slurm_the_default_executor_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    with pytest.raises(UserError, match="no Slurm here.*--backend local"):
        slurm.make_executor(tmp_path, slurm.SlurmSettings())


class RecordingExecutor:
    """Not Slurm's (as submitit's LocalExecutor): what was submitted, and which results were awaited when."""

    def __init__(self, fails=()):
        self.events, self.fails = [], set(fails)

    def update_parameters(self, **parameters):
        self.parameters = parameters

    def submit(self, body):
        self.events.append(("submit", body.stage))
        executor = self

        class Job:
            job_id = str(len(self.events))

            def result(self):
                executor.events.append(("result", body.stage))
                if body.stage in executor.fails:
                    raise RuntimeError(f"{body.stage} failed")
                return {}

        return Job()


def test_another_executor_submits_an_item_only_after_the_jobs_it_waits_for_succeeded(tmp_path):
    deps = {"distill@sat-0": set(), "evaluate@sat-0": {"distill@sat-0"}, "analyze": {"evaluate@sat-0"}}
    plan = make_plan(deps, set(deps), COSTS, "test")
    executor = RecordingExecutor()
    slurm.submit(tmp_path, plan, slurm.SlurmSettings(), executor=executor)
    assert executor.events == [("submit", "distill@sat-0"), ("result", "distill@sat-0"), ("submit", "evaluate@sat-0"),
                               ("result", "evaluate@sat-0"), ("submit", "analyze")]
    assert executor.parameters["setup"] == ["export SUBMITIT_PREEMPT_SIGNAL=USR1"]

    failing = RecordingExecutor(fails={"distill@sat-0"})
    with pytest.raises(UserError, match=r"distill@sat-0 \(job 1\) failed, so evaluate@sat-0 .*not submitted"):
        slurm.submit(tmp_path, plan, slurm.SlurmSettings(), executor=failing)
    assert ("submit", "evaluate@sat-0") not in failing.events


def test_without_submitit_the_error_says_how_to_install_it():
    code = ("import sys; sys.modules['submitit'] = None\n"
            "import absld.fanout.plan, absld.fanout.runner, absld.fanout.slurm as s\n"
            "try:\n    s.require_submitit()\nexcept s.SlurmError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert out.returncode == 0, out.stderr
    assert "pip install 'absld-repro[slurm]'" in out.stdout


@pytest.mark.parametrize("bad, says", [({"signal": "TERM"}, "USR1, USR2"), ({"gpus_per_node": 0}, "positive"),
                                       ({"stop_grace_s": 200}, "below signal_delay_s")])
def test_bad_settings_name_the_value_and_what_is_allowed(bad, says):
    with pytest.raises(UserError, match=says):
        slurm.SlurmSettings(**bad)


def test_the_job_body_is_a_checkpointable_whose_checkpoint_requeues_itself():
    from absld.fanout.slurm_job import StageJob

    job = StageJob("/nowhere", "distill@sat-0")
    assert isinstance(job, submitit.helpers.Checkpointable)
    again = job.checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission) and again.function is job


# ---- one real job through submitit's LocalExecutor, preempted as Slurm does ----

ENV = {"TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "DVC_NO_ANALYTICS": "1"}
STAGE = "distill@sat-0"
CHECKPOINT = Path("checkpoints/distill/sat/seed0/last.pt")
STUDENT = Path("models/students/sat/seed0.pt")


def one_method_params() -> str:
    """The tiny profile with one student (SAT), eight short epochs, a one-epoch teacher."""
    from tests.conftest import profile_params_text

    params = yaml.safe_load(profile_params_text("tiny"))
    params["distill"]["methods"] = ["sat"]
    params["distill"]["train"].update(epochs=8, milestones=[6])
    params["teacher"]["train"].update(epochs=1, milestones=[])
    params["teacher_clean"]["train"].update(epochs=1, milestones=[])
    return yaml.safe_dump(params, sort_keys=False)


def processes_of_the_job(job) -> dict:
    """What Slurm signals in a job, by role: the stage (``absld distill``), ``dvc repro``, then the job's
    task (``submitit.core._submit``), last, so that the stage has the signal before the task acts;
    any other descendant (a short-lived helper) as ``other-<pid>``."""
    import psutil

    def command(process) -> str:
        try:
            return " ".join(process.cmdline())
        except psutil.Error:
            return ""

    tree = psutil.Process(job._process.pid).children(recursive=True)
    task = next(p for p in tree if "submitit.core._submit" in command(p))
    roles = {}
    for process in task.children(recursive=True):
        said = command(process)
        role = "stage" if "distill --method" in said else "dvc" if "repro --single-item" in said else None
        roles[role or f"other-{process.pid}"] = process
    roles["task"] = task
    return roles


def signal_all(processes: dict, signum: int) -> None:
    import psutil

    for process in processes.values():
        try:
            process.send_signal(signum)
        except psutil.NoSuchProcess:  # a helper that has ended
            pass


def kill_tree(pid: int) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
        for process in [*root.children(recursive=True), root]:
            process.kill()
    except psutil.NoSuchProcess:
        pass


def preempted_once(job, project: Path) -> dict:
    """Once the job's stage has saved its first epoch: SIGTERM to every process of the job, then
    SIGUSR1, as Slurm preempts; the job's result once it has ended."""
    deadline = time.monotonic() + 240
    while not (project / CHECKPOINT).exists():  # epoch 1 is saved: the stage is in the middle of training
        assert not job.done() and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.1)
    before = processes_of_the_job(job)
    assert {"stage", "dvc", "task"} <= set(before), before
    signal_all(before, signal.SIGTERM)  # SIGTERM first ...
    time.sleep(0.5)
    for role in ("stage", "dvc", "task"):
        process = before[role]
        assert process.is_running() and process.status() != "zombie", f"SIGTERM alone stopped the {role}"
    signal_all(processes_of_the_job(job), signal.SIGUSR1)  # ... then the user signal (--signal=USR1)
    while not job.done():
        assert time.monotonic() < deadline, "the requeued job did not finish"
        time.sleep(0.2)
    return job.result()


def lock_entry(project: Path) -> dict:
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"][STAGE]["outs"]


@pytest.mark.slow
def test_a_preempted_job_is_requeued_resumes_and_its_student_is_byte_identical(tmp_path, monkeypatch):
    from tests.test_dvc_pipeline import dvc_project, run

    reference = dvc_project(tmp_path / "reference", one_method_params())
    run(["dvc", "repro", "teacher", "teacher-clean"], reference, **ENV)  # check, prepare, the teachers
    project = tmp_path / "preempted"
    shutil.copytree(reference, project, symlinks=True)  # the same upstream, no student yet

    for key, value in {**ENV, "PYTHONPATH": str(project)}.items():  # the job's environment is ours
        monkeypatch.setenv(key, value)
    uninterrupted = subprocess.Popen(  # the reference student, meanwhile
        ["dvc", "repro", "--single-item", STAGE], cwd=reference, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(reference),
                 PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"), text=True)

    plan = make_plan({STAGE: set()}, {STAGE}, {"sat": 1.0}, "test")
    executor = submitit.LocalExecutor(folder=project / "logs" / "slurm" / "%j")
    settings = slurm.SlurmSettings(time_min=30, signal_delay_s=120, stop_grace_s=60)
    [submitted] = slurm.submit(project, plan, settings, executor=executor)
    try:
        result = preempted_once(submitted.job, project)
    finally:  # a failed test leaves no job behind
        kill_tree(submitted.job._process.pid)
        if uninterrupted.poll() is None and sys.exc_info()[0] is not None:
            uninterrupted.kill()
    assert result["starts"] == 2 and result["returncode"] == 0, result  # requeued once, then done
    log = (project / "logs" / "fanout" / f"{STAGE}.log").read_text()
    assert "interrupted: distill" in log, log  # stopped as by Ctrl-C (a kill prints nothing)
    assert f"start 2 of {STAGE}" in log and "[sat/seed0] resuming after epoch" in log, log

    assert uninterrupted.wait(timeout=240) == 0, uninterrupted.stderr.read()
    assert (project / STUDENT).read_bytes() == (reference / STUDENT).read_bytes()
    assert lock_entry(project) == lock_entry(reference)
    assert "up to date" in run(["dvc", "status", STAGE], project).stdout.lower()
