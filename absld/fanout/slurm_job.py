"""The body of one Slurm job of a fan-out: a ``submitit.helpers.Checkpointable`` that runs its item
through :class:`.runner.StageRun` and, when submitit asks it to checkpoint, stops the stage and
asks to be requeued. Imports submitit (the ``slurm`` extra); :mod:`.slurm` imports this module
only when it submits.

How the signals go (submitit 1.5, ``core/job_environment.py``): in the job's process submitit
binds SIGTERM and SIGCONT to a handler that only logs them, and the user signal
(``SUBMITIT_PREEMPT_SIGNAL``, set by the job's script: USR1) to one that calls :meth:`checkpoint`,
pickles the :class:`~submitit.helpers.DelayedSubmission` it returns in place of the job, and
requeues the job (``scontrol requeue``; the local executor restarts it on exit status 144); a
time-limit counts against ``max_num_timeout``, a preemption does not. Slurm signals every process
of the job, the stage's too, so the stage (``dvc repro`` and the command it runs) starts with
SIGTERM and the user signal ignored (:data:`CHILD_SIGNALS`): SIGTERM alone never stops it
mid-write; the user signal reaches it only as :meth:`checkpoint`'s SIGINT (Ctrl-C: the training
loop keeps its last per-epoch checkpoint, ``checkpoints/distill/<method>/seed<S>/last.pt``, DVC
releases its locks). If the cluster kills the job outright (SIGKILL after its grace time), the
checkpoints are atomic files and the requeued job resumes from the last one all the same.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import submitit

from .runner import StageRun
from .slurm import SlurmError


CHILD_SIGNALS = {signal.SIGTERM: signal.SIG_IGN, signal.SIGUSR1: signal.SIG_IGN, signal.SIGUSR2: signal.SIG_IGN,
                 signal.SIGINT: signal.SIG_DFL}
"""The stage's signal dispositions: SIGTERM and both user signals ignored (only the job's own
process acts on them; a user signal's default action would kill the stage), SIGINT at its default
(what :meth:`StageRun.stop` sends; a background job may have inherited it ignored)."""


class StageFailed(SlurmError):
    """The item's ``dvc repro`` ended other than 0: the job fails, and its ``afterok`` dependants never run."""


class StageJob(submitit.helpers.Checkpointable):
    """``dvc repro --single-item <stage>`` in the project at ``root``, as a requeueable job.

    ``starts`` counts the times this job's body began (1, then one more per requeue: the state is
    pickled by :meth:`checkpoint`); the job's result is ``{"stage", "returncode", "attempts", "starts"}``."""

    def __init__(self, root: str, stage: str, *, lock_retries: int = 8, usr_signal: str = "USR1",
                 stop_grace_s: float = 60.0) -> None:
        self.root, self.stage, self.lock_retries = root, stage, lock_retries
        self.usr_signal, self.stop_grace_s = usr_signal, stop_grace_s
        self.starts = 0
        self._run: StageRun | None = None

    def __call__(self) -> dict[str, Any]:
        self.starts += 1
        env = submitit.JobEnvironment()
        header = (f"[slurm] job {env.job_id} on {socket.gethostname()}: start {self.starts} of {self.stage} "
                  f"(SIG{env.USR_SIG} checkpoints and requeues it)")
        if env.USR_SIG != self.usr_signal:
            header += f"; warning: submitted for SIG{self.usr_signal}, set SUBMITIT_PREEMPT_SIGNAL={self.usr_signal}"
        self._run = StageRun(Path(self.root), self.stage, lock_retries=self.lock_retries, header=header,
                             child_signals=CHILD_SIGNALS)
        outcome = self._run.run()
        self._run = None
        if not outcome.ok:
            raise StageFailed(f"{self.stage}: dvc repro exited {outcome.returncode}; see {outcome.log}")
        return {"stage": self.stage, "returncode": outcome.returncode, "attempts": outcome.attempts,
                "starts": self.starts}

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Stop the running stage as Ctrl-C (its checkpoints stay), wait for it to exit (at most
        ``stop_grace_s``, then kill its process group), and hand submitit this job to requeue."""
        run, self._run = self._run, None
        if run is not None:
            run.stop(signal.SIGINT)
            process = run.process
            if process is not None and not _exited(process.pid, self.stop_grace_s):
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _exited(process.pid, 10.0)
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_run"] = None  # a running child is not state: the requeued job starts its own
        return state


def _exited(pid: int, timeout: float) -> bool:
    """Whether the child ``pid`` has exited within ``timeout`` seconds, without reaping it
    (``WNOWAIT``): this runs in a signal handler that interrupted ``Popen.wait`` on it, which
    holds that Popen's lock, so a second ``wait()`` here would block forever."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # already reaped
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
