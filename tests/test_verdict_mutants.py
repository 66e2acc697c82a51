"""Tests written against the surviving mutants of the verdict's modules (docs/testing.md, mutation testing):
absld/analyze/words.py, absld/analyze/analysis.py and the tests of absld/fairness.py the verdict reads.

Every expected value is worked out by hand (in the comments) or by a direct recomputation, never copied
from the code's output. All in memory, no CLI: the whole file runs in seconds.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from absld import fairness
from absld.analyze import analysis, words
from absld.params import AnalyzeConfig
from tests.test_analyze import _seed_records as _records


# --------------------------------------------------------------------------------------------------
# words.py: the findings in plain words
def test_significance_is_at_or_below_alpha_and_untestable_without_a_finite_p():
    assert words._significance(0.05, 0.05) == "significant at α = 0.05"  # p <= alpha, the boundary included
    assert words._significance(0.0500001, 0.05) == "not significant"
    assert words._significance(0.001, 0.1) == "significant at α = 0.1"
    assert words._significance(None, 0.05) == "not testable"
    assert words._significance(math.nan, 0.05) == "not testable"
    assert words._significance(math.inf, 0.05) == "not testable"


def test_a_clause_names_its_test_its_holm_p_and_the_direction_in_points():
    mcnemar = {"test": "mcnemar_exact", "p": 0.01, "p_holm": 0.04, "diff": 0.0312}
    assert words._clause("avg", mcnemar, 0.05, "RSLAD") == (
        "Avg accuracy is 3.12 points higher than RSLAD's (McNemar exact test, Holm-adjusted p = 0.040: "
        "significant at α = 0.05)")
    flip = {"test": "image_sign_flip_exact", "p": 0.2, "p_holm": 0.6, "diff": -0.005}
    assert words._clause("avg", flip, 0.05, "SAT") == (
        "Avg accuracy is 0.50 points lower than SAT's (exact per-image sign-flip test, Holm-adjusted p = 0.600: "
        "not significant)")
    perm = {"test": "paired_permutation", "p": 0.0001, "p_holm": 0.0004, "diff": 0.25}
    assert words._clause("worst", perm, 0.01, "ARD") == (
        "worst-class accuracy is 25.00 points higher than ARD's (paired permutation test, Holm-adjusted "
        "p < 0.001: significant at α = 0.01)")
    # no "test" key: the permutation test's name; no other method: no "than"
    assert words._clause("worst", {"p_holm": 0.5, "diff": -0.1}, 0.05) == (
        "worst-class accuracy is 10.00 points lower (paired permutation test, Holm-adjusted p = 0.500: not "
        "significant)")


def test_a_clause_of_nsd_says_fairer_or_less_fair_to_three_decimals():
    assert words._clause("nsd", {"p_holm": 0.2, "diff": -0.0123}, 0.05, "RSLAD") == (
        "NSD is 0.012 lower (fairer) than RSLAD's (paired permutation test, Holm-adjusted p = 0.200: not significant)")
    assert words._clause("nsd", {"p_holm": 0.2, "diff": 0.0456}, 0.05, "RSLAD") == (
        "NSD is 0.046 higher (less fair) than RSLAD's (paired permutation test, Holm-adjusted p = 0.200: not "
        "significant)")
    # below 5e-4 it would print 0.000: "the same"; at 6e-4 it prints 0.001
    assert words._clause("nsd", {"p_holm": 1.0, "diff": -4.9e-4}, 0.05, "RSLAD").startswith(
        "NSD is the same as RSLAD's (paired permutation test, Holm-adjusted p = 1: not significant)")
    assert words._clause("nsd", {"p_holm": 1.0, "diff": 6e-4}, 0.05, "RSLAD").startswith(
        "NSD is 0.001 higher (less fair) than RSLAD's")
    assert words._clause("nsd", {"p_holm": 1.0, "diff": 0.0}, 0.05) == (
        "NSD is the same (paired permutation test, Holm-adjusted p = 1: not significant)")


def test_a_clause_of_points_is_the_same_below_half_a_hundredth_of_a_point():
    # 100 * 4.9e-5 = 0.0049 points prints as 0.00: "the same"; 100 * 6e-5 = 0.006 prints as 0.01
    assert words._clause("avg", {"test": "mcnemar_exact", "p_holm": 1.0, "diff": 4.9e-5}, 0.05, "RSLAD") == (
        "Avg accuracy is the same as RSLAD's (McNemar exact test, Holm-adjusted p = 1: not significant)")
    assert words._clause("avg", {"test": "mcnemar_exact", "p_holm": 1.0, "diff": -6e-5}, 0.05, "RSLAD") == (
        "Avg accuracy is 0.01 points lower than RSLAD's (McNemar exact test, Holm-adjusted p = 1: not significant)")
    assert words._clause("worst", {"p_holm": 1.0, "diff": 0.0}, 0.05) == (
        "worst-class accuracy is the same (paired permutation test, Holm-adjusted p = 1: not significant)")


def test_a_clause_without_a_difference_or_p_says_undefined_and_untestable():
    assert words._clause("nsd", {"p_holm": None, "diff": None}, 0.05, "RSLAD") == (
        "NSD difference is undefined (paired permutation test, Holm-adjusted p undefined: not testable)")
    assert words._clause("avg", {"test": "mcnemar_exact", "p_holm": math.nan, "diff": math.nan}, 0.05) == (
        "Avg accuracy difference is undefined (McNemar exact test, Holm-adjusted p undefined: not testable)")
    assert words._clause("worst", {}, 0.05) == (
        "worst-class accuracy difference is undefined (paired permutation test, Holm-adjusted p undefined: "
        "not testable)")


def test_an_exploratory_clause_quotes_the_raw_p_and_says_why():
    result = {"test": "mcnemar_exact", "p": 0.012, "p_holm": math.nan, "diff": 0.02, "exploratory": True}
    assert words._clause("avg", result, 0.05, "CFA") == (
        "Avg accuracy is 2.00 points higher than CFA's (McNemar exact test, raw p = 0.012, exploratory: not in "
        "analyze.baselines)")
    assert words._clause("worst", {"p": None, "diff": 0.0, "exploratory": True}, 0.05) == (
        "worst-class accuracy is the same (paired permutation test, raw p undefined, exploratory: not in "
        "analyze.baselines)")


def _comparisons(seeds: list[int], skipped: dict[str, str] | None = None) -> dict:
    """A compare_to_reference-like result: ABSLD against RSLAD (in the family) and CFA (outside it)."""
    def test(name: str, p: float, p_holm: float, diff: float, exploratory: bool = False) -> dict:
        return {"test": name, "p": p, "p_holm": p_holm, "diff": diff, "exploratory": exploratory}

    avg_test = "image_sign_flip_exact" if len(seeds) > 1 else "mcnemar_exact"
    return {
        "reference": "absld", "baselines": ["rslad", "cfa"], "family": ["rslad", "sat", "ard"],
        "pooling": "", "alpha": 0.05, "n_permutations": 500, "seed": 0, "ddof": 0, "skipped": skipped or {},
        "attacks": {
            "pgd": {
                "rslad": {"seeds": seeds, "n_pairs": 100 * len(seeds),
                          "avg": test(avg_test, 0.01, 0.03, 0.02),
                          "worst": test("paired_permutation", 0.02, 0.05, 0.1),
                          "nsd": test("paired_permutation", 0.3, 0.9, -0.05)},
                "cfa": {"seeds": seeds, "n_pairs": 100 * len(seeds),
                        "avg": test(avg_test, 0.5, math.nan, -0.01, True),
                        "worst": test("paired_permutation", 0.0004, math.nan, 0.0, True),
                        "nsd": test("paired_permutation", math.nan, math.nan, math.nan, True)},
            },
            "aa": {
                "rslad": {"seeds": seeds, "n_pairs": 100 * len(seeds),
                          "avg": test(avg_test, 1.0, 1.0, 0.0),
                          "worst": test("paired_permutation", 0.2, 0.051, -0.03),
                          "nsd": test("paired_permutation", 0.001, 0.002, 0.0004)},
                "cfa": {"seeds": seeds, "n_pairs": 100 * len(seeds),
                        "avg": test(avg_test, 0.9, math.nan, 0.001, True),
                        "worst": test("paired_permutation", 0.9, math.nan, 0.001, True),
                        "nsd": test("paired_permutation", 0.9, math.nan, 0.001, True)},
            },
        },
    }


def test_findings_are_one_sentence_per_attack_and_baseline():
    out = words.findings(_comparisons([0]))
    assert list(out) == ["pgd", "aa"] and [len(v) for v in out.values()] == [2, 2]
    assert out["pgd"][0] == (
        "Under PGD, ABSLD's Avg accuracy is 2.00 points higher than RSLAD's (McNemar exact test, Holm-adjusted "
        "p = 0.030: significant at α = 0.05); its worst-class accuracy is 10.00 points higher than RSLAD's (paired "
        "permutation test, Holm-adjusted p = 0.050: significant at α = 0.05); its NSD is 0.050 lower (fairer) than "
        "RSLAD's (paired permutation test, Holm-adjusted p = 0.900: not significant).")
    assert out["pgd"][1] == (
        "Under PGD, ABSLD's Avg accuracy is 1.00 points lower than CFA's (McNemar exact test, raw p = 0.500, "
        "exploratory: not in analyze.baselines); its worst-class accuracy is the same as CFA's (paired permutation "
        "test, raw p < 0.001, exploratory: not in analyze.baselines); its NSD difference is undefined (paired "
        "permutation test, raw p undefined, exploratory: not in analyze.baselines).")
    assert out["aa"][0].startswith("Under AA, ABSLD's Avg accuracy is the same as RSLAD's")
    # a non-standard AutoAttack is labelled AA*
    starred = words.findings(_comparisons([0]), protocol={"aa": {"standard": False}})
    assert starred["aa"][0].startswith("Under AA*, ABSLD's")


def test_findings_markdown_with_one_seed():
    text = words.findings_markdown(_comparisons([0], {"iad": "no seed in common with absld ([1] vs [0])"}),
                                   n_samples=100)
    lines = text.split("\n")
    assert lines[0] == (
        "ABSLD (the reference) against every other method on the same test samples (100 samples): Avg by an exact "
        "McNemar test, worst-class accuracy and NSD by paired permutation tests (500 permutations); p-values "
        "Holm-adjusted over the 3 declared baseline(s) (analyze.baselines; an untrained one counts as p = 1) within "
        "each attack and statistic; significance at α = 0.05. Differences are ABSLD minus the baseline (Avg and "
        "Worst in percentage points, NSD as a ratio: lower is fairer).")
    assert lines[1] == ""
    # one seed: no paragraph on several seeds; the skipped baseline comes next
    assert lines[2] == "- IAD was not compared: no seed in common with absld ([1] vs [0])."
    assert lines[3:6] == ["", "**PGD**", ""]
    assert lines[6] == "- " + words.findings(_comparisons([0]))["pgd"][0]
    assert lines[7] == "- " + words.findings(_comparisons([0]))["pgd"][1]
    assert lines[8:11] == ["", "**AA**", ""]
    table = lines[lines.index("| Baseline | PGD ΔAvg | PGD ΔWorst | PGD ΔNSD | AA ΔAvg | AA ΔWorst "
                              "| AA ΔNSD |"):]
    assert table[1] == "|---|---|---|---|---|---|---|"
    # Holm p <= alpha gets a star (0.05 included, 0.051 not); differences in points (NSD: a ratio)
    assert table[2] == ("| RSLAD | +2.00* (p = 0.030) | +10.00* (p = 0.050) | -0.050 (p = 0.900) | +0.00 (p = 1) "
                        "| -3.00 (p = 0.051) | +0.000* (p = 0.002) |")
    # outside the family: the raw p, never a star
    assert table[3] == ("| CFA | -1.00 (raw p = 0.500) | +0.00 (raw p < 0.001) | – (raw p undefined) "
                        "| +0.10 (raw p = 0.900) | +0.10 (raw p = 0.900) | +0.001 (raw p = 0.900) |")
    assert table[4:] == ["", "\\* Holm-adjusted p ≤ 0.05; raw: a baseline outside analyze.baselines (exploratory).",
                         ""]


def test_findings_markdown_with_several_seeds():
    text = words.findings_markdown(_comparisons([0, 1, 2]), n_samples=100)
    lines = text.split("\n")
    assert lines[0] == (
        "ABSLD (the reference) against every other method on the same test samples (100 samples, seeds 0, 1, 2 as "
        "seed-matched pairs): Avg by an exact per-image sign-flip test (McNemar's, generalised to several seeds), "
        "worst-class accuracy and NSD by paired permutation tests (500 permutations; an image's outcomes in every "
        "seed are swapped together, since the same image recurs in every seed); p-values Holm-adjusted over the 3 "
        "declared baseline(s) (analyze.baselines; an untrained one counts as p = 1) within each attack and "
        "statistic; significance at α = 0.05. Differences are ABSLD minus the baseline (Avg and Worst in "
        "percentage points, NSD as a ratio: lower is fairer).")
    assert lines[1:4] == ["", (
        "With several seeds the p-values are conditional on the trained models (they measure test-sample noise); "
        "the tests over seeds see the spread over training runs. Worst and NSD here are those of the seed-pooled "
        "class accuracies (the mean over seeds of each class's accuracy), which can differ slightly from the mean "
        "over seeds shown in the table."), ""]
    assert lines[4] == "**PGD**"  # nothing skipped
    assert "(exact per-image sign-flip test, Holm-adjusted p = 0.030" in lines[6]
    with_samples = words.findings_markdown(_comparisons([3]), n_samples=10)
    assert with_samples.startswith("ABSLD (the reference) against every other method on the same test samples "
                                   "(10 samples): Avg by an exact McNemar test, ")


def test_findings_markdown_without_a_family_counts_the_baselines():
    cmp = _comparisons([0])
    del cmp["family"]
    assert "Holm-adjusted over the 2 declared baseline(s)" in words.findings_markdown(cmp)
    cmp["family"] = []
    assert "Holm-adjusted over the 2 declared baseline(s)" in words.findings_markdown(cmp)


def test_findings_markdown_without_a_comparison_says_why():
    assert words.findings_markdown(None) == (
        "The reference method was not trained (it is not in distill.methods), so no paired tests were run.\n")
    alone = {"reference": "absld", "baselines": [], "alpha": 0.05, "skipped": {}, "attacks": {}}
    assert words.findings_markdown(alone) == "ABSLD is the only method trained: there is nothing to compare it with.\n"
    skipped = {**alone, "skipped": {"rslad": "no seed in common", "sat": "1 seed"}}
    assert words.findings_markdown(skipped) == ("No method could be compared with ABSLD. RSLAD: no seed in common. "
                                                "SAT: 1 seed.\n")


def test_findings_markdown_without_a_sample_count_has_no_empty_parenthesis():
    assert "()" not in words.findings_markdown(_comparisons([0]))
    assert "(, " not in words.findings_markdown(_comparisons([0, 1]))


# --------------------------------------------------------------------------------------------------
# analysis.py: the verdict and the table of tests over seeds
def test_seeds_can_show_states_the_sign_flip_floor_and_the_degrees_of_freedom():
    assert analysis.seeds_can_show(1, 0.05) == "One seed: no test over training runs is possible."
    assert analysis.seeds_can_show(0, 0.05) == "One seed: no test over training runs is possible."
    # 2 seeds: floor 2 / 2^2 = 0.5 > 0.05, one degree of freedom (singular)
    assert analysis.seeds_can_show(2, 0.05) == (
        "With 2 seeds the exact sign-flip test cannot go below p = 0.5, so a significant result rests on the "
        "t-test's assumption that the seed differences are normal (1 degree of freedom), which 2 values cannot "
        "check; only large effects can be significant, and 'not shown' is not 'false'.")
    # 5 seeds: floor 2 / 32 = 0.0625 > 0.05, four degrees of freedom
    assert analysis.seeds_can_show(5, 0.05).startswith(
        "With 5 seeds the exact sign-flip test cannot go below p = 0.0625, so a significant result rests on the "
        "t-test's assumption that the seed differences are normal (4 degrees of freedom), which 5 values cannot")
    # 6 seeds: floor 2 / 64 = 0.03125 <= 0.05, written to 3 significant digits
    assert analysis.seeds_can_show(6, 0.05) == (
        "With 6 seeds the exact sign-flip test (no normality assumed) can reach p = 0.0312: where it agrees with "
        "the t-test the result does not rest on normality.")
    # the floor equal to alpha can reach it: 2 seeds at alpha 0.5
    assert analysis.seeds_can_show(2, 0.5).startswith("With 2 seeds the exact sign-flip test (no normality assumed) "
                                                      "can reach p = 0.5:")
    assert analysis.seeds_can_show(3, 0.2).startswith("With 3 seeds the exact sign-flip test cannot go below p = 0.25")


def test_points_are_signed_hundredths_of_a_point_or_a_three_decimal_ratio():
    assert analysis._points("avg", 0.0312) == "+3.12 points"
    assert analysis._points("worst", -0.1) == "-10.00 points"
    assert analysis._points("nsd", 0.0123) == "+0.012"
    assert analysis._points("nsd", -0.5) == "-0.500"


def test_a_seed_clause_gives_the_difference_its_interval_both_ps_and_the_significant_sign():
    test = {"n": 3, "diff": 0.0312, "ci": [0.01, 0.0524], "p": 0.02, "p_holm": 0.04, "p_sign": 0.25,
            "p_sign_holm": 0.5}
    assert analysis._seed_clause("avg", test, 0.05) == (
        "+3.12 points [+1.00, +5.24], t-test p = 0.040, sign-flip p = 0.500", "+")
    negative = {"n": 3, "diff": -0.02, "ci": [-0.03, -0.01], "p_holm": 0.001, "p_sign_holm": 0.25}
    assert analysis._seed_clause("worst", negative, 0.05) == (
        "-2.00 points [-3.00, -1.00], t-test p = 0.001, sign-flip p = 0.250", "−")
    # significance is p < alpha: at alpha it is not
    assert analysis._seed_clause("worst", {**negative, "p_holm": 0.05}, 0.05)[1] == "0"
    assert analysis._seed_clause("worst", {**negative, "p_holm": 0.0499}, 0.05)[1] == "−"
    nsd = {"n": 4, "diff": -0.0123, "ci": [-0.02, -0.004], "p_holm": 0.3}
    assert analysis._seed_clause("nsd", nsd, 0.05) == ("-0.012 [-0.020, -0.004], t-test p = 0.300", "0")


def test_a_seed_clause_without_an_interval_or_p_says_so():
    # the raw sign-flip p when no Holm-adjusted one is there
    no_ci = {"n": 2, "diff": 0.01, "ci": [math.nan, 0.02], "p_sign": 0.5}
    assert analysis._seed_clause("avg", no_ci, 0.05) == ("+1.00 points, t-test p undefined, sign-flip p = 0.500", "0")
    assert analysis._seed_clause("avg", {**no_ci, "ci": [0.0, None]}, 0.05)[0].startswith("+1.00 points, t-test")
    # a Holm-adjusted sign-flip p wins over the raw one, also when it is undefined
    assert analysis._seed_clause("avg", {**no_ci, "p_sign_holm": math.nan}, 0.05) == (
        "+1.00 points, t-test p undefined", "0")
    assert analysis._seed_clause("nsd", {"diff": math.nan, "ci": [0.0, 1.0], "p_holm": 0.001}, 0.05) == (
        "undefined", "0")
    assert analysis._seed_clause("nsd", {"diff": None, "ci": [0.0, 1.0]}, 0.05) == ("undefined", "0")


def test_a_seed_clause_of_agreeing_seeds_claims_nothing_and_quotes_the_per_sample_test():
    agree = {"n": 3, "diff": -0.01, "ci": [math.nan, math.nan], "p": math.nan, "p_holm": 0.001, "p_sign": 0.25,
             "p_sign_holm": 0.5, "agree": True}
    text, sign = analysis._seed_clause("worst", agree, 0.05, {"p": 0.01, "p_holm": 0.03})
    assert sign == "0"  # even with a (here made-up) significant p_holm
    assert text == ("-1.00 points in each of the 3 seeds: they agree, so the spread over training runs is unknown "
                    "and no t-test is possible, sign-flip p = 0.500; the per-sample test on the same records gives "
                    "p = 0.030")
    assert analysis._seed_clause("nsd", {**agree, "diff": 0.1, "p_sign_holm": None}, 0.05) == (
        ("+0.100 in each of the 3 seeds: they agree, so the spread over training runs is unknown and no t-test is "
         "possible"), "0")
    assert analysis._seed_clause("nsd", {**agree, "agree": False}, 0.05)[1] == "−"


def _seed_test(diff: float, p_holm: float, n: int = 3, **extra) -> dict:
    return {"n": n, "diff": diff, "ci": [diff - 0.01, diff + 0.01], "p": p_holm / 2, "p_holm": p_holm,
            "p_sign": 0.25, "p_sign_holm": 0.5, "agree": False, "seeds": list(range(n)), **extra}


def _seed_cmp(tests: dict[str, dict], family=("rslad", "sat"), skipped=None, confidence=0.95) -> dict:
    return {"reference": "absld", "alpha": round(1 - confidence, 12), "confidence": confidence,
            "family": list(family), "skipped": skipped or {},
            "attacks": {"clean": {"rslad": {s: _seed_test(0.0, 1.0) for s in ("avg", "worst", "nsd")}},
                        "pgd": {"rslad": tests}}}


SEED_STATS = {"absld": {"pgd": {"avg": {"mean": 0.70}, "worst": {"mean": 0.512}, "nsd": {"mean": 0.1}}},
              "rslad": {"pgd": {"avg": {"mean": 0.71}, "worst": {"mean": 0.4133}, "nsd": {"mean": 0.2}}}}


def test_the_verdict_in_full_when_every_claim_is_significant():
    tests = {"worst": _seed_test(0.0967, 0.01), "nsd": _seed_test(0.05, 0.02), "avg": _seed_test(-0.01, 0.001)}
    text = analysis.verdict(_seed_cmp(tests), SEED_STATS, ["clean", "pgd", "aa", "worst"], dataset="cifar10")
    assert text == (
        "**Verdict at this scale on CIFAR-10** rests on 3 seeds each of ABSLD and RSLAD. With 3 seeds the exact "
        "sign-flip test cannot go below p = 0.25, so a significant result rests on the t-test's assumption that "
        "the seed differences are normal (2 degrees of freedom), which 3 values cannot check; only large effects "
        "can be significant, and 'not shown' is not 'false'. (PGD; paired t-tests over seeds, Holm-adjusted "
        "over the 2 declared baselines (analyze.baselines; untrained ones count as p = 1), α = 0.05; differences "
        "ABSLD − RSLAD with per-comparison 95% t-intervals, not adjusted): worst-class robustness up holds "
        "(51.2 % vs 41.3 %: +9.67 points [+8.67, +10.67], t-test p = 0.010, sign-flip p = 0.500); NSD down is "
        "contradicted (0.100 vs 0.200: +0.050 [+0.040, +0.060], t-test p = 0.020, sign-flip p = 0.500); and a "
        "significant Avg cost (70.0 % vs 71.0 %: -1.00 points [-2.00, +0.00], t-test p = 0.001, sign-flip "
        "p = 0.500).")


def test_the_verdict_reads_each_direction_and_the_per_sample_test():
    tests = {"worst": _seed_test(-0.05, 0.01), "nsd": _seed_test(-0.05, 0.02), "avg": _seed_test(0.02, 0.001)}
    text = analysis.verdict(_seed_cmp(tests, confidence=0.9), {}, ["pgd"])
    assert text.startswith("**Verdict at this scale** rests on 3 seeds each of ABSLD and RSLAD. ")
    assert "α = 0.1;" in text and "per-comparison 90% t-intervals" in text
    assert "worst-class robustness up is contradicted (– vs –: -5.00 points" in text
    assert "NSD down holds (– vs –: -0.050" in text
    assert "and a significant Avg gain (– vs –: +2.00 points" in text
    none = {"worst": _seed_test(0.05, 0.2), "nsd": _seed_test(-0.05, 0.2), "avg": _seed_test(-0.02, 0.2)}
    text = analysis.verdict(_seed_cmp(none, family=()), SEED_STATS, ["pgd"])
    assert "worst-class robustness up is not shown (51.2 % vs 41.3 %" in text
    assert "NSD down is not shown (0.100 vs 0.200" in text
    assert "and no significant Avg change (70.0 % vs 71.0 %" in text
    assert "Holm-adjusted over the 0 declared baselines" in text
    # the per-sample p quoted where the seeds agree, from `comparisons` under the headline attack
    agree = {**none, "worst": _seed_test(-0.01, 0.2, agree=True)}
    per_sample = {"attacks": {"pgd": {"rslad": {"worst": {"p_holm": 0.002}, "avg": {"p_holm": 0.9},
                                                  "nsd": {"p_holm": 0.9}}},
                              "clean": {"rslad": {"worst": {"p_holm": 0.7}}}}}
    text = analysis.verdict(_seed_cmp(agree), SEED_STATS, ["clean", "pgd"], comparisons=per_sample)
    assert ("-1.00 points in each of the 3 seeds: they agree, so the spread over training runs is unknown and no "
            "t-test is possible, sign-flip p = 0.500; the per-sample test on the same records gives p = 0.002)") in text
    assert "the per-sample test" not in analysis.verdict(_seed_cmp(agree), SEED_STATS, ["pgd"])
    assert "the per-sample test" not in analysis.verdict(_seed_cmp(agree), SEED_STATS, ["pgd"],
                                                         comparisons={"attacks": {"pgd": None}})


def test_the_verdict_counts_its_seeds_and_its_protocol():
    one = {s: _seed_test(0.01, 0.5, n=1) for s in ("avg", "worst", "nsd")}
    text = analysis.verdict(_seed_cmp(one), SEED_STATS, ["pgd"])
    assert text.startswith("**Verdict at this scale** rests on 1 seed each of ABSLD and RSLAD. One seed: no test "
                           "over training runs is possible. (PGD;")
    aa = _seed_cmp({s: _seed_test(0.01, 0.5) for s in ("avg", "worst", "nsd")})
    aa["attacks"] = {"aa": aa["attacks"]["pgd"]}
    assert "(AA*; paired" in analysis.verdict(aa, {}, ["clean", "aa"], protocol={"aa": {"standard": False}})
    assert "(AA; paired" in analysis.verdict(aa, {}, ["clean", "aa"])


def test_the_verdict_is_not_tested_without_the_baseline_and_says_why():
    assert analysis.verdict(None, {}, ["pgd"]) == (
        "**Verdict:** not tested: ABSLD's claims are judged against RSLAD by paired tests over training seeds, "
        "and RSLAD or the reference was not trained.")
    skipped = {"reference": "absld", "alpha": 0.05, "confidence": 0.95, "family": ["rslad", "sat"],
               "skipped": {"sat": "1 seed(s) in common with absld; a test over seeds needs 2"},
               "attacks": {"pgd": {}}}
    assert analysis.verdict(skipped, {}, ["pgd"], baseline="sat") == (
        "**Verdict:** not tested: ABSLD's claims are judged against SAT by paired tests over training seeds, "
        "and 1 seed(s) in common with absld; a test over seeds needs 2.")
    assert analysis.verdict({**skipped, "attacks": {}}, {}, ["pgd"], baseline="sat").endswith(
        "and 1 seed(s) in common with absld; a test over seeds needs 2.")
    assert analysis.verdict(skipped, {}, ["pgd"]).endswith("and RSLAD or the reference was not trained.")


def test_seed_tests_markdown_rows_mark_the_exploratory_baselines_with_raw_ps():
    assert analysis.seed_tests_markdown(None) == ""
    assert analysis.seed_tests_markdown({"reference": "absld", "attacks": {"pgd": {}}, "skipped": {}}) == ""
    cmp = _seed_cmp({s: _seed_test(0.02, 0.04) for s in ("avg", "worst", "nsd")}, family=["rslad", "sat", "ard"],
                    skipped={"iad": "no seed in common with absld ([5] vs [0, 1, 2])"})
    cmp["attacks"]["pgd"]["cfa"] = {s: _seed_test(-0.03, math.nan, p=0.004, p_sign=0.25, p_sign_holm=math.nan,
                                                    exploratory=True) for s in ("avg", "worst", "nsd")}
    lines = analysis.seed_tests_markdown(cmp).split("\n")
    assert lines[0] == (
        "ABSLD − baseline per seed, averaged over the seeds both were trained with; paired t-test and exact "
        "sign-flip test over seeds (training variation), both Holm-adjusted over the 3 declared baselines "
        "(analyze.baselines; an untrained one counts as p = 1); intervals are per-comparison t-intervals, not "
        "adjusted; Avg and Worst in points, NSD as a ratio. A baseline outside the family is marked (exploratory: "
        "raw p).")
    assert lines[1:4] == ["", "| Attack | Baseline | ΔAvg | ΔWorst | ΔNSD |", "|:---|:---|---:|---:|---:|"]
    assert lines[4].startswith("| Clean | RSLAD | +0.00 points [-1.00, +1.00], t-test p = 1, sign-flip p = 0.500 |")
    assert lines[5] == ("| PGD | RSLAD | +2.00 points [+1.00, +3.00], t-test p = 0.040, sign-flip p = 0.500 | "
                        "+2.00 points [+1.00, +3.00], t-test p = 0.040, sign-flip p = 0.500 | "
                        "+0.020 [+0.010, +0.030], t-test p = 0.040, sign-flip p = 0.500 |")
    # outside the family: the raw t-test p 0.004 and the raw sign-flip p 0.25
    assert lines[6] == ("| PGD | CFA (exploratory) | -3.00 points [-4.00, -2.00], t-test p = 0.004, sign-flip "
                        "p = 0.250 | -3.00 points [-4.00, -2.00], t-test p = 0.004, sign-flip p = 0.250 | "
                        "-0.030 [-0.040, -0.020], t-test p = 0.004, sign-flip p = 0.250 |")
    assert lines[7:] == ["", "- IAD was not tested over seeds: no seed in common with absld ([5] vs [0, 1, 2]).", ""]
    assert "| AA* | RSLAD |" in analysis.seed_tests_markdown(
        {**cmp, "attacks": {"aa": cmp["attacks"]["pgd"]}}, protocol={"aa": {"standard": False}})
    no_family = {k: v for k, v in cmp.items() if k != "family"}
    assert "Holm-adjusted over the 0 declared baselines" in analysis.seed_tests_markdown(no_family)
    assert analysis.seed_tests_markdown({**cmp, "skipped": {}}).endswith("sign-flip p = 0.250 |\n")


def test_raw_if_exploratory_puts_the_raw_ps_in_the_adjusted_places():
    inside = {"p": 0.01, "p_holm": 0.02, "p_sign": 0.25, "p_sign_holm": 0.5}
    assert analysis._raw_if_exploratory(inside) is inside
    assert analysis._raw_if_exploratory({**inside, "exploratory": False}) == {**inside, "exploratory": False}
    outside = {"p": 0.01, "p_holm": math.nan, "p_sign": 0.25, "p_sign_holm": math.nan, "exploratory": True}
    assert analysis._raw_if_exploratory(outside) == {"p": 0.01, "p_holm": 0.01, "p_sign": 0.25, "p_sign_holm": 0.25,
                                                     "exploratory": True}


# --------------------------------------------------------------------------------------------------
# analysis.py: the report's other numbers
def test_class_ranking_prefers_the_reference_then_the_students_then_the_teacher():
    fair = {"teacher": {"aa": {"class_acc": [0.9, 0.1, 0.5]}},
            "absld/seed0": {"aa": {"class_acc": [0.2, 0.5, None]}},
            "absld/seed1": {"aa": {"class_acc": [0.4, None, None]}},
            "rslad/seed0": {"aa": {"class_acc": [0.6, 0.1, 0.3]}}}
    scores, rule = analysis.class_ranking(fair, ["clean", "aa", "worst"], "absld")
    # the mean over ABSLD's seeds ignoring nulls: (0.2 + 0.4) / 2, 0.5 alone, nothing defined -> NaN
    assert scores[:2] == pytest.approx([0.3, 0.5]) and math.isnan(scores[2])
    assert rule == "ABSLD's AA class accuracy (mean over its 2 seeds)"
    one = {k: v for k, v in fair.items() if k != "absld/seed0"}
    scores, rule = analysis.class_ranking(one, ["clean", "aa"], "absld", protocol={"aa": {"standard": False}})
    assert rule == "ABSLD's AA* class accuracy (seed 1)"
    scores, rule = analysis.class_ranking({m: {"pgd": v["aa"]} for m, v in one.items()}, ["pgd"], "absld")
    assert rule == "ABSLD's PGD class accuracy (seed 1)"
    assert scores[0] == pytest.approx(0.4) and math.isnan(scores[1]) and math.isnan(scores[2])
    # no ABSLD: the mean over the three students, never the teacher
    scores, rule = analysis.class_ranking(fair, ["aa"], "cfa")
    assert rule == "the mean AA class accuracy of the 3 evaluated students"
    assert scores[:2] == pytest.approx([(0.2 + 0.4 + 0.6) / 3, (0.5 + 0.1) / 2])
    assert scores[2] == pytest.approx(0.3)
    scores, rule = analysis.class_ranking({"teacher": fair["teacher"]}, ["aa"], "absld")
    assert rule == "the teacher's AA class accuracy" and scores == pytest.approx([0.9, 0.1, 0.5])


def test_worst_classes_is_the_lowest_defined_class_the_first_on_ties():
    fair = {"a": {"aa": {"class_acc": [0.5, 0.2, 0.2, None]}}, "b": {"aa": {"class_acc": [None, math.nan]}},
            "c": {"aa": {"class_acc": [0.3, 0.7, math.nan, 0.1]}}, "d": {"aa": {"class_acc": [0.0, 0.0]}}}
    assert analysis.worst_classes(fair, "aa") == {"a": (1, 0.2), "b": None, "c": (3, 0.1), "d": (0, 0.0)}


def test_interval_note_names_four_cells_and_counts_the_rest():
    assert analysis.interval_note([], 20) == ""
    flagged = [("teacher", "pgd", "worst"), ("absld/seed0", "aa", "nsd"), ("absld/seed1", "clean", "avg"),
               ("rslad/seed0", "worst", "worst"), ("sat/seed2", "fgsm", "nsd")]
    assert analysis.interval_note(flagged, 20) == (
        "Note: in 5 cell(s) (Teacher PGD Worst, ABSLD (seed 0) AA NSD, ABSLD (seed 1) Clean Avg, RSLAD (seed 0) "
        "Worst-case Worst and 1 more) the bootstrap interval does not contain the point estimate. Worst and NSD are "
        "biased under resampling when classes have few samples (here at least 20 per class): read those intervals "
        "with care, or evaluate on more test samples.")
    assert analysis.interval_note(flagged[:4], 3).startswith(
        "Note: in 4 cell(s) (Teacher PGD Worst, ABSLD (seed 0) AA NSD, ABSLD (seed 1) Clean Avg, RSLAD (seed 0) "
        "Worst-case Worst) the bootstrap")
    assert "(seed 0) AA* NSD" in analysis.interval_note(flagged[1:2], 3, protocol={"aa": {"standard": False}})


def test_json_safe_gives_plain_python_and_null_for_non_finite_numbers():
    out = analysis.json_safe({1: (np.float32(0.5), np.int64(3), np.bool_(True), True, None, "x"),
                              "a": np.array([[1.5, np.nan], [np.inf, -np.inf]]), "b": {"c": [math.nan, 2]}})
    assert out == {"1": [0.5, 3, True, True, None, "x"], "a": [[1.5, None], [None, None]], "b": {"c": [None, 2]}}
    assert [type(v) for v in out["1"][:4]] == [float, int, bool, bool]
    assert type(analysis.json_safe(np.int32(7))) is int and type(analysis.json_safe(np.float64(2.0))) is float


def test_intervals_excluding_the_estimate_allow_a_relative_rounding_of_one_part_in_a_billion():
    def cell(value, low, high):
        return {"avg": value, "avg_ci": [low, high], "worst": None, "worst_ci": [0.0, 1.0], "nsd": 0.5}

    fair = {"inside": {"a": cell(0.5, 0.5 + 5e-10, 0.6)}, "below": {"a": cell(0.5, 0.5 + 2e-9, 0.6)},
            "above": {"a": cell(0.6, 0.5, 0.6 - 2e-9)}, "edge": {"a": cell(0.6, 0.5, 0.6 - 5e-10)},
            # at 100 the tolerance is 1e-7, not 1e-9
            "large": {"a": cell(100.0, 100.0 + 5e-8, 101.0)}, "large_out": {"a": cell(100.0, 100.0 + 2e-7, 101.0)},
            "no_ci": {"a": {"avg": 0.5, "avg_ci": None, "worst": 0.1, "nsd": 0.2, "nsd_ci": [0.3, None]}}}
    assert analysis.intervals_excluding_the_estimate(fair) == [("below", "a", "avg"), ("above", "a", "avg"),
                                                               ("large_out", "a", "avg")]
    negative = {"m": {"a": {"avg": -100.0, "avg_ci": [-100.0 + 5e-8, 0.0], "worst": 0.0, "nsd": 0.0}}}
    assert analysis.intervals_excluding_the_estimate(negative) == []


def test_paired_seeds_keep_the_baselines_with_enough_common_seeds_and_say_why_not():
    groups = {"absld": {0: "a0", 1: "a1", 2: "a2"}, "rslad": {1: "r1", 0: "r0"}, "sat": {5: "s5"}, "ard": {2: "d2"}}
    pairs, skipped = analysis._paired_seeds(groups, "absld", minimum=2)
    assert pairs == {"rslad": [0, 1]}
    assert skipped == {"sat": "no seed in common with absld ([5] vs [0, 1, 2])",
                       "ard": "1 seed(s) in common with absld; a test over seeds needs 2"}
    pairs, skipped = analysis._paired_seeds(groups, "absld", minimum=1)
    assert pairs == {"rslad": [0, 1], "ard": [2]} and list(skipped) == ["sat"]


def test_seed_summaries_cover_methods_with_two_seeds_and_null_undefined_statistics():
    fair = {"absld/seed0": {"pgd": {"avg": 0.5, "worst": 0.2, "nsd": None}},
            "absld/seed1": {"pgd": {"avg": 0.7, "worst": 0.4, "nsd": 0.3}},
            "rslad/seed0": {"pgd": {"avg": 0.6, "worst": 0.1, "nsd": 0.3}}}
    groups = {"absld": {0: "absld/seed0", 1: "absld/seed1"}, "rslad": {0: "rslad/seed0"}}
    out = analysis.seed_summaries(fair, groups, 0.9)
    assert list(out) == ["absld"] and out["absld"]["pgd"]["nsd"] is None
    avg = out["absld"]["pgd"]["avg"]
    # mean 0.6, std (ddof 1) = sqrt(2 * 0.1^2) = 0.1414; 90 % t-interval with 1 df: 0.6 -+ 6.314 * 0.1414 / sqrt 2
    assert avg["mean"] == pytest.approx(0.6) and avg["std"] == pytest.approx(math.sqrt(0.02))
    assert avg["ci"] == pytest.approx([0.6 - 6.3138 * 0.1, 0.6 + 6.3138 * 0.1], abs=1e-4)
    assert out["absld"]["pgd"]["worst"]["mean"] == pytest.approx(0.3) and avg["n"] == 2


# --------------------------------------------------------------------------------------------------
# fairness.py: the tests the verdict reads
def _brute_sign_flip(d: list[float]) -> float:
    """#{e in {-1, 1}^n : |sum e d| >= |sum d|} / 2^n by itertools, with a float tolerance."""
    observed = abs(sum(d))
    sums = [abs(sum(e * v for e, v in zip(signs, d))) for signs in itertools.product((-1, 1), repeat=len(d))]
    return sum(s >= observed - 1e-9 for s in sums) / len(sums)


def test_sign_flip_test_enumerates_every_sign_vector():
    # +-1 +-2 +-3: |sum| >= 6 only for all + or all -: 2 / 8
    assert fairness.sign_flip_test([1.0, 2.0, 3.0]) == 0.25
    # four +1 and one -1: |sum of five +-1| >= 3 for 0, 1, 4 or 5 plus signs: (1 + 5 + 5 + 1) / 32
    assert fairness.sign_flip_test([1, 1, 1, 1, -1]) == 12 / 32
    for d in ([0.3, -0.1, 0.25, 0.05], [2.0, -1.0], [0.01, 0.02, 0.03, -0.04, 0.05, 0.06]):
        assert fairness.sign_flip_test(d) == pytest.approx(_brute_sign_flip(d), abs=1e-15)
    # 0.1 + 0.2 + 0.3 is 0.6000000000000001 summed one way, 0.6 another: the tie still counts
    assert fairness.sign_flip_test([0.1, 0.2, 0.3]) == 0.25
    assert fairness.sign_flip_test([0.0, 0.0, 0.0]) == 1.0
    assert fairness.sign_flip_test([0.1, 0.2, -0.3]) == 1.0  # a sum of 5.6e-17: zero up to rounding
    assert fairness.sign_flip_test([]) == 1.0
    assert fairness.sign_flip_test([5.0]) == 1.0  # one value: +-5 both as extreme


def test_sign_flip_test_draws_random_signs_beyond_max_exact():
    d = [1.0, 2.0, 3.0]
    assert fairness.sign_flip_test(d, max_exact=3) == 0.25  # n <= max_exact: exact
    p = fairness.sign_flip_test(d, max_exact=2, n_random=4000, seed=5)
    signs = np.random.default_rng(5).choice([-1.0, 1.0], size=(4000, 3))
    hits = np.count_nonzero(np.abs(signs @ np.asarray(d)) >= 6.0 - 1e-9)
    assert p == (1 + hits) / 4001 and p == pytest.approx(0.25, abs=0.03)
    assert fairness.sign_flip_test(d, max_exact=2, n_random=4000, seed=6) != p
    # the default budget is 2^16 draws
    default = fairness.sign_flip_test(d, max_exact=2)
    assert default * (1 + (1 << 16)) == pytest.approx(round(default * (1 + (1 << 16))), abs=1e-6)
    assert default == pytest.approx(0.25, abs=0.01)
    # 21 values > the default max_exact of 20: random, never below 1 / (1 + 2^16)
    many = fairness.sign_flip_test([1.0] * 21)
    assert 0 < many < 1e-3 and many * (1 + (1 << 16)) == pytest.approx(round(many * (1 + (1 << 16))), abs=1e-6)
    assert fairness.sign_flip_test([1.0] * 20) == 2 / 2 ** 20  # exact at 20


def test_sign_flip_floor_is_two_over_two_to_the_n():
    assert [fairness.sign_flip_floor(n) for n in (0, 1, 2, 3, 6)] == [1.0, 1.0, 0.5, 0.25, 2 / 64]
    assert isinstance(fairness.sign_flip_floor(3), float)


def test_paired_seed_test_is_the_paired_t_test_and_the_sign_flip_test_of_the_differences():
    ref, base = [0.52, 0.50, 0.55, 0.51], [0.47, 0.48, 0.46, 0.50]
    out = fairness.paired_seed_test(ref, base, confidence=0.9)
    d = np.subtract(ref, base)
    scipy_t = stats.ttest_rel(ref, base)
    assert out["n"] == 4 and out["diff"] == pytest.approx(d.mean()) and out["p"] == pytest.approx(scipy_t.pvalue)
    half = stats.t.ppf(0.95, 3) * d.std(ddof=1) / 2  # 90 %: t_{0.95, 3} s / sqrt(4)
    assert out["ci"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert out["p_sign"] == pytest.approx(_brute_sign_flip(d.tolist())) and out["p_sign_floor"] == 0.125
    assert out["agree"] is False
    assert set(out) == {"n", "diff", "ci", "p", "p_sign", "p_sign_floor", "agree"}
    # integers work as well as floats
    ints = fairness.paired_seed_test([3, 5, 4], [1, 1, 2])
    assert ints["diff"] == pytest.approx(8 / 3) and ints["p"] == pytest.approx(stats.ttest_rel([3, 5, 4], [1, 1, 2]).pvalue)


def test_paired_seed_test_of_agreeing_or_single_seeds_claims_no_t_test():
    agree = fairness.paired_seed_test([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])
    assert agree["agree"] is True and math.isnan(agree["p"]) and all(math.isnan(v) for v in agree["ci"])
    assert agree["diff"] == pytest.approx(0.1) and agree["p_sign"] == 0.25 and agree["p_sign_floor"] == 0.25
    zero = fairness.paired_seed_test([0.5, 0.6], [0.5, 0.6])
    assert zero["agree"] is True and zero["p_sign"] == 1.0 and math.isnan(zero["p"]) and zero["diff"] == 0.0
    one = fairness.paired_seed_test([0.5], [0.4])
    assert one["n"] == 1 and one["agree"] is False and one["p_sign_floor"] == 1.0
    assert math.isnan(one["p"]) and math.isnan(one["p_sign"]) and all(math.isnan(v) for v in one["ci"])
    assert one["diff"] == pytest.approx(0.1)
    for bad in (([0.5, 0.6], [0.5]), ([[0.5]], [[0.5]]), ([], [])):
        with pytest.raises(ValueError, match="one value per seed"):
            fairness.paired_seed_test(*bad)


def _brute_image_sign_flip(a: np.ndarray, b: np.ndarray) -> float:
    d = (a.astype(int) - b.astype(int)).sum(axis=0)
    observed = abs(d.sum())
    if observed == 0:
        return 1.0
    sums = [abs(np.dot(signs, np.abs(d))) for signs in itertools.product((-1, 1), repeat=len(d))]
    return sum(s >= observed for s in sums) / len(sums)


def test_image_sign_flip_test_equals_the_enumeration_of_every_images_sign():
    rng = np.random.default_rng(3)
    for seeds in (1, 2, 3):
        a = rng.random((seeds, 11)) < 0.6
        b = rng.random((seeds, 11)) < 0.4
        out = fairness.image_sign_flip_test(a, b)
        d = (a.astype(int) - b.astype(int)).sum(axis=0)
        assert out["p"] == pytest.approx(_brute_image_sign_flip(a, b), abs=1e-12)
        assert out["n01"] == int(np.sum(d < 0)) and out["n10"] == int(np.sum(d > 0))
        assert out["diff"] == pytest.approx(a.mean() - b.mean())
    # one seed: the exact McNemar test
    a, b = rng.random(40) < 0.7, rng.random(40) < 0.4
    assert fairness.image_sign_flip_test(a, b)["p"] == pytest.approx(fairness.mcnemar_exact(a, b)["p"])
    # D = (+2, +2, -1): T = 3; |+-2 +-2 +-1| >= 3 for (+, +, .), (-, -, .): 4 of 8
    a = np.array([[1, 1, 0], [1, 1, 0]], dtype=bool)
    b = np.array([[0, 0, 1], [0, 0, 0]], dtype=bool)
    out = fairness.image_sign_flip_test(a, b)
    assert out == {"p": pytest.approx(0.5), "n01": 1, "n10": 2, "diff": pytest.approx(3 / 6)}
    assert fairness.image_sign_flip_test(a, a) == {"p": 1.0, "n01": 0, "n10": 0, "diff": 0.0}


def test_image_sign_flip_test_on_many_images_takes_the_fft_path_with_the_same_law():
    # 3000 images at |D| = 1 then 1000 at |D| = 2: the second convolution has 6001 x 4001 > 4e6 terms
    ones, twos = 3000, 1000
    pos_ones, pos_twos = 1560, 520
    d = np.concatenate([np.repeat([1, -1], [pos_ones, ones - pos_ones]), np.repeat([2, -2], [pos_twos, twos - pos_twos])])
    a = np.stack([d >= 1, d == 2])  # two seeds: D = a0 + a1 - b0 - b1
    b = np.stack([d <= -1, d == -2])
    assert np.array_equal(a.sum(0).astype(int) - b.sum(0).astype(int), d)
    out = fairness.image_sign_flip_test(a, b)
    # the law of T: 2 B1 - 3000 + 2 (2 B2 - 1000), B1 ~ Bin(3000, 1/2), B2 ~ Bin(1000, 1/2), by direct sums
    k1, k2 = np.arange(ones + 1), np.arange(twos + 1)
    t = (2 * k1[:, None] - ones) + 2 * (2 * k2[None, :] - twos)
    prob = stats.binom.pmf(k1, ones, 0.5)[:, None] * stats.binom.pmf(k2, twos, 0.5)[None, :]
    observed = abs(int(d.sum()))  # 120 + 80
    assert out["p"] == pytest.approx(float(prob[np.abs(t) >= observed].sum()), rel=1e-6)
    assert 0.001 < out["p"] < 0.5 and out["n10"] == pos_ones + pos_twos


def _brute_permutation(a: np.ndarray, b: np.ndarray, y: np.ndarray, num_classes: int, statistic: str) -> tuple:
    """Every swap of the images' hit counts over the seeds enumerated (images, not (image, seed) pairs)."""
    ha, hb = a.sum(0).astype(float), b.sum(0).astype(float)
    n = np.bincount(y, minlength=num_classes) * a.shape[0]

    def stat(h):
        acc = np.bincount(y, weights=h, minlength=num_classes) / n
        return {"avg": h.sum() / n.sum(), "worst": acc.min(), "nsd": acc.std() / acc.mean()}[statistic]

    observed = stat(ha) - stat(hb)
    disc = np.flatnonzero(ha != hb)
    values = []
    for swap in itertools.product((False, True), repeat=disc.size):
        sa, sb = ha.copy(), hb.copy()
        idx = disc[list(swap)]
        sa[idx], sb[idx] = hb[idx], ha[idx]
        values.append(stat(sa) - stat(sb))
    values = np.asarray(values)
    eps = 1e-12
    p = min(1.0, 2 * min(np.mean(values <= observed + eps), np.mean(values >= observed - eps)))
    return p, observed


@pytest.mark.parametrize("statistic", ["avg", "worst", "nsd"])
def test_permutation_test_over_seeds_swaps_an_images_seeds_together(statistic):
    rng = np.random.default_rng(11)
    y = np.repeat(np.arange(3), 4)  # 12 images, 3 classes of 4
    a = rng.random((2, 12)) < np.repeat([0.95, 0.9, 0.9], 4)
    b = rng.random((2, 12)) < np.repeat([0.1, 0.5, 0.9], 4)
    p_brute, diff_brute = _brute_permutation(a, b, y, 3, statistic)
    out = fairness.paired_permutation_test(a, b, y, 3, statistic=statistic, n_resamples=1 << 14, seed=0)
    assert out["diff"] == pytest.approx(diff_brute) and out["p"] == pytest.approx(p_brute)
    assert p_brute < 1.0  # the brute force has something to find


def test_permutation_test_over_seeds_pools_the_class_accuracies_over_seeds():
    y = np.array([0, 0, 1, 1])
    a = np.array([[1, 1, 1, 0], [1, 0, 1, 1]], dtype=bool)  # class 0: 3/4, class 1: 3/4
    b = np.array([[0, 0, 1, 1], [1, 0, 1, 1]], dtype=bool)  # class 0: 1/4, class 1: 4/4
    out = fairness.paired_permutation_test(a, b, y, 2, statistic="worst", n_resamples=100, seed=0)
    assert out["diff"] == pytest.approx(0.75 - 0.25)
    avg = fairness.paired_permutation_test(a, b, y, 2, statistic="avg", n_resamples=100, seed=0)
    assert avg["diff"] == pytest.approx(6 / 8 - 5 / 8)
    # one image differs, in both seeds: one swap cannot be more extreme
    same = b.copy()
    same[:, 0] = True
    assert fairness.paired_permutation_test(same, b, y, 2, statistic="avg", n_resamples=100, seed=0) == {
        "p": 1.0, "diff": pytest.approx(1 / 8)}


def test_permutation_test_of_1d_and_one_row_2d_records_agree():
    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(4), 10)
    a, b = rng.random(40) < 0.7, rng.random(40) < 0.5
    for statistic in ("worst", "nsd"):
        flat = fairness.paired_permutation_test(a, b, y, 4, statistic=statistic, n_resamples=300, seed=2)
        rows = fairness.paired_permutation_test(a[None], b[None], y, 4, statistic=statistic, n_resamples=300, seed=2)
        assert flat == rows


def test_paired_inputs_over_seeds_are_checked():
    y = np.array([0, 1, 0, 1])
    a = np.ones((2, 4), dtype=bool)
    with pytest.raises(ValueError, match="one shape"):
        fairness.paired_permutation_test(a, a[:1], y, 2, statistic="avg", n_resamples=10, seed=0)
    with pytest.raises(ValueError, match="one shape"):
        fairness.image_sign_flip_test(a[0], a)
    with pytest.raises(ValueError, match="boolean"):
        fairness.image_sign_flip_test(a.astype(int), a)
    with pytest.raises(ValueError, match="no samples"):
        fairness.image_sign_flip_test(np.zeros((2, 0), dtype=bool), np.zeros((2, 0), dtype=bool))
    with pytest.raises(ValueError, match="1-D arrays"):
        fairness.mcnemar_exact(a, a)


def test_holm_in_the_given_order_with_ties_and_the_cap():
    # sorted 0.01, 0.02, 0.02, 0.04: 4 x 0.01, max(3 x 0.02), max(.., 2 x 0.02), max(.., 1 x 0.04)
    assert fairness.holm([0.02, 0.04, 0.01, 0.02]) == pytest.approx([0.06, 0.06, 0.04, 0.06])
    assert fairness.holm([0.5, 0.3]) == pytest.approx([0.6, 0.6])
    assert fairness.holm([0.9, 0.8, 0.7]) == [1.0, 1.0, 1.0]
    assert fairness.holm([0, 1]) == [0.0, 1.0] and fairness.holm([0.2]) == [0.2]
    for bad in ([[0.1]], [0.1, math.nan], [-0.1], [1.1]):
        with pytest.raises(ValueError):
            fairness.holm(bad)


def _mid_p_of_min(x, n, t, theta_of_class):
    """P(min_k X_k / n_k < t) + P(min = t) / 2 and P(min > t) + P(min = t) / 2, by enumerating every outcome."""
    grids = [np.arange(nk + 1) / nk for nk in n]
    pmfs = [stats.binom.pmf(np.arange(nk + 1), nk, theta_of_class[k]) for k, nk in enumerate(n)]
    joint = pmfs[0]
    mins = grids[0]
    for g, pmf in zip(grids[1:], pmfs[1:]):
        joint = np.multiply.outer(joint, pmf)
        mins = np.minimum.outer(mins, g)
    eq = np.abs(mins - t) < 1e-12
    below, above = joint[(mins < t) & ~eq].sum(), joint[(mins > t) & ~eq].sum()
    return below + joint[eq].sum() / 2, above + joint[eq].sum() / 2


def _bisect(f, lo, hi):
    """The theta in [lo, hi] where increasing-or-decreasing f changes sign (60 halvings)."""
    f_lo = f(lo) > 0
    for _ in range(60):
        mid = (lo + hi) / 2
        if (f(mid) > 0) == f_lo:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@pytest.mark.parametrize(("x", "n", "confidence"), [([7], [20], 0.95), ([7, 15], [20, 20], 0.95),
                                                   ([7, 12, 25], [20, 30, 30], 0.9), ([3, 3], [10, 10], 0.8)])
def test_the_worst_class_interval_is_the_mid_p_inversion_of_the_minimums_law(x, n, confidence):
    a = (1 - confidence) / 2
    est = np.asarray(x) / np.asarray(n)
    t = est.min()

    def high_f(theta):  # every class at max(theta, its estimate)
        return _mid_p_of_min(x, n, t, np.maximum(theta, est))[0] - a

    def low_f(theta):  # class j at theta, the others at max(theta, their estimates), the j giving most
        return max(_mid_p_of_min(x, n, t, np.where(np.arange(len(x)) == j, theta, np.maximum(theta, est)))[1]
                   for j in range(len(x))) - a

    high = _bisect(high_f, t, 1.0)
    low = _bisect(low_f, 0.0, t)
    got_low, got_high = fairness.worst_class_interval_counts(x, n, confidence)
    assert float(got_low) == pytest.approx(low, abs=1e-9) and float(got_high) == pytest.approx(high, abs=1e-9)
    assert got_low < t < got_high


def test_the_worst_class_interval_of_one_class_is_the_mid_p_binomial_interval():
    # x = 7 of 20: the mid-p limits solve P(X < 7) + P(X = 7) / 2 = 0.025 and P(X > 7) + P(X = 7) / 2 = 0.025
    def mid_upper(theta):
        return stats.binom.cdf(6, 20, theta) + stats.binom.pmf(7, 20, theta) / 2 - 0.025

    def mid_lower(theta):
        return stats.binom.sf(7, 20, theta) + stats.binom.pmf(7, 20, theta) / 2 - 0.025

    from scipy.optimize import brentq
    low, high = fairness.worst_class_interval_counts([7], [20])
    assert float(low) == pytest.approx(brentq(mid_lower, 1e-6, 0.35), abs=1e-9)
    assert float(high) == pytest.approx(brentq(mid_upper, 0.35, 1 - 1e-6), abs=1e-9)
    # at the edges: 0 of 20 has low 0, 20 of 20 has high 1
    assert float(fairness.worst_class_interval_counts([0], [20])[0]) == pytest.approx(0.0, abs=1e-9)
    assert float(fairness.worst_class_interval_counts([20], [20])[1]) == pytest.approx(1.0, abs=1e-9)


def test_the_worst_class_interval_broadcasts_over_leading_axes_and_checks_its_counts():
    counts = np.array([[7, 8], [3, 3], [10, 2]])
    low, high = fairness.worst_class_interval_counts(counts, [20, 10])
    assert low.shape == high.shape == (3,)
    for row, lo, hi in zip(counts, low, high):
        one = fairness.worst_class_interval_counts(row, [20, 10])
        assert (lo, hi) == (pytest.approx(float(one[0]), abs=1e-12), pytest.approx(float(one[1]), abs=1e-12))
    # fewer halvings: a coarser interval, still containing the estimate 7 / 20
    coarse = fairness.worst_class_interval_counts([7, 15], [20, 20], iterations=3)
    fine = fairness.worst_class_interval_counts([7, 15], [20, 20])
    assert abs(float(coarse[1]) - float(fine[1])) > 1e-6 and float(coarse[0]) <= 0.35 <= float(coarse[1])
    for x, n in (([1, 2], [3]), ([1], [0]), ([-1], [3]), ([4], [3])):
        with pytest.raises(ValueError, match="counts in"):
            fairness.worst_class_interval_counts(x, n)
    with pytest.raises(ValueError):
        fairness.worst_class_interval_counts([1], [3], confidence=1.0)
    # a wider confidence, a wider interval
    narrow = fairness.worst_class_interval_counts([7, 15], [20, 20], 0.5)
    assert fine[0] < narrow[0] < 0.35 < narrow[1] < fine[1]


def test_sign_flip_test_draws_with_seed_zero_by_default():
    d = [1.0, 2.0, 3.0]
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=(4000, 3))
    hits = np.count_nonzero(np.abs(signs @ np.asarray(d)) >= 6.0 - 1e-9)
    assert fairness.sign_flip_test(d, max_exact=2, n_random=4000) == (1 + hits) / 4001


# --------------------------------------------------------------------------------------------------
# analysis.py: what compare_to_reference and seed_comparisons return
def test_compare_to_reference_returns_its_settings_and_each_pairs_tests():
    rng = np.random.default_rng(9)
    y = np.repeat(np.arange(3), 10)
    runs = {"absld": [rng.random(30) < 0.7 for _ in range(2)], "rslad": [rng.random(30) < 0.5 for _ in range(2)],
            "sat": [rng.random(30) < 0.5]}
    records, groups = _records(runs, y)
    groups["ard"] = {7: "ard/seed7"}  # no seed in common: skipped before any record is read
    cfg = AnalyzeConfig(n_permutations=200, seed=3, nsd_ddof=1, confidence=0.9, baselines=["rslad", "sat", "ard"])
    out = analysis.compare_to_reference(records, groups, 3, cfg)
    assert {k: v for k, v in out.items() if k != "attacks"} == {
        "reference": "absld", "baselines": ["rslad", "sat"], "family": ["rslad", "sat", "ard"],
        "pooling": analysis.POOLING, "alpha": 0.1, "n_permutations": 200, "seed": 3, "ddof": 1,
        "skipped": {"ard": "no seed in common with absld ([7] vs [0, 1])"}}
    pair = out["attacks"]["pgd"]["rslad"]
    assert pair["seeds"] == [0, 1] and pair["n_pairs"] == 60
    direct = fairness.compare(np.stack(runs["absld"]), np.stack(runs["rslad"]), y, 3, n_resamples=200, seed=3, ddof=1)
    for stat in ("avg", "worst", "nsd"):
        assert {k: pair[stat][k] for k in direct[stat]} == direct[stat]
    assert pair["avg"]["test"] == "image_sign_flip_exact"
    one = out["attacks"]["pgd"]["sat"]
    assert one["seeds"] == [0] and one["n_pairs"] == 30 and one["avg"]["test"] == "mcnemar_exact"
    assert one["avg"]["p"] == fairness.mcnemar_exact(runs["absld"][0], runs["sat"][0])["p"]
    assert analysis.compare_to_reference(records, {"rslad": groups["rslad"]}, 3, cfg) is None


def test_seed_comparisons_leave_a_statistic_undefined_on_either_side_untested():
    fair = {f"{m}/seed{s}": {"pgd": {"avg": 0.5 + 0.01 * s + (0.05 if m == "absld" else 0),
                                       "worst": 0.2 + 0.02 * s * s, "nsd": None if (m, s) == (side, 1) else 0.3}}
            for side in ["absld"] for m in ("absld", "rslad") for s in range(3)}
    groups = {m: {s: f"{m}/seed{s}" for s in range(3)} for m in ("absld", "rslad")}
    cfg = AnalyzeConfig(baselines=["rslad", "sat"], confidence=0.9)
    out = analysis.seed_comparisons(fair, groups, cfg)
    nsd = out["attacks"]["pgd"]["rslad"]["nsd"]
    assert nsd["n"] == 3 and math.isnan(nsd["diff"]) and math.isnan(nsd["p"]) and math.isnan(nsd["p_sign"])
    assert math.isnan(nsd["p_holm"]) and math.isnan(nsd["p_sign_holm"]) and nsd["agree"] is False
    assert nsd["seeds"] == [0, 1, 2]
    # the baseline's side undefined: the same
    swapped = {k: v for k, v in fair.items()}
    swapped["absld/seed1"] = {"pgd": {**fair["absld/seed1"]["pgd"], "nsd": 0.3}}
    swapped["rslad/seed2"] = {"pgd": {**fair["rslad/seed2"]["pgd"], "nsd": None}}
    assert math.isnan(analysis.seed_comparisons(swapped, groups, cfg)["attacks"]["pgd"]["rslad"]["nsd"]["diff"])
    avg = out["attacks"]["pgd"]["rslad"]["avg"]  # +0.05 in every seed: they agree
    assert avg["agree"] is True and avg["diff"] == pytest.approx(0.05) and avg["p_sign"] == 0.25
    # Holm over the family of two, sat untrained at p = 1: the sign-flip p 0.25 -> 0.5
    assert avg["p_sign_holm"] == pytest.approx(0.5) and avg["exploratory"] is False
    assert {k: v for k, v in out.items() if k != "attacks"} == {
        "reference": "absld", "alpha": 0.1, "confidence": 0.9, "family": ["rslad", "sat"], "skipped": {}}
    assert analysis.seed_comparisons(fair, {"rslad": groups["rslad"]}, cfg) is None


def test_a_clause_below_one_point_keeps_its_direction():
    assert words._clause("worst", {"p_holm": 0.5, "diff": 0.005}, 0.05, "RSLAD").startswith(
        "worst-class accuracy is 0.50 points higher than RSLAD's")
    assert words._clause("worst", {"p_holm": 0.5, "diff": -0.005}, 0.05, "RSLAD").startswith(
        "worst-class accuracy is 0.50 points lower than RSLAD's")


def test_findings_markdown_labels_a_non_standard_autoattack_everywhere_and_two_seeds_are_several():
    text = words.findings_markdown(_comparisons([0]), n_samples=100, protocol={"aa": {"standard": False}})
    assert "\n**AA***\n" in text and "\n- Under AA*, ABSLD's Avg accuracy" in text
    assert "| AA* ΔAvg | AA* ΔWorst | AA* ΔNSD |" in text and "**AA**\n" not in text
    two = words.findings_markdown(_comparisons([0, 1]), n_samples=100)
    assert "(100 samples, seeds 0, 1 as seed-matched pairs): Avg by an exact per-image sign-flip test" in two
    assert "\nWith several seeds the p-values are conditional on the trained models" in two
