"""The GPU lease (absld/lease.py): with ABSLD_GPUS set, concurrent processes take different GPUs,
wait for one to free, never keep a dead holder's, leave the device alone where a launcher chose it,
and every command that can compute on a device takes it before its body runs. CPU only: the lease
is a lock file and an environment variable, no CUDA call."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from absld import lease
from absld.code import closure
from absld.errors import UserError
from pipeline.cli import main
from tests.conftest import REPO

HOLDER = ("import sys; from absld import lease; held = lease.acquire(); "
          "print(held.gpu, held.reason, flush=True); sys.stdin.read()")
"""A process that takes a lease, prints its GPU, and holds it until its stdin closes."""

LAUNCHERS = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "LOCAL_RANK", "ABSLD_GPU_WAIT")


@pytest.fixture()
def locks(tmp_path: Path, monkeypatch) -> Path:
    """A fresh lock directory and an environment with no launcher's marks; this process's lease
    released afterwards (monkeypatch then restores CUDA_VISIBLE_DEVICES)."""
    for name in LAUNCHERS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ABSLD_GPU_LOCK_DIR", str(tmp_path / "locks"))
    yield tmp_path / "locks"
    lease.release()


def holder(gpus: str, **env: str) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if k not in LAUNCHERS}
    environment.update(PYTHONPATH=str(REPO), ABSLD_GPUS=gpus, **env)
    return subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment)


def line_of(stream, timeout: float = 20.0) -> str:
    """The next line of ``stream``, or a failure after ``timeout`` seconds (never a hung test)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no line within {timeout} s"
    return stream.readline()


def outcome(process: subprocess.Popen, timeout: float = 20.0) -> tuple[str, str]:
    """``process``'s stdout and stderr once it ends; killed, and a failure, after ``timeout`` seconds."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"still running (waiting?) after {timeout} s") from None


def stop(*processes: subprocess.Popen) -> None:
    for process in processes:
        if process.poll() is None:
            process.stdin.close()
        process.wait(timeout=20)


def test_two_processes_take_different_gpus_while_both_hold_them(locks):
    first, second = holder("0,1"), holder("0,1")
    try:
        gpus = {line_of(first.stdout).split()[0], line_of(second.stdout).split()[0]}
        assert gpus == {"0", "1"}
        assert first.poll() is None and second.poll() is None  # both still hold their lease
    finally:
        stop(first, second)


def test_the_leased_gpu_is_the_only_one_cuda_sees(locks, monkeypatch):
    monkeypatch.setenv("ABSLD_GPUS", "3,5")
    taken = lease.acquire()
    assert (taken.gpu, os.environ["CUDA_VISIBLE_DEVICES"]) == (3, "3")
    assert lease.acquire() is taken  # a later call in the same process: the same lease, not a second GPU
    assert "GPU 3" in taken.line() and "CUDA_VISIBLE_DEVICES='3'" in taken.line()


def test_a_third_process_waits_until_a_holder_exits_and_takes_its_gpu(locks):
    first, second = holder("0,1"), holder("0,1")
    third = None
    try:
        held = {line_of(p.stdout).split()[0]: p for p in (first, second)}
        third = holder("0,1")
        waiting = line_of(third.stderr)
        assert "every GPU of ABSLD_GPUS=0,1 is held" in waiting and "waiting" in waiting
        time.sleep(1.5 * lease.POLL_S)
        assert third.poll() is None  # still waiting, no GPU taken
        stop(held["1"])
        assert line_of(third.stdout).split()[:1] == ["1"]
    finally:
        stop(first, second, *([third] if third else []))


def test_the_wait_is_bounded_by_absld_gpu_wait(locks):
    first = holder("4")
    try:
        line_of(first.stdout)
        started = time.monotonic()
        waiter = holder("4", ABSLD_GPU_WAIT="0.3")
        _, stderr = outcome(waiter)  # a wait without its bound fails here, not hangs
        assert 0.3 <= time.monotonic() - started < 10 and waiter.returncode != 0
        said, error = stderr.strip().splitlines()[0], stderr.strip().splitlines()[-1]
        assert said.startswith("gpu lease: every GPU of ABSLD_GPUS=4 is held") and "at most 0.3 s" in said
        assert error.startswith("absld.lease.LeaseError:") and "ABSLD_GPU_WAIT=0.3 s" in error
        assert f"pid {first.pid}" in error
    finally:
        stop(first)


def test_a_killed_holder_frees_its_gpu(locks, monkeypatch):
    first = holder("2")
    line_of(first.stdout)
    second = holder("2", ABSLD_GPU_WAIT="0")
    assert outcome(second)[0] == "" and second.returncode != 0  # held: the lock is real
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=20)
    monkeypatch.setenv("ABSLD_GPUS", "2")
    monkeypatch.setenv("ABSLD_GPU_WAIT", "0")
    assert lease.acquire().gpu == 2
    first.stdin.close()


@pytest.mark.parametrize("launcher", [{"SLURM_JOB_ID": "123"}, {"LOCAL_RANK": "1"}, {"CUDA_VISIBLE_DEVICES": "5"},
                                      {"CUDA_VISIBLE_DEVICES": ""}])
def test_a_launchers_choice_is_left_alone(locks, monkeypatch, launcher):
    monkeypatch.setenv("ABSLD_GPUS", "0,1")
    for name, value in launcher.items():
        monkeypatch.setenv(name, value)
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    record = lease.acquire()
    assert record.gpu is None and record.asked == "0,1" and "not used" in record.reason
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == before
    assert not locks.exists()  # no lock taken


def test_unset_absld_gpus_does_nothing(locks, monkeypatch):
    monkeypatch.delenv("ABSLD_GPUS", raising=False)
    assert lease.acquire() == lease.Lease(None, "not used: ABSLD_GPUS is not set")
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and not locks.exists()


@pytest.mark.parametrize("value", ["0,,1", "a", "-1", "0,0", "1.5", "0;1", ","])
def test_a_bad_absld_gpus_is_a_user_error_naming_it(locks, monkeypatch, value):
    monkeypatch.setenv("ABSLD_GPUS", value)
    monkeypatch.setenv("ABSLD_GPU_WAIT", "0")  # a value taken for good fails the test, never waits
    with pytest.raises(UserError, match=f"ABSLD_GPUS={value!r}"):
        lease.acquire()
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


@pytest.mark.parametrize("value", ["x", "-1", "nan", "inf"])
def test_a_bad_absld_gpu_wait_is_a_user_error_naming_it(locks, monkeypatch, value):
    monkeypatch.setenv("ABSLD_GPUS", "0")
    monkeypatch.setenv("ABSLD_GPU_WAIT", value)
    with pytest.raises(UserError, match=f"ABSLD_GPU_WAIT={value!r}"):
        lease.acquire()


def test_the_default_lock_directory_is_the_machines_per_user_not_the_projects(monkeypatch, tmp_path):
    monkeypatch.delenv("ABSLD_GPU_LOCK_DIR", raising=False)
    seen = set()
    for project in ("a", "b"):
        (tmp_path / project).mkdir()
        monkeypatch.chdir(tmp_path / project)
        seen.add(lease.lock_dir())
    assert seen == {Path(f"/tmp/absld-gpu-locks-{os.getuid()}")}


def test_good_values_parse():
    assert lease.parse_gpus("0, 2,7") == [0, 2, 7]
    assert (lease.parse_wait(None), lease.parse_wait(""), lease.parse_wait("2.5")) == (None, None, 2.5)


# -- the hook: every command that can compute on a device takes the lease before its body ---------

BODIES = {  # a command's arguments, and the first call of its body (what the spy stands in for)
    "distill": (["distill", "--method", "absld", "--seed", "0"], "pipeline.distill", "load"),
    "teacher": (["teacher"], "pipeline.teacher", "load"),
    "evaluate": (["evaluate", "--model", "teacher"], "pipeline.evaluate", "load"),
    "bench": (["bench"], "pipeline.bench", "load"),
    "gpu-check": (["gpu-check", "--cpu-smoke"], "pipeline.gpu_check", "run_gpu_check"),
}


@pytest.mark.parametrize("name", list(BODIES))
def test_a_device_command_has_its_gpu_before_its_body_runs(locks, monkeypatch, tmp_path, name):
    args, module, first_call = BODIES[name]
    seen: list[str | None] = []

    def spy(*_, **__):
        seen.append(os.environ.get("CUDA_VISIBLE_DEVICES"))
        raise UserError("stopped by the test")

    monkeypatch.setattr(f"{module}.{first_call}", spy)
    monkeypatch.setenv("ABSLD_GPUS", "6")
    monkeypatch.chdir(tmp_path)  # the stage lock and check_writable look at the working directory only
    result = CliRunner().invoke(main, args)
    assert seen == ["6"], result.output
    assert "Error: stopped by the test" in result.output
    assert "gpu lease: GPU 6 of ABSLD_GPUS=6" in result.stderr and "CUDA_VISIBLE_DEVICES='6'" in result.stderr


def test_without_absld_gpus_a_command_says_nothing_of_a_lease(locks, monkeypatch, tmp_path):
    def spy(*_, **__):
        raise UserError("stopped by the test")

    monkeypatch.setattr("pipeline.distill.load", spy)
    monkeypatch.delenv("ABSLD_GPUS", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["distill", "--method", "absld", "--seed", "0"])
    assert result.stderr.strip() == "Error: stopped by the test"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and not locks.exists()


def test_a_bad_absld_gpus_stops_a_command_with_one_line(locks, monkeypatch):
    monkeypatch.setenv("ABSLD_GPUS", "0,0")
    result = CliRunner().invoke(main, ["distill", "--method", "absld", "--seed", "0"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == ["Error: ABSLD_GPUS='0,0' names GPU 0 twice; name each GPU once"]


def test_help_never_waits_for_a_gpu(locks, monkeypatch):
    first = holder("7")
    try:
        line_of(first.stdout)
        monkeypatch.setenv("ABSLD_GPUS", "7")
        monkeypatch.setenv("ABSLD_GPU_WAIT", "0")  # a lease taken here would fail at once
        result = CliRunner().invoke(main, ["distill", "--help"])
        assert result.exit_code == 0 and "gpu lease" not in result.output
    finally:
        stop(first)


def test_the_commands_that_can_pick_a_cuda_device_are_the_leased_ones():
    """A command whose code imports absld.runtime (the device's choice) takes the lease; one that
    computes on no device (check, prepare, analyze, ...) never waits for a GPU."""
    leased = {name for name, command in main.commands.items() if getattr(command.callback, "takes_gpu_lease", False)}
    device = {name for name, command in main.commands.items()
              if "absld/runtime.py" in closure(command.callback.__module__, REPO)}
    assert leased == device == set(BODIES)
