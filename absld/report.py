"""Tables, sentences and report specs from per-sample evaluation records (METHOD.md §6).

Pure functions: no click, no params file, no layout. The ``absld analyze`` and ``absld report``
commands decide which files to read and where to write; this module turns

- ``records.npz`` arrays (:class:`Records`) into the ``results/fairness.json`` contract
  (:func:`fairness_table`), seed summaries (:func:`seed_summaries`) and the paired tests of the
  reference method against every baseline (:func:`compare_to_reference`);
- those numbers into the paper-style table in markdown, LaTeX and CSV (:func:`results_table`,
  :func:`table_markdown`, :func:`table_latex`, :func:`table_csv`), plain-words test results
  (:func:`findings`), the markdown report (:func:`markdown_report`);
- and into a W&B report spec (:func:`build_wandb_report`, :func:`report_outline`), built without
  touching the network.

Units: every number stored is a fraction in [0, 1] (NSD a ratio); tables and sentences show Avg and
Worst in percent ("points" for differences) and NSD as a decimal. Undefined values (NaN, e.g. NSD
when every class accuracy is 0) become ``null`` in JSON (:func:`json_safe`) and "–" in tables.

**Several seeds** (a choice, documented here and in the report): the tests compare the reference
and a baseline on *seed-matched pairs stacked*: the records of ``ref/seed<S>`` are paired with those
of ``baseline/seed<S>`` for every seed S both have, and the pairs (sample i, seed S) are pooled into
one paired sample of size N x #seeds. Avg, Worst and NSD are then those of the seed-pooled class
accuracies (the mean over seeds of acc_k, since every seed sees the same samples), and the tests
(McNemar exact, paired permutation) swap the two methods' outcomes within each (sample, seed) pair.
The p-values are conditional on the trained models: they measure test-sample noise, not the
variability of training; the spread over training seeds is reported separately
(:func:`seed_summaries`: mean, std, t-interval). With one seed this is the plain paired comparison.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from .config import AnalyzeConfig, EvaluateConfig, fraction_of_255
from .tracking import class_key
from .vocab import DATASET_LABELS, METHOD_LABELS as VOCAB_METHOD_LABELS, ModelId
from .fairness import (
    STATISTICS,
    SeedSummary,
    Statistic,
    SeedPairedTest,
    compare,
    holm,
    paired_seed_test,
    seed_summary,
    summarize_with_ci,
)
from .errors import UserError
from .records import WORST, Records, RecordsError, read_records as _read_records

if TYPE_CHECKING:  # pragma: no cover
    from wandb_workspaces.reports.v2 import Report


class ReportError(UserError, ValueError):
    """Records or inputs that cannot be analysed together; the message says how to fix it."""


# --------------------------------------------------------------------------------------------------
# vocabulary: attacks, methods, datasets
# --------------------------------------------------------------------------------------------------

"""The pointwise worst case over every attack run (``correct_worst``)."""

_PGD = re.compile(r"^pgd(\d+)$")

METHOD_LABELS: dict[str, str] = {"teacher": "Teacher", **VOCAB_METHOD_LABELS}


STAT_LABELS: dict[str, str] = {"avg": "Avg", "worst": "Worst", "nsd": "NSD"}

SELECTION_RULES: dict[str, str] = {
    "last": "the last epoch's checkpoint",
    "val_fair_best": "the epoch maximising PGD Avg + Worst on the held-out validation split",
    "test_fair_best": "the epoch maximising PGD Avg + Worst on the test set (the official script's rule: "
    "selection on the test set)",
}


def attack_sort_key(attack: str) -> tuple[int, int, str]:
    """Paper order: clean, fgsm, pgd<steps> (by steps), cw, aa, anything else, worst."""
    match = _PGD.match(attack)
    if match:
        return (2, int(match.group(1)), attack)
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
    """The attack's name in W&B metric keys: the record name, except a non-standard AA, which is
    ``aa_nonstandard`` (so it is never plotted or compared as AutoAttack)."""
    return "aa_nonstandard" if attack == "aa" and not aa_is_standard(protocol) else attack


def attack_label(attack: str, latex: bool = False, protocol: Protocol | None = None) -> str:
    """Column label of an attack: ``pgd20`` -> ``PGD-20``, ``cw`` -> ``CW∞``, ``worst`` -> ``Worst-case``;
    ``aa`` -> ``AA``, or ``AA*`` when ``protocol``'s AutoAttack is not the standard one
    (:func:`aa_description` says what it is)."""
    match = _PGD.match(attack)
    if match:
        return f"PGD-{match.group(1)}"
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


# --------------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------------


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
        if rec.attacks != first.attacks:
            raise ReportError(f"{pair} were evaluated with different attacks ({', '.join(first.attacks)} vs "
                              f"{', '.join(rec.attacks)}); the worst case would mean different things: {fix}")
        differences = protocol_differences(first.protocol, rec.protocol)
        if differences:
            shown = "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more" if len(differences) > 3 else "")
            raise ReportError(f"{pair} were evaluated differently ({shown}); models must be compared under the "
                              f"same evaluation: {fix}")


def read_records(model: str, path: str | Path) -> Records:
    """:meth:`Records.load` with the columns in the paper's attack order; a bad file is a ReportError."""
    try:
        records = _read_records(model, path)
    except RecordsError as exc:
        raise ReportError(str(exc)) from None
    records.correct = {a: records.correct[a] for a in order_attacks(list(records.correct))}
    return records


def load_evaluations(paths: Mapping[str, str | Path]) -> dict[str, Records]:
    """Read ``{model: records.npz path}`` and check that all were evaluated on the same samples."""
    records = {model: read_records(model, path) for model, path in paths.items()}
    check_same_samples(records)
    return records


def _check_labels(records: Mapping[str, Records], num_classes: int) -> None:
    first = next(iter(records.values()))
    if first.n and (first.y.min() < 0 or first.y.max() >= num_classes):
        raise ReportError(f"labels in {first.model}'s records lie outside [0, {num_classes - 1}]: the manifest's "
                          f"{num_classes} class names do not match the evaluated dataset")


# --------------------------------------------------------------------------------------------------
# fairness.json, seed summaries, comparisons
# --------------------------------------------------------------------------------------------------


class FairnessEntry(TypedDict):
    """One (model, attack) cell of ``results/fairness.json`` (contract): fractions in [0, 1]."""

    avg: float
    worst: float
    nsd: float
    class_acc: list[float]
    avg_ci: list[float]
    worst_ci: list[float]
    nsd_ci: list[float]


FAIRNESS_KEYS = ("avg", "worst", "nsd", "class_acc", "avg_ci", "worst_ci", "nsd_ci")

Fairness = dict[str, dict[str, FairnessEntry]]


def fairness_table(records: Mapping[str, Records], num_classes: int, cfg: AnalyzeConfig) -> Fairness:
    """``{model: {attack: FairnessEntry}}``: :func:`absld.fairness.summarize_with_ci` of every model
    under every attack (``worst`` included), with ``analyze.nsd_ddof``, ``n_bootstrap``, ``seed`` and
    ``confidence``. Every cell uses the same bootstrap seed (common random numbers: identical
    resampled samples across models). May contain NaN; pass the result through :func:`json_safe`."""
    _check_labels(records, num_classes)
    out: Fairness = {}
    for model, rec in records.items():
        out[model] = {}
        for attack in rec.correct:
            correct, y = rec.column(attack)
            entry = summarize_with_ci(correct, y, num_classes, n_resamples=cfg.n_bootstrap, seed=cfg.seed,
                                      ddof=cfg.nsd_ddof, confidence=cfg.confidence,
                                      method=cfg.bootstrap_method)
            out[model][attack] = {key: entry[key] for key in FAIRNESS_KEYS}  # type: ignore[literal-required]
    return out


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON accepts: NaN and +-inf -> None, numpy scalars -> Python."""
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


def _finite(value: Any) -> float | None:
    """A float, or None for None/NaN/inf (JSON null round-trips as None)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def intervals_excluding_the_estimate(fairness: Mapping[str, Mapping[str, Mapping[str, Any]]]
                                     ) -> list[tuple[str, str, str]]:
    """(model, attack, stat) of every cell whose percentile interval does not contain its point estimate.

    Worst (a minimum) and NSD (a std) are biased under resampling: with few samples per class the
    bootstrap adds sampling noise to the class accuracies, which lowers the minimum and inflates the
    spread, so their whole bootstrap distribution can lie on one side of the estimate. Such
    intervals are flagged in the report rather than hidden."""
    out = []
    for model, by_attack in fairness.items():
        for attack, entry in by_attack.items():
            for stat in STATISTICS:
                value, ci = _finite(entry[stat]), entry.get(f"{stat}_ci") or [None, None]
                low, high = _finite(ci[0]), _finite(ci[1])
                if None not in (value, low, high) and not low <= value <= high:  # type: ignore[operator]
                    out.append((model, attack, stat))
    return out


def interval_note(flagged: Sequence[tuple[str, str, str]], min_class_size: int,
                  protocol: Protocol | None = None) -> str:
    """A sentence for the report about the cells of :func:`intervals_excluding_the_estimate` ('' if none)."""
    if not flagged:
        return ""
    shown = ", ".join(f"{model_label(m)} {attack_label(a, protocol=protocol)} {STAT_LABELS[s]}"
                      for m, a, s in flagged[:4])
    more = f" and {len(flagged) - 4} more" if len(flagged) > 4 else ""
    return (f"Note: in {len(flagged)} cell(s) ({shown}{more}) the bootstrap interval does not contain the point "
            f"estimate. Worst and NSD are biased under resampling when classes have few samples (here at least "
            f"{min_class_size} per class): read those intervals with care, or evaluate on more test samples.")


MethodSeeds = Mapping[str, Mapping[int, str]]
"""``{method: {seed: model id}}``, e.g. ``{"absld": {0: "absld/seed0"}}``."""


def seed_summaries(fairness: Mapping[str, Mapping[str, Mapping[str, Any]]], groups: MethodSeeds,
                   confidence: float) -> dict[str, dict[str, dict[str, SeedSummary | None]]]:
    """Mean, std (ddof 1) and Student-t interval over seeds of Avg, Worst and NSD, for every method
    with at least two seeds: ``{method: {attack: {stat: SeedSummary}}}``. A statistic undefined on
    some seed (NSD NaN) gets None."""
    out: dict[str, dict[str, dict[str, SeedSummary | None]]] = {}
    for method, by_seed in groups.items():
        models = list(by_seed.values())
        if len(models) < 2:
            continue
        out[method] = {}
        for attack in fairness[models[0]]:
            out[method][attack] = {}
            for stat in STATISTICS:
                values = [_finite(fairness[m][attack][stat]) for m in models]
                out[method][attack][stat] = (None if any(v is None for v in values)
                                             else seed_summary([float(v) for v in values], confidence))  # type: ignore[arg-type]
    return out


class SeedComparisons(TypedDict):
    reference: str
    alpha: float
    confidence: float
    skipped: dict[str, str]
    attacks: dict[str, dict[str, dict[str, dict[str, Any]]]]  # attack -> baseline -> stat -> test


def _paired_seeds(groups: MethodSeeds, reference: str, minimum: int) -> tuple[dict[str, list[int]], dict[str, str]]:
    """``({baseline: seeds in common with reference}, {baseline: why skipped})`` for every method
    but ``reference``; a baseline with fewer than ``minimum`` common seeds is skipped."""
    ref = groups[reference]
    pairs: dict[str, list[int]] = {}
    skipped: dict[str, str] = {}
    for method, by_seed in groups.items():
        if method == reference:
            continue
        common = sorted(set(ref) & set(by_seed))
        if len(common) >= minimum:
            pairs[method] = common
        elif not common:
            skipped[method] = f"no seed in common with {reference} ({sorted(by_seed)} vs {sorted(ref)})"
        else:
            skipped[method] = f"{len(common)} seed(s) in common with {reference}; a test over seeds needs {minimum}"
    return pairs, skipped


def _holm_across_baselines(by_baseline: Mapping[str, Mapping[str, Any]]) -> None:
    """Add ``p_holm`` to every ``by_baseline[method][stat]`` test: Holm across the baselines within
    each statistic, over the defined p-values (NaN stays NaN)."""
    for stat in STATISTICS:
        family = [m for m in by_baseline if not math.isnan(by_baseline[m][stat]["p"])]
        for method in by_baseline:
            by_baseline[method][stat]["p_holm"] = math.nan
        for method, p_adj in zip(family, holm([by_baseline[m][stat]["p"] for m in family])):
            by_baseline[method][stat]["p_holm"] = p_adj


def seed_comparisons(fairness: Mapping[str, Mapping[str, Mapping[str, Any]]], groups: MethodSeeds,
                     cfg: AnalyzeConfig) -> SeedComparisons | None:
    """``cfg.reference`` against every other method by paired t-tests over the seeds both were
    trained with (:func:`absld.fairness.paired_seed_test` on each seed's Avg, Worst and NSD), Holm
    across baselines within each (attack, statistic): ``p_holm``. Unlike :func:`compare_to_reference`
    these tests see the variation between training runs. None when the reference was not trained;
    a baseline with fewer than two common seeds is skipped (with the reason)."""
    reference = cfg.reference
    if reference not in groups:
        return None
    ref = groups[reference]
    common, skipped = _paired_seeds(groups, reference, minimum=2)
    attacks = list(fairness[next(iter(ref.values()))])
    table: dict[str, dict[str, dict[str, dict[str, Any]]]] = {a: {m: {} for m in common} for a in attacks}
    for attack in attacks:
        for stat in STATISTICS:
            for method, seeds in common.items():
                mine = [_finite(fairness[ref[s]][attack][stat]) for s in seeds]
                theirs = [_finite(fairness[groups[method][s]][attack][stat]) for s in seeds]
                if None in mine or None in theirs:
                    test: dict[str, Any] = {"n": len(seeds), "diff": math.nan, "ci": [math.nan, math.nan], "p": math.nan}
                else:
                    test = dict(paired_seed_test(mine, theirs, cfg.confidence))  # type: ignore[arg-type]
                test["seeds"] = seeds
                table[attack][method][stat] = test
        _holm_across_baselines(table[attack])
    return {"reference": reference, "alpha": round(1.0 - cfg.confidence, 12), "confidence": cfg.confidence,
            "skipped": skipped, "attacks": table}


def headline_attack(attacks: Sequence[str]) -> str:
    """The attack a verdict is stated for: the PGD column (the papers' main robustness number),
    else AutoAttack, else the last attack before the worst case."""
    pgd_columns = [a for a in attacks if _PGD.match(a)]
    if pgd_columns:
        return pgd_columns[-1]
    if "aa" in attacks:
        return "aa"
    return [a for a in attacks if a != WORST][-1]


def _seed_clause(stat: str, test: Mapping[str, Any], alpha: float) -> tuple[str, str]:
    """("+2.10 points [−1.0, 5.2], p = 0.12", sign) with sign "+", "−" (significant) or "0"."""
    diff, ci, p = _finite(test["diff"]), test["ci"], _finite(test.get("p_holm"))
    if diff is None:
        return "undefined", "0"
    scale, unit, digits = (1.0, "", 3) if stat == "nsd" else (100.0, " points", 2)
    low, high = _finite(ci[0]), _finite(ci[1])
    interval = "" if low is None or high is None else f" [{scale * low:+.{digits}f}, {scale * high:+.{digits}f}]"
    significant = p is not None and p < alpha
    sign = ("+" if diff > 0 else "−") if significant else "0"
    return f"{scale * diff:+.{digits}f}{unit}{interval}, {format_p(p)}", sign


def verdict(seed_cmp: SeedComparisons | None, seed_stats: Mapping[str, Any], attacks: Sequence[str], *,
            baseline: str = "rslad", dataset: str = "", protocol: Protocol | None = None) -> str:
    """The report's first paragraph: do ABSLD's claims hold at this scale? Against ``baseline``
    under the :func:`headline_attack`, by the paired t-tests over seeds (Holm-adjusted): worst-class
    robustness up, NSD down, and the Avg cost — each 'holds' only when significant in the claimed
    direction, 'contradicted' when significant the other way, else 'not shown'."""
    if seed_cmp is None or baseline not in next(iter(seed_cmp["attacks"].values()), {}):
        reason = (seed_cmp or {}).get("skipped", {}).get(baseline, f"{method_label(baseline)} or the reference was not trained")
        return (f"**Verdict:** not tested: ABSLD's claims are judged against {method_label(baseline)} by paired "
                f"tests over training seeds, and {reason}.")
    ref = method_label(seed_cmp["reference"])
    other = method_label(baseline)
    attack = headline_attack(attacks)
    tests = seed_cmp["attacks"][attack][baseline]
    alpha = seed_cmp["alpha"]
    n = tests["avg"]["n"]

    def mean_of(method: str, stat: str) -> str:
        s = (seed_stats.get(method, {}).get(attack, {}) or {}).get(stat)
        if not s:
            return "–"
        return f"{s['mean']:.3f}" if stat == "nsd" else f"{100 * s['mean']:.1f} %"

    worst_text, worst_sign = _seed_clause("worst", tests["worst"], alpha)
    nsd_text, nsd_sign = _seed_clause("nsd", tests["nsd"], alpha)
    avg_text, avg_sign = _seed_clause("avg", tests["avg"], alpha)
    judge = {("worst", "+"): "holds", ("worst", "−"): "is contradicted", ("nsd", "−"): "holds",
             ("nsd", "+"): "is contradicted"}
    worst_verdict = judge.get(("worst", worst_sign), "is not shown")
    nsd_verdict = judge.get(("nsd", nsd_sign), "is not shown")
    avg_verdict = {"−": "a significant Avg cost", "+": "a significant Avg gain", "0": "no significant Avg change"}[avg_sign]
    label = attack_label(attack, protocol=protocol)
    where = f" on {dataset_label(dataset)}" if dataset else ""
    return (f"**Verdict at this scale{where}** ({label}, {ref} against {other}, {n} seeds each, paired t-tests over "
            f"seeds, Holm-adjusted, α = {alpha:g}; differences {ref} − {other} with "
            f"{int(round(100 * seed_cmp['confidence']))}% t-intervals): "
            f"worst-class robustness up {worst_verdict} ({mean_of(seed_cmp['reference'], 'worst')} vs "
            f"{mean_of(baseline, 'worst')}: {worst_text}); NSD down {nsd_verdict} "
            f"({mean_of(seed_cmp['reference'], 'nsd')} vs {mean_of(baseline, 'nsd')}: {nsd_text}); and {avg_verdict} "
            f"({mean_of(seed_cmp['reference'], 'avg')} vs {mean_of(baseline, 'avg')}: {avg_text}). "
            f"With {n} seeds only large effects can be significant: 'not shown' is not 'false'.")


def seed_tests_markdown(seed_cmp: SeedComparisons | None, protocol: Protocol | None = None) -> str:
    """Markdown table of the paired t-tests over seeds ('' when none were run)."""
    if seed_cmp is None or not any(seed_cmp["attacks"].values()):
        return ""
    ref = method_label(seed_cmp["reference"])
    lines = [f"{ref} − baseline per seed, averaged over the seeds both were trained with; paired t-test over "
             f"seeds (training variation), Holm-adjusted across baselines; Avg and Worst in points, NSD as a ratio.", "",
             "| Attack | Baseline | ΔAvg | ΔWorst | ΔNSD |", "|:---|:---|---:|---:|---:|"]
    for attack, by_baseline in seed_cmp["attacks"].items():
        for method, tests in by_baseline.items():
            cells = [_seed_clause(stat, tests[stat], seed_cmp["alpha"])[0] for stat in STATISTICS]
            lines.append(f"| {attack_label(attack, protocol=protocol)} | {method_label(method)} | " + " | ".join(cells) + " |")
    if seed_cmp["skipped"]:
        lines += [""] + [f"- {method_label(m)} was not tested over seeds: {r}." for m, r in seed_cmp["skipped"].items()]
    return "\n".join(lines) + "\n"


class PairedTest(TypedDict, total=False):
    test: str
    p: float
    p_holm: float
    diff: float
    n01: int
    n10: int


class PairComparison(TypedDict):
    seeds: list[int]
    n_pairs: int
    avg: PairedTest
    worst: PairedTest
    nsd: PairedTest


class Comparisons(TypedDict):
    reference: str
    baselines: list[str]
    pooling: str
    alpha: float
    n_permutations: int
    seed: int
    ddof: int
    skipped: dict[str, str]
    attacks: dict[str, dict[str, PairComparison]]


POOLING = ("seed-matched pairs stacked: ref/seed<S> paired with baseline/seed<S> on the same samples for "
           "every common seed S, pooled into one paired sample of N x #seeds; p-values are conditional on the "
           "trained models (test-sample noise), the spread over seeds is in seed_summary")


def compare_to_reference(records: Mapping[str, Records], groups: MethodSeeds, num_classes: int,
                         cfg: AnalyzeConfig) -> Comparisons | None:
    """Paired tests of ``cfg.reference`` against every other method, per attack (``worst`` included).

    Avg: exact McNemar; Worst and NSD: paired permutation tests (``cfg.n_permutations``,
    ``cfg.seed``), all via :func:`absld.fairness.compare`, on seed-matched pairs stacked (module
    docstring). Holm's correction runs across baselines within each (attack, statistic) family:
    ``p_holm``. Every ``diff`` is stat(reference) - stat(baseline) as a fraction (NSD: a ratio).
    Returns None when the reference method was not trained (not in ``groups``).
    """
    reference = cfg.reference
    if reference not in groups:
        return None
    _check_labels(records, num_classes)
    ref_seeds = groups[reference]
    pairs, skipped = _paired_seeds(groups, reference, minimum=1)
    baselines = list(pairs)

    attacks = next(iter(records.values())).attacks
    table: dict[str, dict[str, PairComparison]] = {attack: {} for attack in attacks}
    for attack in attacks:
        y = next(iter(records.values())).column(attack)[1]  # the samples the column covers
        for method in baselines:
            seeds = pairs[method]
            ref = np.concatenate([records[ref_seeds[s]].column(attack)[0] for s in seeds])  # (N * S,)
            other = np.concatenate([records[groups[method][s]].column(attack)[0] for s in seeds])  # (N * S,)
            labels = np.tile(y, len(seeds))  # (N * S,)
            result = compare(ref, other, labels, num_classes, n_resamples=cfg.n_permutations, seed=cfg.seed,
                             ddof=cfg.nsd_ddof)
            table[attack][method] = {"seeds": seeds, "n_pairs": int(ref.shape[0]),
                                     "avg": dict(result["avg"]), "worst": dict(result["worst"]),
                                     "nsd": dict(result["nsd"])}  # type: ignore[typeddict-item]
        _holm_across_baselines(table[attack])
    return {"reference": reference, "baselines": baselines, "pooling": POOLING, "alpha": round(1.0 - cfg.confidence, 12),
            "n_permutations": cfg.n_permutations, "seed": cfg.seed, "ddof": cfg.nsd_ddof, "skipped": skipped,
            "attacks": table}


# --------------------------------------------------------------------------------------------------
# words
# --------------------------------------------------------------------------------------------------


def format_p(p: float | None) -> str:
    """``p = 0.004``, ``p < 0.001`` or ``p undefined``."""
    if p is None or not math.isfinite(p):
        return "p undefined"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.995 else "p = 1"


def _significance(p: float | None, alpha: float) -> str:
    if p is None or not math.isfinite(p):
        return "not testable"
    return f"significant at α = {alpha:g}" if p <= alpha else "not significant"


def _clause(stat: Statistic, result: Mapping[str, Any], alpha: float, other: str | None = None) -> str:
    """One statistic's clause of a finding, e.g. "worst-class accuracy is 3.10 points higher than
    RSLAD's (paired permutation test, Holm-adjusted p = 0.004: significant at α = 0.05)"."""
    test = "McNemar exact test" if stat == "avg" else "paired permutation test"
    p_holm = _finite(result.get("p_holm"))
    stats_part = f"({test}, Holm-adjusted {format_p(p_holm)}: {_significance(p_holm, alpha)})"
    what = {"avg": "Avg accuracy", "worst": "worst-class accuracy", "nsd": "NSD"}[stat]
    diff = _finite(result.get("diff"))
    if diff is None:
        return f"{what} difference is undefined {stats_part}"
    than = f" than {other}'s" if other else ""
    same = f"the same as {other}'s" if other else "the same"
    if stat == "nsd":
        if abs(diff) < 5e-4:  # 0.000 at the 3 decimals shown
            return f"{what} is {same} {stats_part}"
        direction = "lower (fairer)" if diff < 0 else "higher (less fair)"
        return f"{what} is {abs(diff):.3f} {direction}{than} {stats_part}"
    points = 100 * diff
    if abs(points) < 5e-3:
        return f"{what} is {same} {stats_part}"
    return f"{what} is {abs(points):.2f} points {'higher' if points > 0 else 'lower'}{than} {stats_part}"


def findings(comparisons: Comparisons, protocol: Protocol | None = None) -> dict[str, list[str]]:
    """The tests in plain words, ``{attack: [one sentence per baseline]}``, whatever the numbers say:
    "Under AA, ABSLD's Avg accuracy is 1.20 points higher than RSLAD's (McNemar exact test,
    Holm-adjusted p = 0.031: significant at α = 0.05); its worst-class accuracy is 3.10 points higher
    than RSLAD's (paired permutation test, ...); its NSD is 0.021 lower (fairer) than RSLAD's (...:
    not significant)."."""
    ref = method_label(comparisons["reference"])
    alpha = comparisons["alpha"]
    out: dict[str, list[str]] = {}
    for attack, by_baseline in comparisons["attacks"].items():
        sentences = []
        for method, result in by_baseline.items():
            other = method_label(method)
            clauses = [_clause(stat, result[stat], alpha, other) for stat in STATISTICS]
            sentences.append(f"Under {attack_label(attack, protocol=protocol)}, {ref}'s " + "; its ".join(clauses) + ".")
        out[attack] = sentences
    return out


def findings_markdown(comparisons: Comparisons | None, n_samples: int | None = None,
                      protocol: Protocol | None = None) -> str:
    """Markdown section body: how the tests were run, one bullet per (attack, baseline), then a compact
    table of differences and Holm-adjusted p-values."""
    if comparisons is None:
        return ("The reference method was not trained (it is not in distill.methods), so no paired tests were "
                "run.\n")
    ref = method_label(comparisons["reference"])
    alpha = comparisons["alpha"]
    if not comparisons["baselines"]:
        reasons = "".join(f" {method_label(m)}: {r}." for m, r in comparisons["skipped"].items())
        return f"No method could be compared with {ref}.{reasons}\n" if reasons else (
            f"{ref} is the only method trained: there is nothing to compare it with.\n")
    any_cmp = next(iter(next(iter(comparisons["attacks"].values())).values()))
    seeds = any_cmp["seeds"]
    lines = [
        f"{ref} (the reference) against every other method on the same test samples"
        + (f" ({n_samples} samples" if n_samples else " (")
        + (f", seeds {', '.join(map(str, seeds))} stacked as seed-matched pairs)" if len(seeds) > 1 else ")")
        + ": Avg by an exact McNemar test, worst-class accuracy and NSD by paired permutation tests "
        f"({comparisons['n_permutations']} permutations); p-values Holm-adjusted across the "
        f"{len(comparisons['baselines'])} baseline(s) within each attack and statistic; "
        f"significance at α = {alpha:g}. Differences are {ref} minus the baseline "
        "(Avg and Worst in percentage points, NSD as a ratio: lower is fairer).",
        "",
    ]
    if len(seeds) > 1:
        lines += ["With several seeds the p-values are conditional on the trained models (they measure "
                  "test-sample noise); see the seed summary for the spread over training runs. Worst and NSD "
                  "here are those of the seed-pooled class accuracies (the mean over seeds of each class's "
                  "accuracy), which can differ slightly from the mean over seeds shown in the table.", ""]
    if comparisons["skipped"]:
        lines += [f"- {method_label(m)} was not compared: {reason}." for m, reason in comparisons["skipped"].items()]
        lines.append("")
    for attack, sentences in findings(comparisons, protocol).items():
        lines += [f"**{attack_label(attack, protocol=protocol)}**", ""] + [f"- {s}" for s in sentences] + [""]
    # compact table
    header = ["Baseline"] + [f"{attack_label(a, protocol=protocol)} Δ{STAT_LABELS[s]}"
                             for a in comparisons["attacks"] for s in STATISTICS]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in comparisons["baselines"]:
        cells = [method_label(method)]
        for attack, by_baseline in comparisons["attacks"].items():
            for stat in STATISTICS:
                result = by_baseline[method][stat]
                diff = _finite(result["diff"])
                shown = "–" if diff is None else (f"{diff:+.3f}" if stat == "nsd" else f"{100 * diff:+.2f}")
                p_holm = _finite(result.get("p_holm"))
                mark = "*" if p_holm is not None and p_holm <= alpha else ""
                cells.append(f"{shown}{mark} ({format_p(p_holm)})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"\\* Holm-adjusted p ≤ {alpha:g}.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# published numbers
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# the results table
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """A table cell: a point value, with a bootstrap interval (one seed) or a std over seeds."""

    value: float | None
    low: float | None = None
    high: float | None = None
    std: float | None = None


@dataclass(frozen=True)
class Row:
    label: str
    cells: dict[tuple[str, str], Cell]  # (attack, stat) -> Cell
    published: bool = False


@dataclass(frozen=True)
class RowSpec:
    """One row of the table: ``key`` is ``teacher`` or a method (published lookup), ``models`` its
    model ids (several seeds: the row shows their mean ± std)."""

    key: str
    label: str
    models: tuple[str, ...]


@dataclass(frozen=True)
class ResultsTable:
    attacks: list[str]
    rows: list[Row]
    caption: str
    notes: list[str] = field(default_factory=list)
    protocol: dict[str, Any] = field(default_factory=dict)  # the evaluation's (labels a non-standard AA)


def row_specs(methods: Sequence[str], seeds: Sequence[int], teacher: bool = True) -> list[RowSpec]:
    """Rows like the paper: the teacher first, then the methods in ``distill.methods`` order."""
    specs = [RowSpec("teacher", method_label("teacher"), ("teacher",))] if teacher else []
    specs += [RowSpec(m, method_label(m), tuple(f"{m}/seed{s}" for s in seeds)) for m in methods]
    return specs


def _cell(fairness: Mapping[str, Mapping[str, Mapping[str, Any]]], models: Sequence[str], attack: str,
          stat: str) -> Cell:
    if len(models) == 1:
        entry = fairness[models[0]][attack]
        ci = entry.get(f"{stat}_ci") or [None, None]
        return Cell(_finite(entry[stat]), _finite(ci[0]), _finite(ci[1]))
    values = [_finite(fairness[m][attack][stat]) for m in models]
    if any(v is None for v in values):
        return Cell(None)
    summary = seed_summary([float(v) for v in values])  # type: ignore[arg-type]
    return Cell(summary["mean"], std=summary["std"])


def results_table(fairness: Mapping[str, Mapping[str, Mapping[str, Any]]], specs: Sequence[RowSpec],
                  attacks: Sequence[str], *, caption: str, published: Mapping[str, Published] | None = None,
                  protocol: Protocol | None = None) -> ResultsTable:
    """The paper's layout: one row per spec (plus an "… (published)" row right after it where
    published numbers exist for any of the table's attacks), one (Avg, Worst, NSD) group per attack."""
    published = published or {}
    attacks = order_attacks(list(attacks))
    rows: list[Row] = []
    notes: list[str] = []
    for spec in specs:
        cells = {(a, s): _cell(fairness, spec.models, a, s) for a in attacks for s in STATISTICS}
        rows.append(Row(spec.label, cells))
        anchor = published.get(spec.key)
        if anchor is None:
            continue
        pub_cells = {(a, s): Cell(anchor.values[a][s]) for a in attacks for s in STATISTICS
                     if s in anchor.values.get(a, {})}
        if pub_cells:
            rows.append(Row(f"{spec.label} (published)", pub_cells, published=True))
            notes.append(f"{spec.label} (published): {anchor.source or 'source not given'}"
                         + (f" — {anchor.description}" if anchor.description else ""))
    return ResultsTable(attacks=attacks, rows=rows, caption=caption, notes=notes, protocol=dict(protocol or {}))


def format_cell(cell: Cell | None, stat: str, *, latex: bool = False, empty: str = "–") -> str:
    """``84.92 [84.2, 85.6]`` (Avg/Worst in %, interval to 1 decimal), ``0.087 [0.071, 0.102]`` (NSD),
    ``84.92 ± 0.31`` (mean ± std over seeds), or ``empty``."""
    if cell is None or cell.value is None:
        return empty
    scale, digits, ci_digits = (1.0, 3, 3) if stat == "nsd" else (100.0, 2, 1)
    text = f"{scale * cell.value:.{digits}f}"
    if cell.std is not None:
        pm = r"$\pm$" if latex else "±"
        extra = f"{pm} {scale * cell.std:.{digits}f}" if math.isfinite(cell.std) else ""
        return f"{text} {extra}".strip()
    if cell.low is not None and cell.high is not None:
        interval = f"[{scale * cell.low:.{ci_digits}f}, {scale * cell.high:.{ci_digits}f}]"
        return f"{text}{{\\scriptsize\\,{interval}}}" if latex else f"{text} {interval}"
    return text


def _column_names(attacks: Sequence[str], protocol: Protocol | None = None) -> list[str]:
    return [f"{attack_label(a, protocol=protocol)} {STAT_LABELS[s]}" + ("" if s == "nsd" else " (%)") for a in attacks for s in STATISTICS]


def table_markdown(table: ResultsTable) -> str:
    """The table in markdown (caption above, sources of published numbers below)."""
    header = ["Method"] + _column_names(table.attacks, table.protocol)
    lines = [f"Table: {table.caption}", "", "| " + " | ".join(header) + " |",
             "|:---|" + "---:|" * (len(header) - 1)]
    for row in table.rows:
        label = f"*{row.label}*" if row.published else row.label
        cells = [format_cell(row.cells.get((a, s)), s) for a in table.attacks for s in STATISTICS]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    if table.notes:
        lines += ["", "Published numbers: " + "; ".join(table.notes) + "."]
    return "\n".join(lines) + "\n"


def table_csv(table: ResultsTable) -> str:
    """The table as CSV (one header row; cells as in markdown, empty where there is no number)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["Method", *_column_names(table.attacks, table.protocol)])
    for row in table.rows:
        writer.writerow([row.label, *(format_cell(row.cells.get((a, s)), s, empty="")
                                      for a in table.attacks for s in STATISTICS)])
    return buffer.getvalue()


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text; ``∞`` and ``±`` become math."""
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text).replace("L∞", r"$L_\infty$")
    return out.replace("∞", r"$\infty$").replace("±", r"$\pm$").replace("α", r"$\alpha$").replace("—", "---")


def table_latex(table: ResultsTable, label: str = "tab:class-wise-robustness") -> str:
    """The table as a booktabs ``table*`` (needs ``\\usepackage{booktabs,graphicx}``)."""
    n_attacks = len(table.attacks)
    spec = "l" + "ccc" * n_attacks
    groups = " & ".join(rf"\multicolumn{{3}}{{c}}{{{attack_label(a, latex=True, protocol=table.protocol)}}}"
                         for a in table.attacks)
    rules = " ".join(rf"\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}" for i in range(n_attacks))
    stats = " & ".join(STAT_LABELS[s] for _ in table.attacks for s in STATISTICS)
    caption = latex_escape(table.caption)
    if table.notes:
        caption += " Published numbers: " + "; ".join(latex_escape(n) for n in table.notes) + "."
    lines = [
        "% Generated by `absld analyze`; needs \\usepackage{booktabs,graphicx}.",
        r"\begin{table*}[t]",
        r"\centering",
        rf"\caption{{{caption}}}",
        rf"\label{{{label}}}",
        r"\resizebox{\textwidth}{!}{%",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        rf" & {groups} \\",
        rules,
        rf"Method & {stats} \\",
        r"\midrule",
    ]
    for row in table.rows:
        cells = [format_cell(row.cells.get((a, s)), s, latex=True, empty="--") for a in table.attacks
                 for s in STATISTICS]
        name = latex_escape(row.label)
        if row.published:
            name = rf"\textit{{{name}}}"
            cells = [c if c == "--" else rf"\textit{{{c}}}" for c in cells]
        lines.append(f"{name} & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table*}"]
    return "\n".join(lines) + "\n"


def describe_selection(metas: Mapping[str, Mapping[str, Any] | None], fallback: str | None = None) -> str:
    """The students' checkpoint-selection rule in words, from their selection meta (``select``,
    ``selected_epoch``, ``selection_split``), with the selected epochs per method; ``fallback``
    (params' ``distill.select``) where no student carries the meta."""
    rules: dict[str, dict[str, list[str]]] = {}  # select -> method -> epochs (seed order)
    for model, meta in metas.items():
        if not meta or meta.get("select") is None:
            continue
        method = ModelId.parse(model).method
        epoch = meta.get("selected_epoch")
        rules.setdefault(str(meta["select"]), {}).setdefault(method, []).append("?" if epoch is None else str(epoch))
    if not rules:
        if fallback is None:
            return "Checkpoint selection: not recorded."
        return f"Students' checkpoint: {SELECTION_RULES.get(fallback, fallback)} (distill.select = {fallback})."
    parts = []
    for select, by_method in rules.items():
        rule = f"{SELECTION_RULES.get(select, select)} (distill.select = {select})"
        epochs = {e for es in by_method.values() for e in es}
        if select == "last":
            pass
        elif len(epochs) == 1:
            rule += f", epoch {epochs.pop()} for every student"
        else:
            rule += "; selected epochs " + ", ".join(f"{method_label(m)} {'/'.join(es)}" for m, es in by_method.items())
        parts.append(rule)
    prefix = "Students' checkpoint: " if len(parts) == 1 else "Students' checkpoints differ in selection: "
    return prefix + "; ".join(parts) + "."


def table_caption(*, dataset: str, n_samples: int, eps: float, ddof: int, confidence: float, n_bootstrap: int,
                  selection: str, several_seeds: bool = False, n_seeds: int = 1,
                  protocol: Protocol | None = None, bootstrap_method: str = "percentile") -> str:
    """The caption: what the numbers are, the intervals, the NSD ddof, the selection rule, and from
    the records' ``protocol``: the cascade, bf16 evaluation, and any AutoAttack that is not the
    standard one (so a CPU stand-in is never read as AA)."""
    protocol = protocol or {}
    spread = (f"Students: mean ± std over {n_seeds} seeds (teacher: {int(round(confidence * 100))}% "
              f"stratified {bootstrap_method} bootstrap interval, {n_bootstrap} resamples)" if several_seeds else
              f"Brackets: {int(round(confidence * 100))}% stratified {bootstrap_method} bootstrap intervals "
              f"({n_bootstrap} resamples)")
    text = (f"Class-wise robustness on {dataset_label(dataset)} ({n_samples} test samples, L∞ eps = "
            f"{fraction_of_255(eps)}). Avg: overall accuracy (%); Worst: worst-class accuracy (%); "
            f"NSD: std/mean of the class accuracies (ddof = {ddof}; lower is fairer). {spread}. {selection}")
    if protocol.get("cascade"):
        text += (" Attacks run as a cascade: each column counts samples robust to that attack and every "
                 "earlier one.")
    if protocol.get("precision", "float32") != "float32":
        text += f" Clean, FGSM, PGD and CW were evaluated under {protocol['precision']} (not float32)."
    if not aa_is_standard(protocol):
        text += f" {aa_description(protocol)}."
    aa_subset = (protocol.get("aa") or {}).get("n_samples")
    if aa_subset is not None and aa_subset < n_samples:
        text += (f" {attack_label('aa', protocol=protocol)} and Worst-case cover the first {aa_subset} of the "
                 f"{n_samples} test samples only (evaluate.aa.n_samples).")
    return text


# --------------------------------------------------------------------------------------------------
# the markdown report
# --------------------------------------------------------------------------------------------------


def describe_configuration(evaluate: EvaluateConfig, analyze: AnalyzeConfig, *, dataset: str, n_samples: int,
                           eps: float, attacks: Sequence[str], seeds: Sequence[int], selection: str,
                           protocol: Protocol | None = None) -> list[tuple[str, str]]:
    """(name, value) lines of the configuration behind the numbers (for report.md and W&B); the
    evaluation's own settings come from the records' ``protocol`` where it has them."""
    protocol = protocol or {}
    aa = protocol.get("aa") or evaluate.aa.model_dump(mode="json")
    aa_text = (f"{aa['backend']} {aa.get('package_version') or ''}".rstrip() + f", version {aa['version']}"
               + (f" ({', '.join(aa['attacks'])})" if aa.get("attacks") else "")
               + ("" if aa_is_standard(protocol) else " — AA*: not the standard AutoAttack"))
    return [
        ("dataset", dataset_label(dataset)),
        ("test samples", f"{n_samples} (the first {'all' if evaluate.n_samples is None else evaluate.n_samples} "
                         "in test-set order)"),
        ("eps", f"{fraction_of_255(eps)} (L∞, pixel space)"),
        ("attacks", ", ".join(attack_label(a, protocol=protocol) for a in attacks)),
        ("FGSM", f"one step of eps, start x + {evaluate.fgsm.gauss_std:g}·N(0, I)"),
        ("PGD", f"{evaluate.pgd.steps} steps of {fraction_of_255(evaluate.pgd.step)}, uniform start, CE"),
        ("CW∞", f"{evaluate.cw.steps} steps of {fraction_of_255(evaluate.cw.step)}, margin loss, "
                f"kappa = {evaluate.cw.kappa:g}"),
        ("AutoAttack", aa_text),
        ("cascade", str(protocol.get("cascade", evaluate.cascade)).lower()),
        ("precision", str(protocol.get("precision", "float32" if not evaluate.amp else "bf16-autocast"))),
        ("evaluate seed", str(evaluate.seed)),
        ("seeds", ", ".join(map(str, seeds))),
        ("checkpoint selection", selection),
        ("NSD ddof", str(analyze.nsd_ddof)),
        ("intervals", f"{analyze.confidence:g} stratified bootstrap, {analyze.n_bootstrap} resamples, "
                      f"seed {analyze.seed}"),
        ("tests", f"McNemar exact (Avg), paired permutation ({analyze.n_permutations} resamples; Worst, NSD), "
                  f"Holm across baselines, reference {method_label(analyze.reference)}"),
    ]


def _clip(stat: str, interval: Sequence[Any]) -> tuple[float | None, float | None]:
    """An interval clipped to the range of the statistic (accuracies in [0, 1], NSD >= 0)."""
    low, high = _finite(interval[0]), _finite(interval[1])
    top = math.inf if stat == "nsd" else 1.0
    return (None if low is None else min(max(low, 0.0), top), None if high is None else min(max(high, 0.0), top))


def seed_markdown(summaries: Mapping[str, Mapping[str, Mapping[str, SeedSummary | None]]], attacks: Sequence[str],
                  confidence: float, protocol: Protocol | None = None) -> str:
    """Markdown tables of mean [t-interval] over seeds, one per statistic ('' with fewer than two seeds)."""
    if not summaries:
        return ""
    lines: list[str] = []
    for stat in STATISTICS:
        lines += [f"**{STAT_LABELS[stat]}** (mean [{int(round(confidence * 100))}% t-interval, clipped to the "
                  "statistic's range] over seeds)", "",
                  "| Method | " + " | ".join(attack_label(a, protocol=protocol) for a in attacks) + " |",
                  "|:---|" + "---:|" * len(attacks)]
        for method, by_attack in summaries.items():
            cells = []
            for attack in attacks:
                s = by_attack.get(attack, {}).get(stat)
                cells.append("–" if s is None else format_cell(Cell(s["mean"], *_clip(stat, s["ci"])), stat))
            lines.append(f"| {method_label(method)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def markdown_report(*, title: str, intro: str, table_md: str, tests_md: str,
                    figures: Sequence[tuple[str, str]], configuration: Sequence[tuple[str, str]],
                    seeds_md: str = "", notes: Sequence[str] = ()) -> str:
    """``results/report.md``: the table (and ``notes`` below it), the tests in words, the figures
    (``(caption, relative path)``) and the configuration."""
    lines = [f"# {title}", "", intro, "", "## Class-wise robustness", "", table_md.rstrip(), ""]
    lines += [line for note in notes if note for line in (note, "")]
    if seeds_md:
        lines += ["## Across training seeds", "", seeds_md.rstrip(), ""]
    lines += ["## Statistical tests", "", tests_md.rstrip(), "", "## Figures", ""]
    for caption, path in figures:
        lines += [f"![{caption}]({path})", "", f"*{caption}*", ""]
    lines += ["## Configuration", "", "| setting | value |", "|:---|:---|"]
    lines += [f"| {name} | {value} |" for name, value in configuration]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# the W&B report
# --------------------------------------------------------------------------------------------------


def _fallback_table(fairness: Mapping[str, Mapping[str, Mapping[str, Any]]], attacks: Sequence[str],
                    protocol: Protocol | None = None) -> str:
    header = ["Model"] + [f"{attack_label(a, protocol=protocol)} {STAT_LABELS[s]}" for a in attacks for s in STATISTICS]
    lines = ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * (len(header) - 1)]
    for model, by_attack in fairness.items():
        cells = [format_cell(Cell(_finite(by_attack[a][s])), s) if a in by_attack else "–"
                 for a in attacks for s in STATISTICS]
        lines.append(f"| {model_label(model)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_wandb_report(project: str, entity: str | None, study: str,
                       fairness: Mapping[str, Mapping[str, Mapping[str, Any]]], attacks: Sequence[str], *,
                       class_names: Sequence[str] | None = None, reference: str = "absld",
                       table_md: str | None = None, tests_md: str | None = None,
                       configuration: Sequence[tuple[str, str]] = (), title: str | None = None,
                       eval_metric: str = "{attack}/{stat}", summary_table: str = "fairness_table",
                       protocol: Protocol | None = None, experiment: str | None = None) -> "Report":
    """The W&B report of a study, as a ``wandb_workspaces.reports.v2.Report`` (not saved).

    Blocks: a table of contents; "Class-wise robustness" (the results table as markdown); "Statistical
    tests" (the tests in words); "Per-attack accuracy of the evaluated models": a panel grid over the
    runs of ``job_type`` evaluate in group ``study``, one bar panel per attack (``eval_metric`` with
    stats avg and worst, e.g. ``aa/avg``; ``attack`` is :func:`metric_name`, so a non-standard AA of
    ``protocol`` reads ``aa_nonstandard/avg``) and one of NSD per attack; "Class-wise accuracy per
    attack": one bar panel per attack over the same runs with ``<attack>/class/<class name>`` (what
    the evaluate stage logs); "<reference> temperatures": a panel grid over the reference's distill
    runs with line plots of ``tau_adv/<class name>`` and ``tau_nat/<class name>`` against epoch;
    "Summary table": the ``summary_table`` W&B table logged by the analyze run; "Configuration".

    ``experiment`` keeps only the runs of one DVC experiment (their ``dvc_experiment`` config).

    Building the object touches no network (``entity=None`` is stored as "" — resolve it before
    ``save()``); ``report.save()`` uploads it and needs a W&B login.
    """
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    entity = entity or ""
    attacks = order_attacks(list(attacks))
    ref = method_label(reference)
    title = title or f"{study}: class-wise robustness of {ref} and its baselines"

    def runset(name: str, job_type: str, *extra: Any) -> Any:
        if experiment is not None:
            extra = (*extra, expr.Config("dvc_experiment") == experiment)
        filters = expr.And(expr.Metric("JobType") == job_type, expr.Metric("Group") == study, *extra)
        return wr.Runset(entity=entity, project=project, name=name, filters=filters)

    def metric(attack: str, stat: str) -> str:
        return eval_metric.format(attack=metric_name(attack, protocol), stat=stat)

    bars = [wr.BarPlot(title=f"{attack_label(a, protocol=protocol)}: Avg and worst-class accuracy",
                       metrics=[metric(a, "avg"), metric(a, "worst")], orientation="v",
                       range_x=(0, 1), title_y="accuracy") for a in attacks]
    bars.append(wr.BarPlot(title="NSD per attack (lower is fairer)", metrics=[metric(a, "nsd") for a in attacks],
                           orientation="v", title_y="NSD"))
    num_classes = len(class_names) if class_names else len(next(iter(fairness.values()))[attacks[0]]["class_acc"])
    names = list(class_names) if class_names else [str(k) for k in range(num_classes)]
    keys = [class_key(name) for name in names]
    tau_lines = [wr.LinePlot(title=f"{symbol} per class (used during each epoch)", x="epoch",
                             y=[f"{kind}/{key}" for key in keys], title_x="epoch", title_y="temperature")
                 for kind, symbol in (("tau_adv", "τ_adv"), ("tau_nat", "τ_nat"))]
    classwise = [wr.BarPlot(title=f"{attack_label(a, protocol=protocol)}: accuracy per class",
                            metrics=[f"{metric_name(a, protocol)}/class/{key}" for key in keys], orientation="h",
                            range_x=(0, 1), title_x="accuracy") for a in attacks]

    blocks: list[Any] = [
        wr.TableOfContents(),
        wr.P(f"Study {study}: Avg, worst-class accuracy and NSD (std/mean of class accuracies, lower is "
             f"fairer) of {ref} and its baselines under every attack; built by `absld report` from "
             "results/fairness.json."),
        wr.H1("Class-wise robustness"),
        wr.MarkdownBlock(table_md or _fallback_table(fairness, attacks, protocol)),
        wr.H1("Statistical tests"),
        wr.MarkdownBlock(tests_md or "No tests recorded (run `absld analyze`)."),
        wr.H1("Per-attack accuracy of the evaluated models"),
        wr.PanelGrid(runsets=[runset("evaluate runs", "evaluate")], panels=bars),
        wr.H1("Class-wise accuracy per attack"),
        wr.PanelGrid(runsets=[runset("evaluate runs", "evaluate")], panels=classwise),
        wr.H1(f"{ref} temperatures"),
        wr.MarkdownBlock(f"Class-wise temperatures of the {ref} students, per class name."),
        wr.PanelGrid(runsets=[runset(f"{ref} distill runs", "distill", expr.Config("method") == reference)],
                     panels=tau_lines),
        wr.H1("Summary table"),
        wr.WeaveBlockSummaryTable(entity=entity, project=project, table_name=summary_table),
    ]
    if configuration:
        blocks += [wr.H1("Configuration"),
                   wr.MarkdownBlock("\n".join(["| setting | value |", "|:---|:---|"]
                                              + [f"| {n} | {v} |" for n, v in configuration]))]
    return wr.Report(project=project, entity=entity, title=title[:128],
                     description=f"ABSLD reproduction, study {study}", blocks=blocks)


def _block_text(block: Any) -> str:
    text = getattr(block, "text", "")
    if isinstance(text, list):
        text = "".join(str(t) for t in text)
    return str(text)


def report_outline(report: "Report") -> str:
    """A plain-text outline of a W&B report: its title, then one line per block (headings, markdown
    sizes, panel grids with their runsets and panels)."""
    lines = [f"W&B report '{report.title}' ({report.entity or '<default entity>'}/{report.project})"]
    for block in report.blocks:
        kind = type(block).__name__
        if kind in ("H1", "H2", "H3"):
            lines.append(f"{kind}: {_block_text(block)}")
        elif kind == "MarkdownBlock":
            lines.append(f"  MarkdownBlock: {len(block.text.splitlines())} lines")
        elif kind == "P":
            lines.append(f"  P: {_block_text(block)[:80]}")
        elif kind == "PanelGrid":
            runsets = "; ".join(f"'{rs.name}'" for rs in block.runsets)
            lines.append(f"  PanelGrid over runset {runsets}:")
            for panel in block.panels:
                ys = getattr(panel, "metrics", None) or getattr(panel, "y", None) or []
                shown = ", ".join(map(str, ys[:4])) + (", ..." if len(ys) > 4 else "")
                lines.append(f"    {type(panel).__name__} '{panel.title}': {shown}")
        elif kind == "WeaveBlockSummaryTable":
            lines.append(f"  WeaveBlockSummaryTable: {block.table_name}")
        else:
            lines.append(f"  {kind}")
    return "\n".join(lines)
