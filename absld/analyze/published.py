"""Published numbers (references/published.yaml) beside ours."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


from ..fairness import (
    STATISTICS,
)
from .evaluations import ReportError
from ..labels import Protocol, aa_is_standard, method_label


def _radius(text: str) -> float:
    """'8/255' or '0.0314' -> a fraction of 1."""
    if "/" in text:
        top, bottom = text.split("/", 1)
        return float(top) / float(bottom)
    return float(text)


def _eps_text(eps: float) -> str:
    return f"{eps * 255:g}/255"


def anchors_that_match(published: Mapping[str, Published], ours: Mapping[str, str], *, eps: float,
                       norm: str = "Linf", protocol: Protocol | None = None
                       ) -> tuple[dict[str, Published], list[str]]:
    """``(shown, footnotes)``: the anchors whose architecture (``ours``: model key -> our arch), eps
    and norm all match this study's (eps to 1e-6), without their AutoAttack numbers when our
    AutoAttack is not the standard one; one footnote per anchor or AA value left out, naming each
    mismatch."""
    shown: dict[str, Published] = {}
    notes: list[str] = []
    for key, entry in published.items():
        who = "the teacher" if key == "teacher" else method_label(key)
        mismatches = []
        if key in ours and entry.arch != ours[key]:
            mismatches.append(f"architecture {entry.arch}, ours {ours[key]}")
        if entry.eps is not None and abs(entry.eps - eps) > 1e-6:
            mismatches.append(f"eps {_eps_text(entry.eps)}, ours {_eps_text(eps)}")
        if entry.norm is not None and entry.norm != norm:
            mismatches.append(f"norm {entry.norm}, ours {norm}")
        if key not in ours:
            continue
        if mismatches:
            notes.append(f"Published numbers of {who} ({entry.source or 'source not given'}) are not shown: "
                         + "; ".join(mismatches) + ".")
            continue
        if "aa" in entry.values and not aa_is_standard(protocol):
            notes.append(f"The published AutoAttack number of {who} is not shown: ours is AA*, not the standard "
                         f"AutoAttack it was measured with.")
            entry = Published(values={a: v for a, v in entry.values.items() if a != "aa"}, source=entry.source,
                              description=entry.description, arch=entry.arch, eps=entry.eps, norm=entry.norm)
        if entry.values:
            shown[key] = entry
    return shown, notes


@dataclass(frozen=True)
class Published:
    """Published anchor numbers of one model (teacher or a method) on one dataset."""

    values: dict[str, dict[str, float]]  # attack -> stat -> fraction
    source: str
    description: str = ""
    arch: str | None = None  # the architecture the numbers were published for
    eps: float | None = None  # the L-p radius they were measured at (a fraction of 1)
    norm: str | None = None  # "Linf" (the only norm this pipeline evaluates)


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
            if attack in ("description", "source", "arch", "eps", "norm"):
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
        for field in ("arch", "eps", "norm"):
            if entry.get(field) is None:
                raise ReportError(f"published.yaml: {dataset}.{key} has no {field}: an anchor is shown only where "
                                  f"architecture, eps and norm match ours, so each entry must state them")
        try:
            eps = _radius(str(entry["eps"]))
        except (TypeError, ValueError) as exc:
            raise ReportError(f"published.yaml: {dataset}.{key}.eps = {entry['eps']!r}: write a radius such as 8/255 "
                              f"or 0.0314") from exc
        out[str(key)] = Published(values=values, source=str(entry.get("source", "")),
                                  description=str(entry.get("description", "")),
                                  arch=str(entry["arch"]), eps=eps, norm=str(entry["norm"]))
    return out
