"""Published numbers (references/published.yaml) beside ours."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


from ..fairness import (
    STATISTICS,
)
from .evaluations import ReportError


@dataclass(frozen=True)
class Published:
    """Published anchor numbers of one model (teacher or a method) on one dataset."""

    values: dict[str, dict[str, float]]  # attack -> stat -> fraction
    source: str
    description: str = ""
    arch: str | None = None  # the architecture the numbers were published for


def published_numbers(raw: Mapping[str, Any] | None, dataset: str) -> dict[str, Published]:
    """The entries of ``references/published.yaml`` (already parsed) for ``dataset``:
    ``{model key: Published}`` with model key ``teacher`` or a method name."""
    if not raw or dataset not in raw:
        return {}
    out: dict[str, Published] = {}
    for key, entry in (raw[dataset] or {}).items():
        if not isinstance(entry, Mapping):
            raise ReportError(f"published.yaml: {dataset}.{key} must be a mapping of attacks")
        values: dict[str, dict[str, float]] = {}
        for attack, stats in entry.items():
            if attack in ("description", "source", "arch"):
                continue
            if not isinstance(stats, Mapping):
                raise ReportError(f"published.yaml: {dataset}.{key}.{attack} must map avg/worst/nsd to numbers")
            for stat, value in stats.items():
                if stat not in STATISTICS:
                    raise ReportError(f"published.yaml: {dataset}.{key}.{attack}.{stat}: unknown statistic; "
                                      f"use one of {', '.join(STATISTICS)}")
                value = float(value)
                if stat != "nsd" and not 0.0 <= value <= 1.0:
                    raise ReportError(f"published.yaml: {dataset}.{key}.{attack}.{stat} = {value} must be a "
                                      f"fraction in [0, 1] (write 0.8492, not 84.92)")
                values.setdefault(attack, {})[stat] = value
        out[str(key)] = Published(values=values, source=str(entry.get("source", "")),
                                  description=str(entry.get("description", "")),
                                  arch=entry.get("arch"))
    return out
