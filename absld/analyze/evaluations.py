"""Reading the evaluations of several models and checking that they compare (same samples, eps, protocol)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..params import fraction_of_255
from ..evaluate.records import Records, read_records
from ..errors import UserError
from ..labels import Protocol
from ..labels import order_attacks


class ReportError(UserError, ValueError):
    """Evaluations that cannot be analysed together, or published numbers that cannot be read."""


def protocol_differences(a: Protocol, b: Protocol, prefix: str = "") -> list[str]:
    """``key: value_a vs value_b`` for every (dotted) key where two protocols differ."""
    out = []
    for key in sorted(set(a) | set(b)):
        left, right = a.get(key), b.get(key)
        if isinstance(left, Mapping) and isinstance(right, Mapping):
            out += protocol_differences(left, right, f"{prefix}{key}.")
        elif left != right:
            out.append(f"{prefix}{key}: {json.dumps(left)} vs {json.dumps(right)}")
    return out


def check_same_samples(records: Mapping[str, Records]) -> None:
    """Raise :class:`ReportError` unless every model was evaluated on the same samples, labels,
    eps and attacks: models must be compared on the same samples."""
    if not records:
        raise ReportError("no evaluated models to analyse")
    first = next(iter(records.values()))
    fix = "re-run `absld evaluate` for every model with the same evaluate params (dvc repro evaluate...)"
    for rec in records.values():
        pair = f"{first.model} and {rec.model}"
        if rec.index.shape != first.index.shape or not np.array_equal(rec.index, first.index):
            detail = (f"{first.n} vs {rec.n} samples" if rec.n != first.n else
                      f"first difference at position {int(np.flatnonzero(rec.index != first.index)[0])}")
            raise ReportError(f"{pair} were evaluated on different test samples (index arrays differ: {detail}); "
                              f"models must be compared on the same samples: {fix}")
        if not np.array_equal(rec.y, first.y):
            raise ReportError(f"{pair} have different labels y for the same index; the test set changed between "
                              f"evaluations: {fix}")
        if not math.isclose(rec.eps, first.eps, rel_tol=1e-9, abs_tol=1e-12):
            raise ReportError(f"{pair} were attacked with different eps ({fraction_of_255(first.eps)} vs "
                              f"{fraction_of_255(rec.eps)}); models must be compared at the same eps: {fix}")
        if rec.names != first.names:
            raise ReportError(f"{pair} were evaluated with different attacks ({', '.join(first.names)} vs "
                              f"{', '.join(rec.names)}); the worst case would mean different things: {fix}")
        differences = protocol_differences(first.protocol, rec.protocol)
        if differences:
            shown = "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more" if len(differences) > 3 else "")
            raise ReportError(f"{pair} were evaluated differently ({shown}); models must be compared under the "
                              f"same evaluation: {fix}")


def load_evaluations(paths: Mapping[str, str | Path]) -> dict[str, Records]:
    """Read ``{model: records.npz path}`` and check that all were evaluated on the same samples."""
    records = {model: read_records(model, path) for model, path in paths.items()}
    for rec in records.values():  # the columns in the paper's attack order
        rec.correct = {a: rec.correct[a] for a in order_attacks(list(rec.correct))}
    check_same_samples(records)
    return records


def _check_labels(records: Mapping[str, Records], num_classes: int) -> None:
    first = next(iter(records.values()))
    if first.n and (first.y.min() < 0 or first.y.max() >= num_classes):
        raise ReportError(f"labels in {first.model}'s records lie outside [0, {num_classes - 1}]: the manifest's "
                          f"{num_classes} class names do not match the evaluated dataset")
