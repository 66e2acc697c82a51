"""The numbers in words: findings, the verdict on ABSLD's claims, captions' sentences."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


from ..fairness import (
    STATISTICS,
    Statistic,
)
from .analysis import Comparisons
from ..labels import _finite
from ..labels import Protocol
from ..labels import format_p
from ..labels import STAT_LABELS
from ..labels import attack_label
from ..labels import method_label


def _significance(p: float | None, alpha: float) -> str:
    if p is None or not math.isfinite(p):
        return "not testable"
    return f"significant at α = {alpha:g}" if p <= alpha else "not significant"


def _clause(stat: Statistic, result: Mapping[str, Any], alpha: float, other: str | None = None) -> str:
    """One statistic's clause of a finding, e.g. "worst-class accuracy is 3.10 points higher than
    RSLAD's (paired permutation test, Holm-adjusted p = 0.004: significant at α = 0.05)"."""
    test = {"mcnemar_exact": "McNemar exact test", "image_sign_flip_exact": "exact per-image sign-flip test"}.get(
        str(result.get("test")), "paired permutation test")
    if result.get("exploratory"):  # outside the declared family: raw p, said so
        p_raw = _finite(result.get("p"))
        stats_part = f"({test}, raw {format_p(p_raw)}, exploratory: not in analyze.baselines)"
    else:
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
    family = comparisons.get("family") or comparisons["baselines"]
    several = len(seeds) > 1
    where = ([f"{n_samples} samples"] if n_samples else []) + (
        [f"seeds {', '.join(map(str, seeds))} as seed-matched pairs"] if several else [])
    lines = [
        f"{ref} (the reference) against every other method on the same test samples"
        + (f" ({', '.join(where)})" if where else "")
        + (": Avg by an exact per-image sign-flip test (McNemar's, generalised to several seeds), "
           if several else ": Avg by an exact McNemar test, ")
        + "worst-class accuracy and NSD by paired permutation tests "
        f"({comparisons['n_permutations']} permutations"
        + ("; an image's outcomes in every seed are swapped together, since the same image recurs in every seed"
           if several else "")
        + f"); p-values Holm-adjusted over the {len(family)} declared baseline(s) (analyze.baselines; an untrained "
        "one counts as p = 1) within each attack and statistic; "
        f"significance at α = {alpha:g}. Differences are {ref} minus the baseline "
        "(Avg and Worst in percentage points, NSD as a ratio: lower is fairer).",
        "",
    ]
    if several:
        lines += ["With several seeds the p-values are conditional on the trained models (they measure "
                  "test-sample noise); the tests over seeds see the spread over training runs. Worst and NSD "
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
                if result.get("exploratory"):
                    cells.append(f"{shown} (raw {format_p(_finite(result.get('p')))})")
                    continue
                p_holm = _finite(result.get("p_holm"))
                mark = "*" if p_holm is not None and p_holm <= alpha else ""
                cells.append(f"{shown}{mark} ({format_p(p_holm)})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"\\* Holm-adjusted p ≤ {alpha:g}; raw: a baseline outside analyze.baselines (exploratory).", ""]
    return "\n".join(lines)
