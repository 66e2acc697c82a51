"""Display names: attacks (PGD-20, AA or AA*), methods, datasets, model ids; the protocol type."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any


from .vocab import DATASET_LABELS, METHOD_LABELS as VOCAB_METHOD_LABELS, ModelId
from .vocab import WORST


"""The pointwise worst case over every attack run (``correct_worst``)."""

_PGD = re.compile(r"^pgd(\d*)$")  # pgd (records since 2026-12-01) or pgd<steps> (earlier records)

METHOD_LABELS: dict[str, str] = {"teacher": "Teacher", **VOCAB_METHOD_LABELS}


STAT_LABELS: dict[str, str] = {"avg": "Avg", "worst": "Worst", "nsd": "NSD"}

SELECTION_RULES: dict[str, str] = {
    "last": "the last epoch's checkpoint",
    "val_fair_best": "the epoch maximising PGD Avg + Worst on the held-out validation split",
    "test_fair_best": "the epoch maximising PGD Avg + Worst on the test set (the official script's rule: "
    "selection on the test set)",
    "weight_average": "the method's weight average after the last epoch (CFA's fairness-aware average or "
    "EMA; distill.select does not apply to it)",
}


def attack_sort_key(attack: str) -> tuple[int, int, str]:
    """Paper order: clean, fgsm, pgd, cw, aa, anything else, worst."""
    match = _PGD.match(attack)
    if match:
        return (2, int(match.group(1) or 0), attack)
    rank = {"clean": 0, "fgsm": 1, "cw": 3, "aa": 4, WORST: 6}.get(attack, 5)
    return (rank, 0, attack)


def order_attacks(attacks: Sequence[str]) -> list[str]:
    """The attacks in the paper's column order (see :func:`attack_sort_key`)."""
    return sorted(attacks, key=attack_sort_key)


Protocol = Mapping[str, Any]
"""An evaluation's protocol (``records.npz``'s ``protocol``; :func:`absld.evaluate.protocol`)."""


def aa_is_standard(protocol: Protocol | None) -> bool:
    """Whether the records' AutoAttack is the standard one of the literature (True when the protocol
    is unknown or has no AA: nothing to flag)."""
    aa = (protocol or {}).get("aa")
    return aa is None or bool(aa.get("standard"))


def aa_description(protocol: Protocol | None) -> str:
    """What a non-standard AA column is, in one clause ('' for the standard AutoAttack)."""
    if aa_is_standard(protocol):
        return ""
    aa = protocol["aa"]  # type: ignore[index]
    version = f"version {aa['version']}" + (f" ({', '.join(a.upper() for a in aa['attacks'])})" if aa.get("attacks") else "")
    package = f"{aa['backend']} {aa.get('package_version') or '(version unknown)'}"
    caveat = " (its APGD runs 10 iterations, the reference code's 100)" if aa["backend"] == "torchattacks" else ""
    return f"AA* is AutoAttack {version} through {package}{caveat}, not the standard AutoAttack of the literature"


def metric_name(attack: str, protocol: Protocol | None = None) -> str:
    """The attack's name in every key a user reads — W&B metrics, ``results/headline.json`` (what
    ``dvc exp show`` lists), ``results/fairness.json``, the evaluation's ``metrics.json``, the file
    names under ``plots/``: the record name (``pgd`` whatever its steps; ``pgd<steps>`` of older
    records becomes ``pgd``), except a non-standard AA, which is ``aa_star`` (AA*), so that it is
    never listed, plotted or compared as AutoAttack. The records keep ``aa``."""
    if _PGD.match(attack):
        return "pgd"  # one key whatever the steps (records before 2026-12-01 said pgd<steps>)
    return "aa_star" if attack == "aa" and not aa_is_standard(protocol) else attack


def attack_label(attack: str, latex: bool = False, protocol: Protocol | None = None) -> str:
    """Column label of an attack: ``pgd`` -> ``PGD-20`` (the steps from ``protocol``; ``PGD`` when it
    does not say), ``cw`` -> ``CW∞``, ``worst`` -> ``Worst-case``; ``aa`` -> ``AA``, or ``AA*`` when
    ``protocol``'s AutoAttack is not the standard one (:func:`aa_description` says what it is)."""
    match = _PGD.match(attack)
    if match:
        steps = match.group(1) or ((protocol or {}).get("pgd") or {}).get("steps")
        return f"PGD-{steps}" if steps else "PGD"
    if attack == "cw":
        return r"CW$_\infty$" if latex else "CW∞"
    if attack == "aa" and not aa_is_standard(protocol):
        return "AA*"
    return {"clean": "Clean", "fgsm": "FGSM", "aa": "AA", WORST: "Worst-case"}.get(attack, attack.upper())


def method_label(method: str) -> str:
    """Display name of a method (``fair_rslad`` -> ``Fair-RSLAD``); unknown names pass through."""
    return METHOD_LABELS.get(method, method)


def model_label(model: str) -> str:
    """Display name of a model id: ``teacher`` -> ``Teacher``, ``absld/seed0`` -> ``ABSLD (seed 0)``."""
    model_id = ModelId.parse(model)
    return "Teacher" if model_id.is_teacher else f"{method_label(model_id.method)} (seed {model_id.seed})"


def dataset_label(dataset: str) -> str:
    return DATASET_LABELS.get(dataset, dataset)


def _finite(value: Any) -> float | None:
    """A float, or None for None/NaN/inf (JSON null round-trips as None)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def format_p(p: float | None) -> str:
    """``p = 0.004``, ``p < 0.001`` or ``p undefined``."""
    if p is None or not math.isfinite(p):
        return "p undefined"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.995 else "p = 1"


def headline_attack(attacks: Sequence[str]) -> str:
    """The attack a verdict is stated for and classes are ranked by: the PGD column (the papers' main
    robustness number), else AutoAttack, else the last column before the worst case."""
    pgd_columns = [a for a in attacks if _PGD.match(a)]
    if pgd_columns:
        return pgd_columns[-1]
    if "aa" in attacks:
        return "aa"
    rest = [a for a in attacks if a != WORST]
    return rest[-1] if rest else attacks[-1]
