"""Specifications of absld.fairness: class-wise metrics and their statistics."""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import numpy as np
from scipy.optimize import brentq
import pytest

from absld import fairness

# Hand-made records: 3 classes with accuracies 1/2, 3/4 and 2/2 on 2 + 4 + 2 = 8 samples.
Y_SMALL = np.array([0, 0, 1, 1, 1, 1, 2, 2])
CORRECT_SMALL = np.array([True, False, True, True, True, False, True, True])


def balanced_records(class_acc: list[float], per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Records with *exactly* round(acc_k * per_class) correct samples in each class, shuffled."""
    y = np.repeat(np.arange(len(class_acc)), per_class)
    correct = np.zeros(y.size, dtype=bool)
    for k, acc in enumerate(class_acc):
        correct[k * per_class : k * per_class + round(acc * per_class)] = True
    order = rng.permutation(y.size)
    return correct[order], y[order]


def width(interval: list[float]) -> float:
    return interval[1] - interval[0]


# ---------------------------------------------------------------------------------------------- metrics


def test_class_accuracies_are_the_fraction_correct_within_each_class() -> None:
    np.testing.assert_allclose(fairness.class_accuracies(CORRECT_SMALL, Y_SMALL, 3), [1 / 2, 3 / 4, 1.0])


def test_summarize_matches_hand_computed_metrics_with_ddof_0() -> None:
    # avg = 6 correct / 8 = 0.75; worst = 1/2; mean_k acc_k = (0.5 + 0.75 + 1) / 3 = 0.75;
    # squared deviations 0.0625 + 0 + 0.0625 = 0.125; std = sqrt(0.125 / 3) = 0.20412415;
    # nsd = 0.20412415 / 0.75 = 0.27216553
    summary = fairness.summarize(CORRECT_SMALL, Y_SMALL, 3, ddof=0)
    assert summary["avg"] == pytest.approx(0.75)
    assert summary["worst"] == pytest.approx(0.5)
    assert summary["nsd"] == pytest.approx(math.sqrt(0.125 / 3) / 0.75)
    assert summary["nsd"] == pytest.approx(0.2721655269759087)
    assert summary["class_acc"] == pytest.approx([0.5, 0.75, 1.0])
    assert summary["n"] == 8 and summary["ddof"] == 0


def test_nsd_with_ddof_1_divides_by_c_minus_1() -> None:
    # std = sqrt(0.125 / (3 - 1)) = 0.25; nsd = 0.25 / 0.75 = 1/3
    assert fairness.summarize(CORRECT_SMALL, Y_SMALL, 3, ddof=1)["nsd"] == pytest.approx(1 / 3)
    assert fairness.nsd([0.5, 0.75, 1.0], ddof=1) == pytest.approx(1 / 3)


def test_nsd_is_zero_when_all_classes_are_equally_accurate() -> None:
    assert fairness.nsd([0.4, 0.4, 0.4]) == 0.0


def test_nsd_is_nan_without_warning_when_every_class_accuracy_is_zero() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(fairness.nsd([0.0, 0.0, 0.0]))
        assert math.isnan(fairness.summarize(np.zeros(8, dtype=bool), Y_SMALL, 3)["nsd"])


def test_nsd_is_nan_when_ddof_leaves_no_degrees_of_freedom() -> None:
    assert math.isnan(fairness.nsd([0.7], ddof=1))


def test_avg_equals_mean_class_accuracy_on_a_balanced_set() -> None:
    correct, y = balanced_records([0.2, 0.5, 0.9], per_class=10, rng=np.random.default_rng(0))
    summary = fairness.summarize(correct, y, 3)
    assert summary["avg"] == pytest.approx(np.mean(summary["class_acc"]))


def test_avg_is_overall_accuracy_not_mean_class_accuracy_on_an_unbalanced_set() -> None:
    # class 0: 1 of 4 correct (0.25); class 1: 1 of 1 correct (1.0)
    # avg = 2 / 5 = 0.4, while the mean of class accuracies is (0.25 + 1) / 2 = 0.625
    y = np.array([0, 0, 0, 0, 1])
    correct = np.array([True, False, False, False, True])
    summary = fairness.summarize(correct, y, 2)
    assert summary["avg"] == pytest.approx(0.4)
    assert np.mean(summary["class_acc"]) == pytest.approx(0.625)


# -------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_the_point_estimates() -> None:
    correct, y = balanced_records([0.3, 0.5, 0.6, 0.8], per_class=50, rng=np.random.default_rng(1))
    result = fairness.summarize_with_ci(correct, y, 4, n_resamples=500, seed=0)
    for name, point, (low, high) in [
        ("avg", result["avg"], result["avg_ci"]),
        ("worst", result["worst"], result["worst_ci"]),
        ("nsd", result["nsd"], result["nsd_ci"]),
    ]:
        assert low <= point <= high, name
        assert low < high, name


def test_bootstrap_ci_narrows_with_ten_times_the_samples_at_the_same_class_accuracies() -> None:
    class_acc = [0.3 + 0.05 * k for k in range(10)]
    small = balanced_records(class_acc, per_class=40, rng=np.random.default_rng(2))
    large = balanced_records(class_acc, per_class=400, rng=np.random.default_rng(2))
    ci_small = fairness.bootstrap_ci(*small, 10, n_resamples=1000, seed=0)
    ci_large = fairness.bootstrap_ci(*large, 10, n_resamples=1000, seed=0)
    for key in ("avg_ci", "worst_ci", "nsd_ci"):
        assert width(ci_large[key]) < 0.6 * width(ci_small[key]), key  # expected ratio 1/sqrt(10) ~ 0.32


def test_bootstrap_is_deterministic_given_the_seed() -> None:
    correct, y = balanced_records([0.3, 0.5, 0.7], per_class=30, rng=np.random.default_rng(3))
    first = fairness.bootstrap_ci(correct, y, 3, n_resamples=300, seed=7)
    again = fairness.bootstrap_ci(correct, y, 3, n_resamples=300, seed=7)
    other = fairness.bootstrap_ci(correct, y, 3, n_resamples=300, seed=8)
    assert first == again
    assert first != other


@pytest.mark.parametrize("method", ["percentile", "basic", "BCa"])
def test_bootstrap_of_classes_all_wrong_or_all_right_gives_point_intervals_without_warnings(
    method: fairness.BootstrapMethod,
) -> None:
    y = np.repeat(np.arange(3), 5)
    correct = np.array([False] * 5 + [True] * 5 + [True, False, True, False, True])  # acc 0, 1, 3/5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = fairness.bootstrap_ci(correct, y, 3, n_resamples=200, seed=0, method=method)
        all_right = fairness.bootstrap_ci(np.ones(15, dtype=bool), y, 3, n_resamples=200, seed=0, method=method)
    # 0 of 5 right is not a worst class of exactly 0: the bootstrap's [0, 0] overclaimed. The inversion's
    # upper end solves (1 - P(all classes >= 1 right)) / 2 = 0.025 (mid-p; t = 0 so nothing is below t),
    # class 0 at theta, class 1 at 1 (always right), class 2 at max(theta, 0.6)
    upper = brentq(lambda th: 0.5 * (1 - (1 - (1 - th) ** 5) * (1 - (1 - max(th, 0.6)) ** 5)) - 0.025, 1e-9, 1 - 1e-9)
    assert result["worst_ci"] == pytest.approx([0.0, upper], abs=1e-9)
    assert all_right["avg_ci"] == [1.0, 1.0] and all_right["nsd_ci"] == [0.0, 0.0]
    # 5 of 5 in every class: the lower end solves (P(min > 1) + P(min = 1)) / 2 = theta^5 / 2 = 0.025
    # (the other classes at 1: always 5 of 5)
    assert all_right["worst_ci"] == pytest.approx([0.05 ** (1 / 5), 1.0], abs=1e-9)


def test_bootstrap_holds_single_sample_classes_fixed() -> None:
    # scipy needs >= 2 observations per resampled sample; a one-sample class cannot vary anyway
    result = fairness.bootstrap_ci(np.array([True, False, True]), np.array([0, 1, 2]), 3, n_resamples=100, seed=0)
    assert result["avg_ci"] == pytest.approx([2 / 3, 2 / 3])
    # class 1 is 0 of 1: (1 - P(X1 >= 1) * 1 * 1) / 2 = (1 - theta) / 2 = 0.025 at the upper end
    assert result["worst_ci"] == pytest.approx([0.0, 0.95], abs=1e-9)


def test_summarize_with_ci_is_one_entry_of_the_fairness_json_contract() -> None:
    result = fairness.summarize_with_ci(CORRECT_SMALL, Y_SMALL, 3, n_resamples=100, seed=0)
    assert {"avg", "worst", "nsd", "class_acc", "avg_ci", "worst_ci", "nsd_ci"} <= set(result)
    assert all(0.0 <= v <= 1.0 for v in [result["avg"], result["worst"], *result["class_acc"]])
    assert all(len(result[key]) == 2 for key in ("avg_ci", "worst_ci", "nsd_ci"))


# ----------------------------------------------------------------------------------------- seed summary


def test_seed_summary_gives_mean_sample_std_and_student_t_interval() -> None:
    # mean = 0.6; std = sqrt((0.01 + 0 + 0.01) / (3 - 1)) = 0.1;
    # half-width = t_{0.975, 2} * 0.1 / sqrt(3) = 4.302652729749464 * 0.0577350269 = 0.2484137712
    summary = fairness.seed_summary([0.5, 0.6, 0.7])
    assert summary["mean"] == pytest.approx(0.6)
    assert summary["std"] == pytest.approx(0.1)
    assert summary["n"] == 3
    assert summary["ci"] == pytest.approx([0.6 - 0.2484137712, 0.6 + 0.2484137712], rel=1e-9)


def test_seed_summary_of_one_seed_has_nan_spread() -> None:
    summary = fairness.seed_summary([0.42])
    assert summary["mean"] == 0.42 and summary["n"] == 1
    assert math.isnan(summary["std"]) and all(math.isnan(v) for v in summary["ci"])


# --------------------------------------------------------------------------------------- paired tests


def clearly_better_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1000 samples, 10 classes; A's worst class (0) is at 20 %, B fixes 60 % of A's errors there."""
    rng = np.random.default_rng(4)
    class_acc = [0.2] + [0.5 + 0.04 * k for k in range(9)]
    correct_a, y = balanced_records(class_acc, per_class=100, rng=rng)
    correct_b = correct_a.copy()
    errors_class_0 = np.flatnonzero((y == 0) & ~correct_a)  # 80 errors
    correct_b[rng.choice(errors_class_0, size=48, replace=False)] = True
    return correct_a, correct_b, y


def test_mcnemar_counts_discordant_pairs_by_hand() -> None:
    a = np.array([True, True, False, False, True])
    b = np.array([True, False, True, True, True])
    result = fairness.mcnemar_exact(a, b)
    # n01 (A wrong, B right) = 2, n10 (A right, B wrong) = 1; p = binomial two-sided(1 of 3) = 1
    assert (result["n01"], result["n10"]) == (2, 1)
    assert result["diff"] == pytest.approx(3 / 5 - 4 / 5)
    assert result["p"] == pytest.approx(1.0)


def test_mcnemar_of_identical_models_has_p_exactly_1() -> None:
    correct_a, _, _ = clearly_better_pair()
    assert fairness.mcnemar_exact(correct_a, correct_a)["p"] == 1.0


def test_mcnemar_detects_a_clearly_better_model() -> None:
    correct_a, correct_b, _ = clearly_better_pair()
    result = fairness.mcnemar_exact(correct_a, correct_b)
    assert result["p"] < 0.01
    assert result["diff"] == pytest.approx(-0.048)


@pytest.mark.parametrize("statistic", ["worst", "nsd", "avg"])
def test_permutation_test_of_identical_models_has_large_p(statistic: fairness.Statistic) -> None:
    correct_a, _, y = clearly_better_pair()
    result = fairness.paired_permutation_test(correct_a, correct_a, y, 10, statistic=statistic, n_resamples=999, seed=0)
    assert result["p"] > 0.5
    assert result["diff"] == 0.0


@pytest.mark.parametrize("statistic", ["worst", "nsd"])
def test_permutation_test_detects_a_clearly_fairer_model(statistic: fairness.Statistic) -> None:
    correct_a, correct_b, y = clearly_better_pair()
    result = fairness.paired_permutation_test(correct_a, correct_b, y, 10, statistic=statistic, n_resamples=999, seed=0)
    assert result["p"] < 0.01
    if statistic == "worst":
        assert result["diff"] == pytest.approx(0.2 - 0.5)  # B's worst class becomes class 1, at 0.5
    else:
        assert result["diff"] > 0  # A is less fair


def test_permutation_test_equals_brute_force_enumeration_of_all_swaps() -> None:
    # 12 samples: all 2^12 swap patterns are enumerated by hand; scipy's test is exact here too
    rng = np.random.default_rng(5)
    y = np.arange(12) % 3
    correct_a = rng.random(12) < 0.4
    correct_b = rng.random(12) < 0.7
    observed = fairness.summarize(correct_a, y, 3)["worst"] - fairness.summarize(correct_b, y, 3)["worst"]
    null = []
    for swap in itertools.product([False, True], repeat=12):
        swap_arr = np.array(swap)
        a_star = np.where(swap_arr, correct_b, correct_a)
        b_star = np.where(swap_arr, correct_a, correct_b)
        null.append(fairness.summarize(a_star, y, 3)["worst"] - fairness.summarize(b_star, y, 3)["worst"])
    null_arr = np.array(null)
    tol = 1e-12
    expected = min(1.0, 2 * min(np.mean(null_arr <= observed + tol), np.mean(null_arr >= observed - tol)))
    result = fairness.paired_permutation_test(correct_a, correct_b, y, 3, statistic="worst", n_resamples=10_000, seed=0)
    assert result["diff"] == pytest.approx(observed)
    assert result["p"] == pytest.approx(expected)


def test_permutation_test_is_deterministic_given_the_seed() -> None:
    correct_a, correct_b, y = clearly_better_pair()
    correct_b = correct_b ^ (np.random.default_rng(6).random(y.size) < 0.1)  # make it noisy
    runs = [
        fairness.paired_permutation_test(correct_a, correct_b, y, 10, statistic="nsd", n_resamples=200, seed=3)
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_compare_bundles_mcnemar_on_avg_and_permutation_tests_on_worst_and_nsd() -> None:
    correct_a, correct_b, y = clearly_better_pair()
    result = fairness.compare(correct_a, correct_b, y, 10, n_resamples=199, seed=0, ddof=0)
    assert result["avg"] == {"test": "mcnemar_exact", **fairness.mcnemar_exact(correct_a, correct_b)}
    assert result["worst"]["test"] == result["nsd"]["test"] == "paired_permutation"
    assert result["worst"]["diff"] == pytest.approx(-0.3)


# ------------------------------------------------------------------------------------------------- holm


def test_holm_matches_hand_computed_adjustment_in_input_order() -> None:
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 -> 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    assert fairness.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_holm_is_monotone_never_below_raw_and_capped_at_1() -> None:
    raw = np.random.default_rng(7).random(20)
    adjusted = np.array(fairness.holm(raw.tolist()))
    order = np.argsort(raw)
    assert np.all(np.diff(adjusted[order]) >= 0)
    assert np.all(adjusted >= raw) and np.all(adjusted <= 1.0)
    assert fairness.holm([0.5, 0.6]) == [1.0, 1.0]


def test_holm_of_an_empty_family_is_empty() -> None:
    assert fairness.holm([]) == []


# ----------------------------------------------------------------------------------------------- errors


def test_a_class_without_samples_is_an_error_naming_the_class() -> None:
    with pytest.raises(ValueError, match=r"class 3 has no samples"):
        fairness.summarize(CORRECT_SMALL, Y_SMALL, 4)


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        fairness.class_accuracies(CORRECT_SMALL[:-1], Y_SMALL, 3)
    with pytest.raises(ValueError, match="length mismatch"):
        fairness.mcnemar_exact(CORRECT_SMALL, CORRECT_SMALL[:-1])


def test_non_boolean_correct_is_an_error() -> None:
    with pytest.raises(ValueError, match="boolean"):
        fairness.summarize(CORRECT_SMALL.astype(int), Y_SMALL, 3)


def test_label_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"label 3 out of range"):
        fairness.summarize(CORRECT_SMALL, np.where(Y_SMALL == 2, 3, Y_SMALL), 3)
    with pytest.raises(ValueError, match=r"label -1 out of range"):
        fairness.summarize(CORRECT_SMALL, Y_SMALL - 1, 3)


def test_unknown_statistic_or_bootstrap_method_is_an_error() -> None:
    typo: Any = "mean"
    with pytest.raises(ValueError, match="statistic must be one of"):
        fairness.paired_permutation_test(
            CORRECT_SMALL, CORRECT_SMALL, Y_SMALL, 3, statistic=typo, n_resamples=10, seed=0
        )
    lowercase_bca: Any = "bca"
    with pytest.raises(ValueError, match="method must be one of"):
        fairness.bootstrap_ci(CORRECT_SMALL, Y_SMALL, 3, n_resamples=10, seed=0, method=lowercase_bca)


def test_paired_seed_test_is_scipys_paired_t_test_on_the_per_seed_differences() -> None:
    from scipy import stats

    ref, other = [0.50, 0.55, 0.53, 0.58], [0.48, 0.50, 0.52, 0.51]
    out = fairness.paired_seed_test(ref, other, confidence=0.9)
    d = np.subtract(ref, other)
    assert out["n"] == 4 and out["diff"] == pytest.approx(d.mean())
    assert out["p"] == pytest.approx(stats.ttest_rel(ref, other).pvalue)
    half = stats.t.ppf(0.95, 3) * d.std(ddof=1) / 2
    assert out["ci"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert out["p_sign"] == 2 / 16  # the signs of d: + + + +, only all-plus and all-minus are as extreme
    assert out["p_sign_floor"] == 2 / 16 and not out["agree"]
    same = fairness.paired_seed_test([0.5, 0.6], [0.4, 0.5])  # identical differences: spread unknown
    assert math.isnan(same["p"]) and same["agree"] and same["p_sign"] == 0.5
    assert math.isnan(fairness.paired_seed_test([0.5], [0.4])["p"])
    with pytest.raises(ValueError, match="one value per seed"):
        fairness.paired_seed_test([0.5, 0.6], [0.4])


# --------------------------------------------------------------------------------------------------
# every input check says what is wrong, with the bad value
_Y = np.array([0, 1, 2, 0, 1, 2])
_C = np.array([True, False, True, True, True, False])


@pytest.mark.parametrize(("call", "message"), [
    (lambda: fairness.summarize(_C[None], _Y, 3), "correct must be a 1-D boolean array (one entry per sample), got shape (1, 6)"),
    (lambda: fairness.summarize(_C.astype(int), _Y, 3), "correct must be a boolean array, got dtype int64; if it holds 0/1, pass correct.astype(bool)"),
    (lambda: fairness.summarize(_C, _Y, 0), "num_classes must be a positive integer, got 0"),
    (lambda: fairness.summarize(_C, _Y, True), "num_classes must be a positive integer, got True"),
    (lambda: fairness.summarize(_C, _Y, 3.0), "num_classes must be a positive integer, got 3.0"),
    (lambda: fairness.summarize(_C, _Y, 3, ddof=-1), "ddof must be a non-negative integer (0 or 1), got -1"),
    (lambda: fairness.summarize(_C, _Y, 3, ddof=0.5), "ddof must be a non-negative integer (0 or 1), got 0.5"),
    (lambda: fairness.summarize(_C, _Y, 3, ddof=True), "ddof must be a non-negative integer (0 or 1), got True"),
    (lambda: fairness.summarize(_C, _Y[None], 3), "y must be a 1-D integer array of labels, got shape (1, 6)"),
    (lambda: fairness.summarize(_C, _Y.astype(float), 3), "y must hold integer class labels, got dtype float64"),
    (lambda: fairness.summarize(_C[:0], _Y[:0], 3), "no samples: correct and y are empty"),
    (lambda: fairness.summarize(_C, _Y - 1, 3), "label -1 out of range: labels must lie in [0, 2] (num_classes=3)"),
    (lambda: fairness.summarize(_C, _Y, 2), "label 2 out of range: labels must lie in [0, 1] (num_classes=2)"),
    (lambda: fairness.summarize(_C, _Y, 14), "class 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, ... has no samples in y (num_classes=14)"),
    (lambda: fairness.summarize(_C, _Y, 13), "class 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 has no samples in y (num_classes=13)"),
    (lambda: fairness.bootstrap_ci(_C, _Y, 3, n_resamples=0, seed=0), "n_resamples must be a positive integer, got 0"),
    (lambda: fairness.bootstrap_ci(_C, _Y, 3, n_resamples=True, seed=0), "n_resamples must be a positive integer, got True"),
    (lambda: fairness.bootstrap_ci(_C, _Y, 3, n_resamples=1.5, seed=0), "n_resamples must be a positive integer, got 1.5"),
    (lambda: fairness.bootstrap_ci(_C, _Y, 3, n_resamples=5, seed=0, confidence=1.0), "confidence must lie strictly between 0 and 1, got 1.0"),
    (lambda: fairness.bootstrap_ci(_C, _Y, 3, n_resamples=5, seed=0, confidence=0.0), "confidence must lie strictly between 0 and 1, got 0.0"),
    (lambda: fairness.bootstrap_ci(_C, _Y, 3, n_resamples=5, seed=0, confidence=1.5), "confidence must lie strictly between 0 and 1, got 1.5"),
    (lambda: fairness.mcnemar_exact(_C, _C[:3]), "length mismatch: correct_a has 6 samples but correct_b has 3; paired tests need both models evaluated on the same samples"),
    (lambda: fairness.mcnemar_exact(_C[:0], _C[:0]), "no samples: correct_a and correct_b are empty"),
    (lambda: fairness.mcnemar_exact(_C.astype(int), _C), "correct_a must be a boolean array"),
    (lambda: fairness.mcnemar_exact(_C, _C[None]), "paired tests over seeds need (seeds, samples) arrays of one shape, got (6,) and (1, 6)"),
    (lambda: fairness.mcnemar_exact(_C[None], _C[None]), "mcnemar_exact compares one evaluation of each model"),
    (lambda: fairness.holm([[0.1]]), "pvalues must be a 1-D sequence, got shape (1, 1)"),
    (lambda: fairness.holm([0.1, 1.5]), "p-values must lie in [0, 1] (no NaN), got [0.1, 1.5]"),
    (lambda: fairness.holm([-0.1]), "p-values must lie in [0, 1] (no NaN), got [-0.1]"),
    (lambda: fairness.seed_summary([]), "values must be a non-empty 1-D sequence (one value per seed), got shape (0,)"),
    (lambda: fairness.seed_summary([0.1, float("nan")]), "values must be finite, got [0.1, nan]"),
    (lambda: fairness.nsd([]), "class_acc must be a non-empty 1-D array of class accuracies, got shape (0,)"),
])
def test_input_checks_name_the_problem_and_the_value(call, message: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value)


@pytest.mark.parametrize("n", [1, 3])
def test_small_inputs_at_the_edges_of_the_checks_are_accepted(n: int) -> None:
    """One sample, one class, one resample, confidence just inside (0, 1): legal inputs."""
    y = np.zeros(n, dtype=np.int64)
    assert fairness.summarize(np.ones(n, dtype=bool), y, 1)["avg"] == 1.0
    two = np.arange(2 * n) % 2
    assert fairness.bootstrap_ci(two == 0, two, 2, n_resamples=2, seed=0, confidence=0.999)["avg_ci"] == [0.5, 0.5]
    assert fairness.mcnemar_exact(np.ones(1, dtype=bool), np.zeros(1, dtype=bool))["n10"] == 1
    assert fairness.paired_permutation_test(np.ones(n, dtype=bool), np.ones(n, dtype=bool), y, 1,
                                            statistic="avg", n_resamples=1, seed=0)["p"] == 1.0


def test_permutation_test_of_avg_reports_the_difference_of_overall_accuracies() -> None:
    y = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    a = np.array([1, 1, 1, 0, 1, 0, 0, 0], dtype=bool)  # class 2: no sample right for both models
    b = np.array([1, 0, 0, 0, 0, 1, 0, 0], dtype=bool)
    out = fairness.paired_permutation_test(a, b, y, 3, statistic="avg", n_resamples=200, seed=0)
    assert out["diff"] == pytest.approx(a.mean() - b.mean())  # 4/8 - 2/8
    worst = fairness.paired_permutation_test(a, b, y, 3, statistic="worst", n_resamples=200, seed=0)
    assert worst["diff"] == pytest.approx(0.25 - 0.0)  # class 2: 1/4 vs 1/4; class 1: 1/2 vs 0


def test_the_default_nsd_ddof_is_zero_everywhere() -> None:
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(3), 20)
    a, b = rng.random(60) < 0.7, rng.random(60) < 0.5
    default = fairness.bootstrap_ci(a, y, 3, n_resamples=100, seed=0)
    assert default == fairness.bootstrap_ci(a, y, 3, n_resamples=100, seed=0, ddof=0)
    assert default != fairness.bootstrap_ci(a, y, 3, n_resamples=100, seed=0, ddof=1)
    perm = fairness.paired_permutation_test(a, b, y, 3, statistic="nsd", n_resamples=100, seed=0)
    assert perm == fairness.paired_permutation_test(a, b, y, 3, statistic="nsd", n_resamples=100, seed=0, ddof=0)
    assert perm["diff"] != fairness.paired_permutation_test(a, b, y, 3, statistic="nsd", n_resamples=100, seed=0,
                                                            ddof=1)["diff"]
    summary = fairness.summarize(a, y, 3)
    assert summary["nsd"] == fairness.summarize(a, y, 3, ddof=0)["nsd"] != fairness.summarize(a, y, 3, ddof=1)["nsd"]
    assert fairness.nsd(summary["class_acc"]) == summary["nsd"]


def test_a_class_of_two_samples_is_resampled() -> None:
    y = np.array([0, 0, 1, 1, 1, 1])
    correct = np.array([True, False, True, True, True, True])
    ci = fairness.bootstrap_ci(correct, y, 2, n_resamples=200, seed=0)
    # Worst = class 0's 1 of 2 (class 1 is 4 of 4, certain at its estimate): mid-p bounds of one
    # binomial, P(X0 >= 1) / 2 + P(X0 > 1) / 2 = theta = 0.025 and 1 - theta = 0.025
    assert ci["worst_ci"] == pytest.approx([0.025, 0.975], abs=1e-9)
    assert ci["avg_ci"][0] < ci["avg_ci"][1]  # class 0 resampled


def test_summarize_with_ci_is_summarize_plus_bootstrap_with_the_same_arguments() -> None:
    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(3), 15)
    correct = rng.random(45) < 0.6
    kwargs = dict(n_resamples=150, seed=7, ddof=1, confidence=0.8, method="basic")
    entry = fairness.summarize_with_ci(correct, y, 3, **kwargs)
    expected = {**fairness.summarize(correct, y, 3, 1), **fairness.bootstrap_ci(correct, y, 3, **kwargs)}
    assert {k: entry[k] for k in expected} == expected
    assert entry["n"] == 45 and entry["ddof"] == 1
    default = fairness.summarize_with_ci(correct, y, 3, n_resamples=150, seed=7)
    assert default["ddof"] == 0 and default["nsd"] == fairness.summarize(correct, y, 3, 0)["nsd"]


def test_seed_summary_of_equal_values_is_a_point_with_its_count() -> None:
    assert fairness.seed_summary([0.4, 0.4, 0.4]) == {"mean": pytest.approx(0.4), "std": 0.0,
                                                      "ci": [pytest.approx(0.4)] * 2, "n": 3}


def test_paired_seed_test_of_equal_differences_gives_no_t_test_p_and_the_sign_flip_floor() -> None:
    """A constant shift over seeds is not 'p = 0': its spread is unknown (issue: a one-image
    difference in each of two seeds was called significant at p < 0.001)."""
    same = fairness.paired_seed_test([0.3, 0.5, 0.7], [0.3, 0.5, 0.7])
    assert math.isnan(same["p"]) and same["p_sign"] == 1.0 and same["agree"]
    shift = fairness.paired_seed_test([0.31, 0.51, 0.71], [0.3, 0.5, 0.7])
    assert math.isnan(shift["p"]) and all(math.isnan(v) for v in shift["ci"]) and shift["agree"]
    assert shift["diff"] == pytest.approx(0.01) and shift["p_sign"] == 0.25 == shift["p_sign_floor"]
    with pytest.raises(ValueError, match="need one value per seed for both methods"):
        fairness.paired_seed_test([[0.1, 0.2]], [[0.1, 0.2]])


def test_mcnemar_p_is_the_exact_binomial_test_on_the_discordant_pairs() -> None:
    from scipy import stats

    a = np.array([1, 1, 1, 1, 1, 0, 0, 1, 1, 0], dtype=bool)
    b = np.array([0, 0, 0, 0, 1, 1, 0, 1, 0, 0], dtype=bool)  # n10 = 5, n01 = 1
    out = fairness.mcnemar_exact(a, b)
    assert (out["n10"], out["n01"]) == (5, 1)
    assert out["p"] == pytest.approx(stats.binomtest(5, 6, 0.5).pvalue)
    assert fairness.mcnemar_exact(a, a)["p"] == 1.0


def test_holm_accepts_p_values_of_exactly_zero_and_one_and_rejects_nan() -> None:
    assert fairness.holm([0.0, 1.0]) == [0.0, 1.0]
    with pytest.raises(ValueError, match=r"p-values must lie in \[0, 1\] \(no NaN\)"):
        fairness.holm([0.2, float("nan")])


def test_nsd_degrees_of_freedom_at_the_edges() -> None:
    assert fairness.nsd([0.5]) == 0.0  # one class, ddof 0: no spread
    assert math.isnan(fairness.nsd([0.5], ddof=1))  # one class, ddof 1: undefined
    assert fairness.nsd([0.2, 0.6], ddof=1) == pytest.approx(np.std([0.2, 0.6], ddof=1) / 0.4)


def test_class_accuracies_count_a_last_class_that_is_never_right() -> None:
    y = np.array([0, 1, 2, 2])
    assert fairness.class_accuracies(np.array([True, True, False, False]), y, 3).tolist() == [1.0, 1.0, 0.0]


def test_compare_passes_seed_and_ddof_to_each_test() -> None:
    rng = np.random.default_rng(6)
    y = np.repeat(np.arange(3), 20)
    a, b = rng.random(60) < 0.7, rng.random(60) < 0.5
    out = fairness.compare(a, b, y, 3, n_resamples=64, seed=11, ddof=1)
    for stat in ("worst", "nsd"):
        expected = fairness.paired_permutation_test(a, b, y, 3, statistic=stat, n_resamples=64, seed=11, ddof=1)
        assert out[stat]["p"] == expected["p"] and out[stat]["diff"] == expected["diff"]
    assert fairness.compare(a, b, y, 3, n_resamples=64, seed=11)["nsd"]["diff"] == pytest.approx(
        fairness.paired_permutation_test(a, b, y, 3, statistic="nsd", n_resamples=64, seed=11, ddof=0)["diff"])


def test_nsd_is_nan_when_ddof_reaches_the_class_count_even_with_spread() -> None:
    # C - ddof <= 0 leaves no degrees of freedom: NaN, not the inf of a division by zero
    assert math.isnan(fairness.nsd([0.2, 0.6], ddof=2))
    assert math.isnan(fairness.nsd([0.2, 0.6], ddof=3))


def test_vectorised_nsd_of_the_bootstrap_agrees_with_nsd_row_by_row() -> None:
    # the bootstrap and the permutation test compute NSD on (..., C) stacks of class accuracies
    stack = np.array([[[0.2, 0.6, 0.4], [0.9, 0.1, 0.5]], [[0.5, 0.5, 0.5], [1.0, 0.8, 0.3]]])  # (2, 2, 3)
    for ddof in (0, 1):
        expected = [[fairness.nsd(row, ddof=ddof) for row in block] for block in stack]
        np.testing.assert_allclose(fairness._nsd_last_axis(stack, ddof), expected, rtol=1e-12)


def test_bootstrap_uses_the_confidence_method_and_resample_count_it_is_given() -> None:
    correct, y = balanced_records([0.3, 0.6, 0.8], per_class=30, rng=np.random.default_rng(0))
    run = lambda **kw: fairness.bootstrap_ci(correct, y, 3, seed=0, **{"n_resamples": 400, **kw})  # noqa: E731
    narrow, wide = run(confidence=0.5), run(confidence=0.99)
    for name in ("avg_ci", "worst_ci", "nsd_ci"):
        assert wide[name][0] < narrow[name][0] and narrow[name][1] < wide[name][1]
    assert run(method="basic") != run(method="percentile")


def test_bootstrap_draws_the_number_of_resamples_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = []
    bootstrap = fairness.stats.bootstrap

    def spy(*args: Any, **kwargs: Any) -> Any:
        result = bootstrap(*args, **kwargs)
        drawn.append(result.bootstrap_distribution.shape)  # (3 statistics, resamples)
        return result

    monkeypatch.setattr(fairness.stats, "bootstrap", spy)
    correct, y = balanced_records([0.3, 0.6, 0.8], per_class=30, rng=np.random.default_rng(0))
    fairness.bootstrap_ci(correct, y, 3, n_resamples=40, seed=0)
    assert drawn == [(3, 40)]


def test_permutation_test_with_one_two_or_undefined_discordant_samples() -> None:
    y = np.array([0, 0, 1, 1, 1, 1])
    b = np.array([True, True, False, True, True, False])
    a = b.copy()
    a[2] = True  # A and B differ on sample 2 only: no swap is more extreme, p = 1
    result = fairness.paired_permutation_test(a, b, y, 2, statistic="worst", n_resamples=99, seed=0)
    assert result == {"p": 1.0, "diff": pytest.approx(0.25)}
    a[5] = True  # ... and on sample 5, both for A: of the 4 swaps, T and -T are as extreme, p = 1/2
    result = fairness.paired_permutation_test(a, b, y, 2, statistic="avg", n_resamples=99, seed=0)
    assert result["p"] == pytest.approx(0.5) and result["diff"] == pytest.approx(2 / 6)
    # NSD of a model that is never right is undefined: so are T and p
    never = np.zeros(6, dtype=bool)
    result = fairness.paired_permutation_test(never, b, y, 2, statistic="nsd", n_resamples=99, seed=0)
    assert set(result) == {"p", "diff"} and math.isnan(result["p"]) and math.isnan(result["diff"])


def test_permutation_test_uses_the_resample_count_it_is_given() -> None:
    # 12 discordant samples: 4,096 swaps, enumerated exactly for 5,000 resamples, drawn for 50
    y = np.repeat([0, 1], 12)
    a = np.ones(24, dtype=bool)
    b = a.copy()
    b[[0, 1, 2, 3, 4, 5, 6, 12, 13, 14, 15, 16]] = False
    p = [fairness.paired_permutation_test(a, b, y, 2, statistic="worst", n_resamples=n, seed=0)["p"]
         for n in (50, 5000)]
    assert p[0] != p[1]
