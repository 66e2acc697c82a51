"""Atomic file writing and hashing: a killed stage never leaves a half file that looks whole."""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import glob
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import StageError, UserError


_UMASK = os.umask(0)
os.umask(_UMASK)


class OutputError(UserError, OSError):
    """An output that cannot be written: a full disk, a read-only or unwritable directory. The
    previous version of the file (if any) is left as it was, and no temporary file remains."""


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR}


def output_error(path: Path, exc: OSError) -> OutputError | None:
    """The user's version of an OSError met while writing ``path`` (None: not a writing problem).

    A full disk is one whatever the file the error names; a refusal (permissions, a read-only file
    system, a file where a directory should be) only when it names ``path``, its temporary or one
    of their directories, so that a source file that cannot be read is not reported as an output."""
    where = Path(exc.filename) if isinstance(exc.filename, (str, os.PathLike)) else None
    ours = where is None or where == path or where.parent == path.parent or where in path.parents \
        or path.parent in where.parents
    if exc.errno in _FULL:
        fix = f"the disk is full: free space on it (`df -h {path.parent}`) and run the stage again"
    elif exc.errno in _DENIED and ours:
        fix = ("make the directory writable (or run the pipeline from a writable copy of the project) "
               "and run the stage again")
    else:
        return None
    return OutputError(f"cannot write {path}: {exc.strerror or exc}; {fix}")


@contextlib.contextmanager
def _as_output_error(path: Path) -> Iterator[None]:
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        error = output_error(path, exc)
        if error is None:
            raise
        raise error from exc


def _temp_prefix(path: Path) -> str:
    """Temporaries of ``path`` are ``.<name>.<pid>.<random>.tmp`` beside it: hidden, and owned by a
    process whose pid they name, so a later writer can tell a killed writer's leftovers."""
    return f".{path.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporaries of ``path`` (files or directories) left by writers that were killed
    before they could rename or remove them (SIGKILL, power loss); those of live processes stay."""
    if not path.parent.is_dir():
        return
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid_text = candidate.name[len(path.name) + 2:].split(".", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        if candidate.is_dir():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            candidate.unlink(missing_ok=True)
    # atomic_dir's previous version, if a kill came mid-swap
    shutil.rmtree(path.with_name(f".{path.name}.old"), ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A reader sees the old file or the new one, never a part: the data is flushed to disk (fsync)
    before the rename. Leftovers of writers killed earlier are removed first."""
    path = Path(path)
    with _as_output_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file normal permissions
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        _write_synced(handle, data)


def _write_synced(handle: Any, data: bytes) -> None:
    """Write, flush and fsync: the bytes are on the disk before the file is renamed into place."""
    handle.write(data)
    handle.flush()
    os.fsync(handle.fileno())


def check_writable(*directories: str | Path) -> None:
    """Before a stage starts work: each directory (or, where it does not exist yet, the nearest
    existing one above it, in which it would be made) must be a directory we can create files in.
    Creates nothing that stays. Raises :class:`OutputError` naming the directory and the fix."""
    for directory in map(Path, directories):
        existing = directory
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise OutputError(f"cannot write {directory}: {existing} is a file, not a directory; "
                              "move it away and run the stage again")
        with _as_output_error(directory):
            with tempfile.TemporaryFile(prefix=".absld-write-check.", dir=existing):
                pass


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON accepts: NaN and +-inf -> None (``null``), numpy scalars and
    arrays -> Python numbers and lists, tuples -> lists, mapping keys -> str."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def dumps_json(obj: Any) -> str:
    """``obj`` as strict JSON text (indented, a final newline): every non-finite number is written as
    ``null``, and ``json.dumps(allow_nan=False)`` refuses any that would slip through, so no file this
    project writes holds ``NaN`` or ``Infinity``, which are not JSON."""
    return json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` atomically as strict JSON (:func:`dumps_json`: NaN and inf -> null)."""
    write_text(path, dumps_json(obj))


def write_npy(path: str | Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    write_bytes(path, buf.getvalue())


def write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes(path, buf.getvalue())


def write_torch(path: str | Path, obj: Any) -> None:
    """``torch.save`` through a file handle: saved to a path, torch names the archive's top folder
    after the (temporary, random) file name, so identical checkpoints would differ in bytes and
    DVC would see a new teacher on every run."""
    import torch  # the one writer that needs torch; the others stay importable without it

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def write_csv(path: str | Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """Write dict rows as CSV: ``columns``, or every key of every row in order of appearance
    (a key missing from a row leaves its cell empty).

    The stages write their per-epoch logs and plot data with this rather than with DVCLive (read
    for issue 9, dvclive 3.49): DVCLive keeps one ``plots/metrics/<name>.tsv`` per scalar with a
    ``step`` column, while the contract ``temperatures.csv`` is one row per (epoch, class) with
    fixed columns and ``train_log.csv``/``plots/analyze/*.csv`` are single long tables that the
    analysis, the tests and dvc.yaml's templates read as such; by default DVCLive also edits the
    project's dvc.yaml and saves its own DVC experiment (``dvcyaml``, ``save_dvc_exp``), which a
    stage inside `dvc exp run` must not do. What DVCLive would add (DVC plots and metrics files)
    the stages already write, atomically and byte-reproducibly."""
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")  # quotes (and doubles quotes) only where needed
    writer.writerow(columns)
    writer.writerows([_csv_cell(row.get(c, "")) for c in columns] for row in rows)
    write_text(path, buffer.getvalue())


def _csv_cell(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` only on success."""
    path = Path(path)
    with _as_output_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
        try:
            yield tmp
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def short_hash(*parts: Any) -> str:
    """A 16-hex-digit sha256 of JSON-able parts (sorted keys; other objects by ``str``): the identity
    of a configuration, e.g. of a resumable checkpoint or of a W&B run."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_digest(path: str | Path, algorithm: str, chunk: int = 1 << 20) -> str:
    """The hex digest of a file read in chunks (``algorithm``: any of hashlib's names)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    return file_digest(path, "sha256")


def md5_file(path: str | Path) -> str:
    return file_digest(path, "md5")


def project_tag(root: str | Path = ".") -> str:
    """12 hex digits of the project's absolute path: what the stage locks and a fan-out's Slurm job
    names key on (the same checkout, the same tag)."""
    return hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]


def lock_path(name: str) -> Path:
    """The lock file of stage ``name`` in this project: under the system's temporary directory, keyed
    by the project's path, so that the project itself gets no scratch files."""
    return Path(tempfile.gettempdir()) / "absld-locks" / f"{project_tag()}-{name.replace('/', '-')}.lock"


@contextlib.contextmanager
def stage_lock(name: str) -> Iterator[None]:
    """Hold the stage's lock file (an exclusive, non-blocking ``flock``) while it runs; a
    second process running the same stage stops with one line naming the first one's pid. The
    kernel releases the lock when its holder dies, so a killed stage never leaves a stale lock."""
    path = lock_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StageError(f"{name} is already running (pid {holder}, lock {path}); wait for it to finish "
                             "or stop it before running it again") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()
