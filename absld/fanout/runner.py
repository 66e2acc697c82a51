"""One item of a fan-out: ``dvc repro --single-item <stage>`` in the project, its output in a log
file, retried when (and only when) DVC could not take its repository lock.

DVC takes its repository lock (``.dvc/tmp/lock``) while it reads the project and again while it
records the results, releasing it while the stage's command runs; a second ``dvc`` that finds it
taken waits about 3 s and fails with "Unable to acquire lock" (``dvc/lock.py``). Items that start
or finish together collide there. That failure happens before DVC runs anything or after it has
recorded everything it will, and a rerun of an up-to-date stage is a no-op, so the retry is safe;
every other failure is the stage's own and ends the item.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

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


def repro_command(stage: str) -> list[str]:
    return [dvc_executable(), "repro", "--single-item", stage]


def log_path(root: Path, stage: str) -> Path:
    """``logs/fanout/<stage>.log`` (``@`` kept, so the address stays readable)."""
    return root / "logs" / "fanout" / f"{stage.replace('/', '-')}.log"


def lock_failure(text: str) -> bool:
    return LOCK_MESSAGE in text


def backoff(attempt: int, base: float = 1.0, cap: float = 15.0) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...): exponential up to ``cap``, with jitter so
    that items that collided do not collide again."""
    return min(cap, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def run_stage(root: Path, stage: str, *, env: Mapping[str, str] | None = None, lock_retries: int = 8,
              header: str = "", sleep: Callable[[float], None] = time.sleep,
              command: list[str] | None = None) -> Outcome:
    """Run ``stage`` in the project at ``root`` until it ends other than on DVC's lock, at most
    ``1 + lock_retries`` times; its output (every attempt's) goes to :func:`log_path`, after
    ``header``. ``command`` replaces ``dvc repro --single-item <stage>`` (tests)."""
    log = log_path(root, stage)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = command or repro_command(stage)
    child_env = dict(os.environ if env is None else env)
    attempt = 0
    with open(log, "a") as handle:
        if header:
            handle.write(header.rstrip("\n") + "\n")
        while True:
            attempt += 1
            handle.write(f"$ {' '.join(cmd)}  (attempt {attempt})\n")
            handle.flush()
            result = subprocess.run(cmd, cwd=root, env=child_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            handle.write(result.stdout)
            handle.flush()
            if result.returncode == 0 or not lock_failure(result.stdout) or attempt > lock_retries:
                return Outcome(stage, result.returncode, attempt, log)
            wait = backoff(attempt)
            handle.write(f"[fanout] DVC's repository lock was taken; retry {attempt} of {lock_retries} "
                         f"in {wait:.1f} s\n")
            handle.flush()
            sleep(wait)
