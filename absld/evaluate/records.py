"""``results/eval/<model>/records.npz`` (contract, docs/architecture.md): its one owner.

:class:`Records` is what ``absld evaluate`` produces and writes (:meth:`Records.save`) and what
the analysis reads back (:meth:`Records.load`, which checks every array and says how to fix a bad
file). No other module reads or writes the format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import UserError
from ..io import write_npz
from ..vocab import WORST



class RecordsError(UserError, ValueError):
    """A records.npz that cannot be read as the contract says; the message names the fix."""


@dataclass
class Records:
    """Per-sample results of one model: ``correct`` maps record names to ``(N,)`` bool arrays in
    order (``clean``, the attacks of ``evaluate.attacks``, ``worst``) on the samples ``index``.

    Saved: ``index``, ``y``, ``correct_<name>``, ``evaluated_<name>`` (the samples a column covers,
    for columns on a subset: AutoAttack and the worst case), scalar ``eps`` and ``protocol`` (a 0-d
    JSON string). Not saved: ``model`` (the file's place says it), ``cascade`` and ``seconds``
    (metrics.json and logs/ hold them).
    """

    model: str
    index: npt.NDArray[np.int64]  # (N,) test-set positions, in order
    y: npt.NDArray[np.int64]  # (N,) labels
    correct: dict[str, npt.NDArray[np.bool_]]  # name -> (N,)
    eps: float
    protocol: dict[str, Any] = field(default_factory=dict)  # how the evaluation was made
    evaluated: dict[str, npt.NDArray[np.bool_]] = field(default_factory=dict)  # columns on a subset
    cascade: bool = False
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per attack (clean included)

    @property
    def names(self) -> list[str]:
        return list(self.correct)

    @property
    def n(self) -> int:
        return int(self.index.shape[0])

    def column(self, attack: str) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
        """``(correct, y)`` of ``attack`` on the samples its column covers (all, or its
        ``evaluated_<attack>`` mask)."""
        mask = self.evaluated.get(attack)
        if mask is None:
            return self.correct[attack], self.y
        return self.correct[attack][mask], self.y[mask]

    def arrays(self) -> dict[str, np.ndarray]:
        """The contract's arrays, as :meth:`save` writes them."""
        out: dict[str, np.ndarray] = {"index": self.index.astype(np.int64), "y": self.y.astype(np.int64)}
        out.update({f"correct_{name}": c.astype(np.bool_) for name, c in self.correct.items()})
        out.update({f"evaluated_{name}": mask.astype(np.bool_) for name, mask in self.evaluated.items()})
        out["eps"] = np.asarray(self.eps, dtype=np.float64)  # 0-d
        out["protocol"] = np.asarray(json.dumps(self.protocol, sort_keys=True))  # 0-d str (no pickle)
        return out

    def save(self, path: str | Path) -> None:
        """Write the records.npz atomically (byte-identical for identical records)."""
        write_npz(path, **self.arrays())

    @classmethod
    def load(cls, path: str | Path, model: str) -> "Records":
        """Read and check ``records.npz`` of ``model`` (lengths, dtypes, ``correct_worst``, protocol)."""
        return read_records(model, path)


def read_records(model: str, path: str | Path) -> Records:
    """Load ``records.npz`` of ``model`` and check its arrays (lengths, dtypes, ``correct_worst``)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise RecordsError(f"{path}: not a readable records.npz ({exc}); re-run the evaluate stage of {model}") from None
    missing = [key for key in ("index", "y", "eps", f"correct_{WORST}") if key not in arrays]
    if missing:
        raise RecordsError(f"{path}: missing array(s) {', '.join(missing)}; re-run the evaluate stage of {model}")
    index = np.asarray(arrays["index"])
    y = np.asarray(arrays["y"])
    if index.ndim != 1 or y.shape != index.shape:
        raise RecordsError(f"{path}: index {index.shape} and y {y.shape} must be 1-D arrays of the same length")
    if not (np.issubdtype(index.dtype, np.integer) and np.issubdtype(y.dtype, np.integer)):
        raise RecordsError(f"{path}: index and y must hold integers, got {index.dtype} and {y.dtype}")
    correct: dict[str, npt.NDArray[np.bool_]] = {}
    evaluated: dict[str, npt.NDArray[np.bool_]] = {}
    for key in arrays:
        if key.startswith("evaluated_"):
            mask = np.asarray(arrays[key])
            if mask.dtype != np.bool_ or mask.shape != index.shape:
                raise RecordsError(f"{path}: {key} must be a boolean array of shape {index.shape}, "
                                  f"got {mask.dtype} {mask.shape}")
            evaluated[key[len("evaluated_"):]] = mask
        if not key.startswith("correct_"):
            continue
        attack, values = key[len("correct_"):], np.asarray(arrays[key])
        if values.dtype != np.bool_ or values.shape != index.shape:
            raise RecordsError(f"{path}: {key} must be a boolean array of shape {index.shape}, "
                              f"got {values.dtype} {values.shape}")
        correct[attack] = values
    eps = np.asarray(arrays["eps"])
    if eps.size != 1:
        raise RecordsError(f"{path}: eps must be a scalar, got shape {eps.shape}")
    if "protocol" not in arrays:
        raise RecordsError(f"{path} does not record how it was evaluated (no protocol: written by an older "
                          f"absld); re-run the evaluate stage of {model}")
    try:
        protocol = json.loads(str(arrays["protocol"]))
    except ValueError:
        protocol = None
    if not isinstance(protocol, dict):
        raise RecordsError(f"{path}: protocol is not a JSON object; re-run the evaluate stage of {model}")
    return Records(model=model, index=index.astype(np.int64), y=y.astype(np.int64),
                   correct=correct, eps=float(eps),
                   protocol=protocol, evaluated=evaluated)
