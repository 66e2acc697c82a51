"""Resuming an interrupted evaluation: its finished columns and batches in one small ``.npz``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tqdm.auto import tqdm

from ..io import write_npz


@dataclass(frozen=True)
class ColumnProgress:
    """How far one column of the records got: ``robust`` (N,) holds the verdicts of the first
    ``done`` attacked samples (in sample order; False elsewhere), ``seconds`` the time spent on them."""

    robust: npt.NDArray[np.bool_]
    done: int
    seconds: float
    complete: bool


class EvalProgress:
    """The finished work of an evaluation, in one small ``.npz``, so that a killed evaluation
    resumes at the batch where it stopped instead of from the start.

    Saved after every finished column and, within a column, after a finished batch once
    ``every_seconds`` have passed since the last save (0: after every batch). Resuming gives the
    same records as an uninterrupted run: every batch's verdicts depend only on its samples (eval
    mode; per-sample start noise), and a resumed column restarts at a batch boundary, so AutoAttack
    sees the same calls of ``evaluate.aa.batch_size`` samples. ``fingerprint`` names everything
    that can change a verdict (model, data, settings, code); a file with another one is ignored.
    """

    def __init__(self, path: str | Path, fingerprint: str, every_seconds: float = 30.0,
                 notify: Callable[[str], None] = tqdm.write) -> None:
        self.path, self.fingerprint, self.every_seconds, self.notify = Path(path), fingerprint, every_seconds, notify
        self.columns: dict[str, ColumnProgress] = {}
        self._last_save = time.monotonic()

    def load(self) -> dict[str, ColumnProgress]:
        """The columns of a previous run with this fingerprint (empty when there is none)."""
        if not self.path.is_file():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as data:
                if str(data["fingerprint"]) != self.fingerprint:
                    self.notify(f"{self.path} belongs to another model, data, code or settings: evaluating afresh")
                    return {}
                names = json.loads(str(data["names"]))
                self.columns = {name: ColumnProgress(data[f"robust_{name}"].astype(np.bool_),
                                                     int(data[f"done_{name}"]), float(data[f"seconds_{name}"]),
                                                     bool(data[f"complete_{name}"])) for name in names}
        except Exception as exc:  # noqa: BLE001 - progress is only saved time: report it, start over
            self.notify(f"cannot read {self.path} ({type(exc).__name__}); evaluating afresh")
            return {}
        done = ", ".join(f"{name} {'done' if c.complete else f'{c.done} samples'}" for name, c in self.columns.items())
        self.notify(f"resuming the evaluation from {self.path}: {done}")
        return dict(self.columns)

    def due(self) -> bool:
        """Whether ``every_seconds`` have passed since the last save."""
        return time.monotonic() - self._last_save >= self.every_seconds

    def update(self, name: str, column: ColumnProgress, *, save: bool = False) -> None:
        """Record ``column``; write the file when it is complete, ``save`` asks (an interrupted run) or a
        save is :meth:`due`."""
        self.columns[name] = column
        if save or column.complete or self.due():
            arrays: dict[str, np.ndarray] = {"fingerprint": np.asarray(self.fingerprint),
                                             "names": np.asarray(json.dumps(list(self.columns)))}
            for key, c in self.columns.items():
                arrays.update({f"robust_{key}": c.robust, f"done_{key}": np.asarray(c.done),
                               f"seconds_{key}": np.asarray(c.seconds), f"complete_{key}": np.asarray(c.complete)})
            write_npz(self.path, **arrays)
            self._last_save = time.monotonic()

    def remove(self) -> None:
        """Delete the file (the evaluation's outputs are written)."""
        self.path.unlink(missing_ok=True)
