"""What every stage command shares: params loading, user-error handling, the stage lock, the layout."""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

from absld.code import stage_digest
from absld.params import Params, load_params
from absld.distributed import is_main
from absld.errors import Interrupted, UserError
from absld.io import check_writable, stage_lock
from absld.layout import OUTPUT_ROOTS, Layout
from absld.tracking import check_tracking
from absld.vocab import ModelId

LAYOUT = Layout()
"""The project's files, relative to the directory the stage runs in (DVC runs it in the project)."""


params_option = click.option(
    "--params", "params_path", default="params.yaml", show_default=True,
    type=click.Path(dir_okay=False), help="The params file (DVC passes params.yaml).",
)


RESUMABLE = ("teacher", "distill", "evaluate")
"""The commands whose work continues from checkpoints/ when run again."""

INTERRUPTED_EXIT = 130
"""The exit status of a command stopped by Ctrl-C (SIGINT), as shells report one (128 + 2)."""


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every :class:`absld.errors.UserError` into a one-line ``Error: ...`` and exit code 1
    (any other exception is a bug and keeps its traceback), and Ctrl-C into one ``interrupted: ...``
    line saying where the command stopped and how to go on, and exit code 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt as exc:
            click.echo(interrupted_line(click.get_current_context().info_name or func.__name__, exc), err=True)
            raise click.exceptions.Exit(INTERRUPTED_EXIT) from None

    return wrapper


def interrupted_line(command: str, exc: KeyboardInterrupt) -> str:
    """``interrupted: <command> <where it stopped>; <how to go on>`` (where: an
    :class:`absld.errors.Interrupted`'s message, else just ``stopped``)."""
    where = str(exc) if isinstance(exc, Interrupted) and str(exc) else "stopped"
    what = where if where.startswith(command) else f"{command} {where}"
    if command in RESUMABLE:
        return f"interrupted: {what}; rerun the same command (or `dvc repro`) to resume from checkpoints/"
    return f"interrupted: {what}; rerun the same command (or `dvc repro`) to run it again"


def model_layout(params: Params, model_id: str) -> Layout:
    """The layout for ``model_id``: :data:`LAYOUT` for the teacher and the students of the DVC matrix
    (distill.methods x seeds); for any other student its scratch/ twin (:data:`absld.layout.SCRATCH`)."""
    model = ModelId.parse(model_id)
    if model.is_teacher or (model.method in params.distill.methods and model.seed in params.seeds):
        return LAYOUT
    return LAYOUT.scratch()


def load(params_path: str) -> Params:
    """The validated params; first checks that W&B can log as WANDB_MODE asks (before any work)."""
    check_tracking()
    return load_params(params_path)


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


def code(command: str) -> str:
    """The code digest of stage ``command`` (its import closure, as its DVC deps): part of the resume
    fingerprint of its work, so an edit of that code, and of nothing else, starts the work afresh."""
    return stage_digest(command)
