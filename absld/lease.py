"""The GPU lease: with ``ABSLD_GPUS=0,1,...`` set, a stage process takes the first of those GPUs that
no other absld process holds, and sees only it.

For the entry points that pin no GPU themselves: a bare ``absld distill`` in a second shell,
``dvc queue start -j N`` (whose workers would all land on ``cuda:0``). The lease is an exclusive,
non-blocking ``flock`` on one file per GPU in a lock directory (``ABSLD_GPU_LOCK_DIR``, default
``/tmp/absld-gpu-locks-<uid>``: per user and per machine, not per project, since the GPUs are the
machine's); the file descriptor stays open for the life of the process, so the kernel frees the GPU
when its holder exits or is killed, and a stale lease cannot exist. The GPU is then the process's
``CUDA_VISIBLE_DEVICES``, where it becomes ``cuda:0``: CUDA reads that variable once, when the
process first touches it (torch.cuda "is lazily initialized, so you can always import it";
``torch.cuda.is_available()`` already calls ``cudaGetDeviceCount``, which initialises the driver),
so :func:`acquire` must run before any ``torch.cuda`` call: ``pipeline/cli.py`` calls it when a
device-using command's options are parsed, before its body. This module imports no torch.

When all of them are held, the process waits (one line says which GPUs are busy and by whom),
polling every :data:`POLL_S` seconds, for ever or for at most ``ABSLD_GPU_WAIT`` seconds (then a
:class:`LeaseError`): a queue worker that finds the GPUs busy should start when one frees, not fail
its experiment. A no-op, with the reason in the record, where something else already chose:
- under Slurm (``SLURM_JOB_ID`` set): Slurm gives the job its GPUs;
- under torchrun (``LOCAL_RANK`` set): each process takes ``cuda:LOCAL_RANK`` of what torchrun was
  given (choose those GPUs with ``CUDA_VISIBLE_DEVICES`` on torchrun's command line);
- with ``CUDA_VISIBLE_DEVICES`` already set (by a launcher such as ``absld fanout``, or by the
  lease of a parent process).
The lease can never change a result: which GPU computes, not what. ``ABSLD_GPUS`` is therefore an
environment setting, not a param.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from .errors import UserError

T = TypeVar("T")

POLL_S = 1.0
"""Seconds between two looks at the lock files while every GPU is held."""


class LeaseError(UserError, RuntimeError):
    """A bad ABSLD_GPUS / ABSLD_GPU_WAIT, or no GPU freed within ABSLD_GPU_WAIT."""


@dataclass(frozen=True)
class Lease:
    """What :func:`acquire` decided: the leased GPU (its index on the machine; ``None`` when the lease
    did nothing) and why, as one line for the stage's log."""

    gpu: int | None
    reason: str
    asked: str = ""  # ABSLD_GPUS as set ("" when unset)

    def line(self) -> str:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return f"gpu lease: {self.reason} (CUDA_VISIBLE_DEVICES={'unset' if visible is None else repr(visible)})"


_held: tuple[Lease, int] | None = None
"""This process's lease and the descriptor of its lock file (open until the process ends)."""


def parse_gpus(value: str, name: str = "ABSLD_GPUS=") -> list[int]:
    """``ABSLD_GPUS`` (or ``absld fanout --gpus``: ``name``, as the errors spell it): comma-separated
    GPU indices (``0,1,3``), each a non-negative integer, none twice."""
    items = [item.strip() for item in value.split(",")]
    bad = [item for item in items if not re.fullmatch(r"[0-9]+", item)]
    if bad:
        raise LeaseError(f"{name}{value!r}: {bad[0]!r} is not a GPU index; use comma-separated "
                         f"non-negative integers, e.g. {name}0,1,2,3")
    gpus = [int(item) for item in items]
    twice = sorted({gpu for gpu in gpus if gpus.count(gpu) > 1})
    if twice:
        raise LeaseError(f"{name}{value!r} names GPU {twice[0]} twice; name each GPU once")
    return gpus


def parse_wait(value: str | None) -> float | None:
    """``ABSLD_GPU_WAIT``: the most seconds to wait for a free GPU (unset or empty: no bound)."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise LeaseError(f"ABSLD_GPU_WAIT={value!r} is not a number of seconds; use a non-negative number "
                         "(0: fail at once when every GPU is held), or unset it to wait as long as it takes")
    return seconds


def lock_dir() -> Path:
    """``ABSLD_GPU_LOCK_DIR``, else ``/tmp/absld-gpu-locks-<uid>``."""
    return Path(os.environ.get("ABSLD_GPU_LOCK_DIR") or f"/tmp/absld-gpu-locks-{os.getuid()}")


def lock_file(gpu: int) -> Path:
    """The lock file of ``gpu`` on this machine (the host's name in it, for a lock directory that
    several machines share)."""
    return lock_dir() / f"{socket.gethostname()}-gpu{gpu}.lock"


def _try_lock(gpu: int) -> int | None:
    """The open descriptor of ``gpu``'s lock file, locked exclusively; ``None`` if another process holds it."""
    import fcntl

    path = lock_file(gpu)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except PermissionError:  # another user's file in a shared ABSLD_GPU_LOCK_DIR: flock needs no write access
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    with contextlib.suppress(OSError):  # the holder's pid, for the line of a process that waits
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
    return fd


def _holder(gpu: int) -> str:
    try:
        return lock_file(gpu).read_text().strip() or "?"
    except OSError:
        return "?"


def _no_op() -> str | None:
    """Why the lease must leave the device alone here, or None."""
    if os.environ.get("SLURM_JOB_ID"):
        return f"not used under Slurm (job {os.environ['SLURM_JOB_ID']}: Slurm gives the job its GPUs)"
    if "LOCAL_RANK" in os.environ:
        return (f"not used under torchrun (local rank {os.environ['LOCAL_RANK']} takes cuda:LOCAL_RANK; choose "
                "torchrun's GPUs with CUDA_VISIBLE_DEVICES)")
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return "not used: CUDA_VISIBLE_DEVICES was already set (by a launcher or a parent process)"
    return None


def acquire(echo: Callable[[str], None] | None = None) -> Lease:
    """Take a GPU of ``ABSLD_GPUS`` for this process (see the module's docstring) and make it the only
    one CUDA sees; the same :class:`Lease` on every later call. ``echo`` gets the one line said when
    every GPU is held and the process waits (default: stderr)."""
    global _held
    if _held is not None:
        return _held[0]
    value = os.environ.get("ABSLD_GPUS", "")
    if not value.strip():
        return Lease(None, "not used: ABSLD_GPUS is not set")
    gpus = parse_gpus(value)
    wait = parse_wait(os.environ.get("ABSLD_GPU_WAIT"))
    reason = _no_op()
    if reason is not None:
        return Lease(None, reason, value)
    echo = echo or _stderr
    lock_dir().mkdir(parents=True, exist_ok=True)
    started, said = time.monotonic(), False
    while True:
        for gpu in gpus:
            fd = _try_lock(gpu)
            if fd is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
                waited = time.monotonic() - started
                lease = Lease(gpu, f"GPU {gpu} of ABSLD_GPUS={value}, lock {lock_file(gpu)}"
                                   + (f", after waiting {waited:.0f} s" if said else ""), value)
                _held = (lease, fd)
                return lease
        busy = ", ".join(f"{gpu} (pid {_holder(gpu)})" for gpu in gpus)
        if wait is not None and time.monotonic() - started >= wait:
            raise LeaseError(f"every GPU of ABSLD_GPUS={value} is held by another absld process: {busy}; none "
                             f"freed within ABSLD_GPU_WAIT={wait:g} s (unset ABSLD_GPU_WAIT to wait as long as "
                             "it takes, or add a GPU to ABSLD_GPUS)")
        if not said:
            echo(f"gpu lease: every GPU of ABSLD_GPUS={value} is held: {busy}; waiting for one to free "
                 + ("(no bound; ABSLD_GPU_WAIT=SECONDS sets one)" if wait is None else f"(at most {wait:g} s)"))
            said = True
        remaining = POLL_S if wait is None else max(0.0, min(POLL_S, wait - (time.monotonic() - started)))
        time.sleep(remaining)


FANOUT_SLOT_ENV = "ABSLD_FANOUT_SLOT"
"""Set by ``absld fanout`` in every child: its slot (``gpu1.0``), whose GPU it has in CUDA_VISIBLE_DEVICES."""


def holding(func: Callable[..., T], echo: Callable[[str], None] | None = None) -> Callable[..., T]:
    """``func`` that first takes the lease (:func:`acquire`) and, where ABSLD_GPUS asks for one, says
    in one line to ``echo`` (default: stderr) what it decided and what CUDA_VISIBLE_DEVICES is."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        lease = acquire(echo)
        if lease.asked:
            (echo or _stderr)(lease.line())
        elif os.environ.get(FANOUT_SLOT_ENV):  # a child of absld fanout: its slot's GPU
            (echo or _stderr)(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')} "
                              f"(absld fanout slot {os.environ[FANOUT_SLOT_ENV]})")
        return func(*args, **kwargs)

    wrapper.takes_gpu_lease = True  # type: ignore[attr-defined]  # what tests/test_lease.py looks for
    return wrapper


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def release() -> None:
    """Give this process's GPU back (closing its lock file); CUDA_VISIBLE_DEVICES stays as it is. A
    process need not call it (its exit frees the GPU): for tests and long-lived callers."""
    global _held
    if _held is not None:
        os.close(_held[1])
        _held = None
