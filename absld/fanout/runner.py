"""One item of a fan-out: ``dvc repro --single-item <stage>`` in the project, its output in a log
file, retried when (and only when) DVC could not take its repository lock.

DVC takes its repository lock (``.dvc/tmp/lock``) while it reads the project and again while it
records the results, releasing it while the stage's command runs; a second ``dvc`` that finds it
taken waits about 3 s and fails with "Unable to acquire lock" (``dvc/lock.py``). Items that start
or finish together collide there. That failure happens before DVC runs anything or after it has
recorded everything it will, and a rerun of an up-to-date stage is a no-op, so the retry is safe;
every other failure is the stage's own and ends the item.

By default each item also runs with DVC's own ``--wait-for-lock`` (DVC >= 3.50 has it), so DVC waits
for the lock where it needs it instead of failing. That matters most at the end: without it, an
item whose command has finished but that cannot take the lock to record its outputs fails, and its
retry runs the command again (a student resumes from its last checkpoint in seconds; an evaluation
starts over). The retry stays for ``wait_for_lock=False`` (``absld fanout --no-wait-for-lock``).
"""

from __future__ import annotations

import os
import random
import signal
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

LOCK_MESSAGE = "Unable to acquire lock"
"""What DVC prints when another dvc process holds the repository lock (``dvc/lock.py``)."""


@dataclass(frozen=True)
class Outcome:
    """How an item ended: its exit status, the attempts it took (1: no lock retry) and its log."""

    stage: str
    returncode: int
    attempts: int
    log: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def dvc_executable() -> str:
    """The ``dvc`` beside this Python (the project's environment), else the one on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else (shutil.which("dvc") or "dvc")


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with this Python's ``bin/`` first on PATH, so that DVC finds ``absld`` (the stages'
    command) in the environment the fan-out runs in, activated or not."""
    out = dict(env)
    here = str(Path(sys.executable).parent)
    path = out.get("PATH", "")
    if here not in path.split(os.pathsep):
        out["PATH"] = here + (os.pathsep + path if path else "")
    return out


def repro_command(stage: str, wait_for_lock: bool = True) -> list[str]:
    """``dvc [--wait-for-lock] repro --single-item <stage>``."""
    return [dvc_executable(), *(["--wait-for-lock"] if wait_for_lock else []), "repro", "--single-item", stage]


def log_path(root: Path, stage: str) -> Path:
    """``logs/fanout/<stage>.log`` (``@`` kept, so the address stays readable)."""
    return root / "logs" / "fanout" / f"{stage.replace('/', '-')}.log"


def lock_failure(text: str) -> bool:
    return LOCK_MESSAGE in text


def backoff(attempt: int, base: float = 1.0, cap: float = 15.0) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...): exponential up to ``cap``, with jitter so
    that items that collided do not collide again."""
    return min(cap, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


class StageRun:
    """One item, run until it ends other than on DVC's lock, at most ``1 + lock_retries`` times.
    Each attempt's output streams into :func:`log_path` (after ``header``), so that ``tail -f``
    follows a long training. :meth:`stop` interrupts it as Ctrl-C would (SIGINT to the child's
    process group: the stage saves its checkpoint, DVC releases its locks), from another thread or
    a signal handler. ``wait_for_lock``: DVC waits for its lock itself (see the module's docstring).
    ``command`` replaces ``dvc repro --single-item <stage>`` (tests).

    ``child_signals`` (signal -> ``signal.SIG_IGN`` or ``signal.SIG_DFL``) is set in the child
    before it starts DVC: an ignored signal stays ignored through ``exec`` in everything DVC starts
    (the stage's command too), a default one is default there (the Slurm backend ignores the
    batch system's SIGTERM and USR signal in the stage, which only its own job process handles;
    both backends make sure SIGINT, which :meth:`stop` sends, is not inherited ignored)."""

    def __init__(self, root: Path, stage: str, *, env: Mapping[str, str] | None = None, lock_retries: int = 8,
                 header: str = "", sleep: Callable[[float], None] = time.sleep, wait_for_lock: bool = True,
                 command: list[str] | None = None,
                 child_signals: Mapping[int, Any] | None = None) -> None:
        self.root, self.stage, self.lock_retries, self.header, self.sleep = root, stage, lock_retries, header, sleep
        self.child_signals = dict(child_signals or {})
        self.env = child_env(os.environ if env is None else env)
        self.cmd = command or repro_command(stage, wait_for_lock)
        self.log = log_path(root, stage)
        self.process: subprocess.Popen | None = None
        self.stopped = False

    def run(self) -> Outcome:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        attempt = 0
        with open(self.log, "a") as handle:
            if self.header:
                handle.write(self.header.rstrip("\n") + "\n")
            while True:
                attempt += 1
                handle.write(f"$ {' '.join(self.cmd)}  (attempt {attempt})\n")
                handle.flush()
                begin = handle.tell()
                self.process = subprocess.Popen(self.cmd, cwd=self.root, env=self.env, stdout=handle,
                                                stderr=subprocess.STDOUT, start_new_session=True,
                                                preexec_fn=self._set_child_signals if self.child_signals else None)
                returncode = self.process.wait()
                handle.flush()
                with open(self.log) as reader:
                    reader.seek(begin)
                    said = reader.read()
                if (returncode == 0 or self.stopped or not lock_failure(said) or attempt > self.lock_retries):
                    return Outcome(self.stage, returncode, attempt, self.log)
                wait = backoff(attempt)
                handle.write(f"[fanout] DVC's repository lock was taken; retry {attempt} of {self.lock_retries} "
                             f"in {wait:.1f} s\n")
                handle.flush()
                self.sleep(wait)

    def _set_child_signals(self) -> None:
        """In the child, between fork and exec (no Python objects created beyond the loop)."""
        for signum, disposition in self.child_signals.items():
            signal.signal(signum, disposition)

    def stop(self, sig: int = signal.SIGINT) -> None:
        """Interrupt the running attempt (no further attempt starts)."""
        self.stopped = True
        process = self.process
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass


def run_stage(root: Path, stage: str, **options) -> Outcome:
    """:class:`StageRun` ``(root, stage, **options).run()``."""
    return StageRun(root, stage, **options).run()
