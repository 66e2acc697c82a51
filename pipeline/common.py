"""What every stage command shares: params loading, user-error handling, the file layout."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import click

import absld
from absld.config import Params, load_params
from absld.distributed import is_main
from absld.errors import UserError
from absld.io import check_writable, short_hash, write_csv
from absld.tracking import check_tracking
from absld.vocab import ModelId


class StageError(UserError, RuntimeError):
    """A stage-level problem for the user (e.g. a teacher whose accuracy does not match)."""


params_option = click.option(
    "--params", "params_path", default="params.yaml", show_default=True,
    type=click.Path(dir_okay=False), help="The params file (DVC passes params.yaml).",
)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every :class:`absld.errors.UserError` into a one-line ``Error: ...`` and exit code 1
    (any other exception is a bug and keeps its traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def load(params_path: str) -> Params:
    """The validated params; first checks that W&B can log as WANDB_MODE asks (before any work)."""
    check_tracking()
    return load_params(params_path)


def lock_path(name: str) -> Path:
    """The lock file of stage ``name`` in this project: under the system's temporary directory, keyed
    by the project's path, so that the project itself gets no scratch files."""
    project = hashlib.sha256(str(Path.cwd().resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "absld-locks" / f"{project}-{name.replace('/', '-')}.lock"


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


OUTPUT_ROOTS = ("data", "models", "results", "plots", "checkpoints", "logs")
"""The folders the stages write into (each under the project directory)."""


def locked(name_of: Callable[..., str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run a stage command under :func:`stage_lock` (``name_of`` gets the command's keyword
    arguments), after checking that it could write its outputs (:func:`absld.io.check_writable`)."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not is_main():  # torchrun's other processes: rank 0 holds the lock and writes
                return func(*args, **kwargs)
            with stage_lock(name_of(**kwargs)):
                check_writable(*OUTPUT_ROOTS)
                return func(*args, **kwargs)

        return wrapper

    return decorate


def source_digest(*packages: Path) -> str:
    """sha256 over the ``*.py`` files under ``packages`` (each file's path in its package and bytes)."""
    digest = hashlib.sha256()
    for package in packages:
        for path in sorted(package.rglob("*.py")):
            digest.update(f"{package.name}/{path.relative_to(package).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.cache
def code_digest() -> str:
    """:func:`source_digest` of ``absld`` and ``pipeline``: the code that made a resumable state."""
    return source_digest(Path(absld.__file__).parent, Path(__file__).parent)


def fingerprint(*parts: Any) -> str:
    """The identity of resumable work (a training checkpoint, an evaluation's progress): its settings
    and data, and the code. A stage that DVC reruns because its code changed must not resume work
    that the old code did, so any edit of ``absld/`` or ``pipeline/`` starts it afresh."""
    return short_hash(code_digest(), *parts)


EVAL_SAVE_SECONDS_ENV = "ABSLD_EVAL_SAVE_SECONDS"
"""How often (seconds, default 30) an evaluation saves its progress; 0: after every batch."""


# ---------------------------------------------------------------------------------------------
# the file layout (ARCHITECTURE.md); the library never sees these paths
def data_dir(params: Params) -> Path:
    return Path("data") / params.data.dataset


TEACHER_CHECKPOINT = Path("models/teacher.pt")
TEACHER_INFO = Path("models/teacher.json")
TEACHER_RESULTS = Path("results/teacher")
TEACHER_RESUME = Path("checkpoints/teacher/last.pt")
TEACHER_DOWNLOADS = Path("checkpoints/teacher/downloads")


def student_id(method: str, seed: int) -> str:
    """``<method>/seed<S>`` (:class:`absld.vocab.ModelId`)."""
    return str(ModelId.student(method, seed))


def student_checkpoint(method: str, seed: int) -> Path:
    return Path("models/students") / method / f"seed{seed}.pt"


def distill_results(method: str, seed: int) -> Path:
    return Path("results/distill") / method / f"seed{seed}"


def distill_resume(method: str, seed: int) -> Path:
    return Path("checkpoints/distill") / method / f"seed{seed}" / "last.pt"


def distill_plots(method: str, seed: int) -> Path:
    return Path("plots/distill") / method / f"seed{seed}"


def eval_dir(model_id: str) -> Path:
    """results/eval/<model> with <model> = teacher or <method>/seed<S>."""
    return Path("results/eval") / model_id


def eval_resume(model_id: str) -> Path:
    """checkpoints/eval/<model>/progress.npz: an interrupted evaluation's finished batches."""
    return Path("checkpoints/eval") / model_id / "progress.npz"


def eval_plots(model_id: str) -> Path:
    return Path("plots/eval") / model_id


def model_checkpoint(model_id: str) -> Path:
    """The checkpoint of a model id (teacher or <method>/seed<S>)."""
    model = ModelId.parse(model_id)
    if model.is_teacher:
        return TEACHER_CHECKPOINT
    return student_checkpoint(model.method, model.seed)


LOGS = Path("logs")
"""Wall-clock times (per epoch, per attack): untracked by DVC and Git, so that identical inputs give
byte-identical tracked outputs; the same numbers also go to W&B."""


def write_timings(name: str, timings: list[dict[str, float]]) -> Path:
    """logs/<name>.csv from :attr:`absld.train.FitResult.timings`."""
    path = LOGS / f"{name}.csv"
    write_csv(path, timings)
    return path


CHECKED = Path("results/params-checked.txt")
"""The check stage's constant stamp (its only output)."""
FAIRNESS_JSON = Path("results/fairness.json")
ANALYSIS_DIR = Path("results")
ANALYSIS_PLOTS = Path("plots/analyze")
PUBLISHED = Path("references/published.yaml")
COMPARISONS_JSON = ANALYSIS_DIR / "comparisons.json"
"""Seed summaries, paired tests and the analysis meta (fairness.json keeps exactly its contract)."""
TABLE_MD = ANALYSIS_DIR / "table.md"
TABLE_TEX = ANALYSIS_DIR / "table.tex"
TABLE_CSV = ANALYSIS_DIR / "table.csv"
REPORT_MD = ANALYSIS_DIR / "report.md"
TRAINING_JSON = ANALYSIS_DIR / "training.json"
"""DVC metrics: each student's checkpoint choice and last-epoch training metrics, so that `dvc exp
show` lists them beside the fairness metrics (the distill stages' own metrics.json files live in
output directories that also hold logs and tables, which DVC would read as metrics too)."""
