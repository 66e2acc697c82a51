"""The numbers: the results/fairness.json contract, seed summaries, the paired tests against the reference."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import numpy as np

from ..params import AnalyzeConfig
from ..fairness import (
    STATISTICS,
    FairnessEntry,
    SeedSummary,
    compare,
    holm,
    paired_seed_test,
    seed_summary,
    summarize_with_ci,
)
from ..evaluate.records import Records
from ..io import json_safe  # noqa: F401 - re-exported: the analysis' callers import it from here
from ..vocab import ModelId
from .evaluations import _check_labels
from ..labels import Protocol
from ..labels import _finite
from ..labels import STAT_LABELS
from ..labels import headline_attack
from ..labels import attack_label
from ..labels import dataset_label
from ..labels import method_label
from ..labels import model_label
from ..labels import format_p


FAIRNESS_KEYS = tuple(FairnessEntry.__annotations__)
"""The keys of a fairness.json cell (:class:`absld.fairness.FairnessEntry`, the contract)."""

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
                tol = 1e-9 * max(1.0, abs(value)) if value is not None else 0.0  # floats: no exact comparison
                if None not in (value, low, high) and not low - tol <= value <= high + tol:  # type: ignore[operator]
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
    family: list[str]
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


def _holm_across_baselines(by_baseline: Mapping[str, Mapping[str, Any]], family: Sequence[str],
                           key: str = "p") -> None:
    """Add ``p_holm`` to every ``by_baseline[method][stat]`` test: Holm over the declared ``family``
    (``analyze.baselines``) within each statistic, a member that was not tested (not trained, or its
    ``key`` p undefined) counting with p = 1, so that the adjustment does not depend on what happens
    to be trained. A tested method outside the family gets ``p_holm`` NaN and ``exploratory`` True."""
    for stat in STATISTICS:
        raw = []
        for method in family:
            p = by_baseline[method][stat][key] if method in by_baseline else math.nan
            raw.append(1.0 if p is None or math.isnan(p) else p)
        adjusted = dict(zip(family, holm(raw)))
        for method in by_baseline:
            test = by_baseline[method][stat]
            defined = test[key] is not None and not math.isnan(test[key])
            test["p_holm" if key == "p" else f"{key}_holm"] = adjusted[method] if method in adjusted and defined else math.nan
            test["exploratory"] = method not in adjusted


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
                    test: dict[str, Any] = {"n": len(seeds), "diff": math.nan, "ci": [math.nan, math.nan], "p": math.nan,
                                            "p_sign": math.nan, "p_sign_floor": math.nan, "agree": False}
                else:
                    test = dict(paired_seed_test(mine, theirs, cfg.confidence))  # type: ignore[arg-type]
                test["seeds"] = seeds
                table[attack][method][stat] = test
        _holm_across_baselines(table[attack], cfg.baselines)
        _holm_across_baselines(table[attack], cfg.baselines, key="p_sign")
    return {"reference": reference, "alpha": round(1.0 - cfg.confidence, 12), "confidence": cfg.confidence,
            "family": list(cfg.baselines), "skipped": skipped, "attacks": table}


def class_ranking(fairness: Mapping[str, Mapping[str, Mapping[str, Any]]], attacks: Sequence[str], reference: str,
                  protocol: Protocol | None = None) -> tuple[list[float], str]:
    """``(score per class, the rule in words)``: what per-class figures and tables rank classes by
    when they show only the worst and the best ones (``analyze.classes_shown``).

    The rule: the class accuracy under the :func:`headline_attack` of the ``reference`` method
    (``analyze.reference``), the mean over its seeds; when the reference was not evaluated, the mean
    over every evaluated student; with no student, the teacher's. A class with no defined accuracy
    (null) is NaN (it ranks as the worst). Display only: no statistic depends on it."""
    attack = headline_attack(attacks)
    ids = {model: ModelId.parse(model) for model in fairness}
    chosen = [m for m, mid in ids.items() if not mid.is_teacher and mid.method == reference]
    label = attack_label(attack, protocol=protocol)
    if chosen:
        spread = f"mean over its {len(chosen)} seeds" if len(chosen) > 1 else f"seed {ids[chosen[0]].seed}"
        words = f"{method_label(reference)}'s {label} class accuracy ({spread})"
    else:
        chosen = [m for m, mid in ids.items() if not mid.is_teacher]
        words = (f"the mean {label} class accuracy of the {len(chosen)} evaluated students" if chosen else
                 f"the teacher's {label} class accuracy")
        chosen = chosen or [m for m, mid in ids.items() if mid.is_teacher]
    table = np.asarray([[np.nan if v is None else float(v) for v in fairness[m][attack]["class_acc"]]
                        for m in chosen], dtype=np.float64)  # (models, C)
    defined = (~np.isnan(table)).sum(axis=0)  # (C,) models with a defined accuracy
    scores = np.where(defined > 0, np.nansum(table, axis=0) / np.maximum(defined, 1), np.nan)  # (C,) NaN-ignoring mean
    return [float(s) for s in scores], words


def worst_classes(fairness: Mapping[str, Mapping[str, Mapping[str, Any]]], attack: str
                  ) -> dict[str, tuple[int, float] | None]:
    """``{model: (class index, accuracy)}`` of each model's worst class under ``attack``, over *all*
    classes (the class behind its ``worst``; the lowest index on ties); None when undefined."""
    out: dict[str, tuple[int, float] | None] = {}
    for model, by_attack in fairness.items():
        acc = [_finite(v) for v in by_attack[attack]["class_acc"]]
        defined = [(v, k) for k, v in enumerate(acc) if v is not None]
        out[model] = None if not defined else (min(defined)[1], min(defined)[0])
    return out


def _points(stat: str, value: float) -> str:
    return f"{value:+.3f}" if stat == "nsd" else f"{100 * value:+.2f} points"


def _seed_clause(stat: str, test: Mapping[str, Any], alpha: float,
                 per_sample: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """("+2.10 points [−1.0, 5.2], t-test p = 0.12, sign-flip p = 0.25", sign) with sign "+", "−"
    (significant by the Holm-adjusted t-test) or "0". When every seed's difference is the same the
    spread is unknown: no t-test p, the clause says so and quotes ``per_sample``'s test instead."""
    diff, ci, p = _finite(test["diff"]), test["ci"], _finite(test.get("p_holm"))
    if diff is None:
        return "undefined", "0"
    scale, unit, digits = (1.0, "", 3) if stat == "nsd" else (100.0, " points", 2)
    sign_p = _finite(test.get("p_sign_holm", test.get("p_sign")))
    sign_text = "" if sign_p is None else f", sign-flip {format_p(sign_p)}"
    if test.get("agree"):
        other = ""
        if per_sample is not None:
            other = f"; the per-sample test on the same records gives {format_p(_finite(per_sample.get('p_holm')))}"
        return (f"{scale * diff:+.{digits}f}{unit} in each of the {test['n']} seeds: they agree, so the spread over "
                f"training runs is unknown and no t-test is possible{sign_text}{other}"), "0"
    low, high = _finite(ci[0]), _finite(ci[1])
    interval = "" if low is None or high is None else f" [{scale * low:+.{digits}f}, {scale * high:+.{digits}f}]"
    significant = p is not None and p < alpha
    sign = ("+" if diff > 0 else "−") if significant else "0"
    return f"{scale * diff:+.{digits}f}{unit}{interval}, t-test {format_p(p)}{sign_text}", sign


def seeds_can_show(n: int, alpha: float) -> str:
    """What a paired test over ``n`` seeds can show at ``alpha``, in one sentence."""
    floor = 2.0 ** (1 - n) if n > 1 else 1.0
    if n < 2:
        return "One seed: no test over training runs is possible."
    if floor > alpha:
        return (f"With {n} seeds the exact sign-flip test cannot go below p = {floor:g}, so a significant result "
                f"rests on the t-test's assumption that the seed differences are normal ({n - 1} degree"
                f"{'s' if n > 2 else ''} of freedom), which {n} values cannot check; only large effects can be "
                f"significant, and 'not shown' is not 'false'.")
    return (f"With {n} seeds the exact sign-flip test (no normality assumed) can reach p = {floor:.3g}: where it "
            f"agrees with the t-test the result does not rest on normality.")


def verdict(seed_cmp: SeedComparisons | None, seed_stats: Mapping[str, Any], attacks: Sequence[str], *,
            comparisons: Mapping[str, Any] | None = None, baseline: str = "rslad", dataset: str = "",
            protocol: Protocol | None = None) -> str:
    """The report's first paragraph: do ABSLD's claims hold at this scale? Against ``baseline``
    (``analyze.verdict_baseline``) under the :func:`headline_attack`, by the paired t-tests over
    seeds, Holm-adjusted over the declared family (``analyze.baselines``): worst-class robustness
    up, NSD down, and the Avg cost — each 'holds' only when significant in the claimed direction,
    'contradicted' when significant the other way, else 'not shown'. Its first sentence says how
    many seeds it rests on and what that can show (:func:`seeds_can_show`); a statistic on which
    every seed agrees is 'not shown' with the per-sample test of ``comparisons`` quoted."""
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
    per_sample = ((comparisons or {}).get("attacks", {}).get(attack, {}) or {}).get(baseline)

    def mean_of(method: str, stat: str) -> str:
        s = (seed_stats.get(method, {}).get(attack, {}) or {}).get(stat)
        if not s:
            return "–"
        return f"{s['mean']:.3f}" if stat == "nsd" else f"{100 * s['mean']:.1f} %"

    clauses = {stat: _seed_clause(stat, tests[stat], alpha, (per_sample or {}).get(stat)) for stat in STATISTICS}
    worst_text, worst_sign = clauses["worst"]
    nsd_text, nsd_sign = clauses["nsd"]
    avg_text, avg_sign = clauses["avg"]
    judge = {("worst", "+"): "holds", ("worst", "−"): "is contradicted", ("nsd", "−"): "holds",
             ("nsd", "+"): "is contradicted"}
    worst_verdict = judge.get(("worst", worst_sign), "is not shown")
    nsd_verdict = judge.get(("nsd", nsd_sign), "is not shown")
    avg_verdict = {"−": "a significant Avg cost", "+": "a significant Avg gain", "0": "no significant Avg change"}[avg_sign]
    label = attack_label(attack, protocol=protocol)
    where = f" on {dataset_label(dataset)}" if dataset else ""
    family = seed_cmp.get("family") or []
    return (f"**Verdict at this scale{where}** rests on {n} seed{'s' if n != 1 else ''} each of {ref} and {other}. "
            f"{seeds_can_show(n, alpha)} "
            f"({label}; paired t-tests over seeds, Holm-adjusted over the {len(family)} declared baselines "
            f"(analyze.baselines; untrained ones count as p = 1), α = {alpha:g}; differences {ref} − {other} "
            f"with per-comparison {int(round(100 * seed_cmp['confidence']))}% t-intervals, not adjusted): "
            f"worst-class robustness up {worst_verdict} ({mean_of(seed_cmp['reference'], 'worst')} vs "
            f"{mean_of(baseline, 'worst')}: {worst_text}); NSD down {nsd_verdict} "
            f"({mean_of(seed_cmp['reference'], 'nsd')} vs {mean_of(baseline, 'nsd')}: {nsd_text}); and {avg_verdict} "
            f"({mean_of(seed_cmp['reference'], 'avg')} vs {mean_of(baseline, 'avg')}: {avg_text}).")


def seed_tests_markdown(seed_cmp: SeedComparisons | None, protocol: Protocol | None = None) -> str:
    """Markdown table of the paired tests over seeds ('' when none were run)."""
    if seed_cmp is None or not any(seed_cmp["attacks"].values()):
        return ""
    ref = method_label(seed_cmp["reference"])
    family = seed_cmp.get("family") or []
    lines = [f"{ref} − baseline per seed, averaged over the seeds both were trained with; paired t-test and exact "
             f"sign-flip test over seeds (training variation), both Holm-adjusted over the {len(family)} declared "
             f"baselines (analyze.baselines; an untrained one counts as p = 1); intervals are per-comparison "
             f"t-intervals, not adjusted; Avg and Worst in points, NSD as a ratio. A baseline outside the family is "
             f"marked (exploratory: raw p).", "",
             "| Attack | Baseline | ΔAvg | ΔWorst | ΔNSD |", "|:---|:---|---:|---:|---:|"]
    for attack, by_baseline in seed_cmp["attacks"].items():
        for method, tests in by_baseline.items():
            cells = [_seed_clause(stat, _raw_if_exploratory(tests[stat]), seed_cmp["alpha"])[0] for stat in STATISTICS]
            mark = " (exploratory)" if tests["avg"].get("exploratory") else ""
            lines.append(f"| {attack_label(attack, protocol=protocol)} | {method_label(method)}{mark} | "
                         + " | ".join(cells) + " |")
    if seed_cmp["skipped"]:
        lines += [""] + [f"- {method_label(m)} was not tested over seeds: {r}." for m, r in seed_cmp["skipped"].items()]
    return "\n".join(lines) + "\n"


def _raw_if_exploratory(test: Mapping[str, Any]) -> Mapping[str, Any]:
    """A test outside the declared family shows its raw p where the family's show the adjusted one."""
    if not test.get("exploratory"):
        return test
    return {**test, "p_holm": test.get("p"), "p_sign_holm": test.get("p_sign")}


class PairedTest(TypedDict, total=False):
    test: str
    p: float
    p_holm: float
    exploratory: bool
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
    family: list[str]
    pooling: str
    alpha: float
    n_permutations: int
    seed: int
    ddof: int
    skipped: dict[str, str]
    attacks: dict[str, dict[str, PairComparison]]


POOLING = ("seed-matched pairs: ref/seed<S> paired with baseline/seed<S> on the same samples for every common "
           "seed S; a permutation swaps the two methods on an image in every seed together (an image's seeds are "
           "not independent), and Avg's test is the exact sign-flip test of the per-image hit differences summed "
           "over seeds (McNemar's with one seed); p-values are conditional on the trained models (test-sample "
           "noise), the spread over training runs is in seed_comparisons")


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

    attacks = next(iter(records.values())).names
    table: dict[str, dict[str, PairComparison]] = {attack: {} for attack in attacks}
    for attack in attacks:
        y = next(iter(records.values())).column(attack)[1]  # the samples the column covers
        for method in baselines:
            seeds = pairs[method]
            ref = np.stack([records[ref_seeds[s]].column(attack)[0] for s in seeds])  # (S, N)
            other = np.stack([records[groups[method][s]].column(attack)[0] for s in seeds])  # (S, N)
            if len(seeds) == 1:
                ref, other = ref[0], other[0]
            result = compare(ref, other, y, num_classes, n_resamples=cfg.n_permutations, seed=cfg.seed,
                             ddof=cfg.nsd_ddof)
            table[attack][method] = {"seeds": seeds, "n_pairs": int(ref.size),
                                     "avg": dict(result["avg"]), "worst": dict(result["worst"]),
                                     "nsd": dict(result["nsd"])}  # type: ignore[typeddict-item]
        _holm_across_baselines(table[attack], cfg.baselines)
    return {"reference": reference, "baselines": baselines, "family": list(cfg.baselines), "pooling": POOLING, "alpha": round(1.0 - cfg.confidence, 12),
            "n_permutations": cfg.n_permutations, "seed": cfg.seed, "ddof": cfg.nsd_ddof, "skipped": skipped,
            "attacks": table}
