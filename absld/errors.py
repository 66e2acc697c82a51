"""The one base class of every error that is the user's to fix.

Each library module raises its own subclass (``ConfigError``, ``DataError``, ...), which also
keeps its built-in base (``ValueError``/``RuntimeError``) for code that catches those. The CLI
catches :class:`UserError` alone and prints its message as one line, without a traceback; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad params, missing data, a wrong checksum, ...): its message
    names the value and what is allowed."""


class StageError(UserError, RuntimeError):
    """A stage-level problem for the user (a missing input, a teacher whose accuracy does not match)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a stage's work, with where it stopped (e.g. ``absld/seed0 stopped in
    epoch 3 of 10, batch 5 of 20``). A :class:`KeyboardInterrupt`, so nothing that catches
    ``Exception`` swallows it; the CLI prints it as one ``interrupted: ...`` line and exits 130."""


def interrupted(exc: KeyboardInterrupt, where: str) -> Interrupted:
    """``exc`` itself when it already says where it stopped (raised deeper), else an
    :class:`Interrupted` saying ``where``."""
    return exc if isinstance(exc, Interrupted) else Interrupted(where)
