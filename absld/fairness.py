"""Class-wise robust-fairness metrics and their statistics (docs/method.md §6).

Everything here is a function of *per-sample correctness*: a boolean vector ``correct`` (N,) telling
whether the model classified test sample ``i`` correctly under one attack, and the labels ``y`` (N,).
Those are exactly the arrays of ``results/eval/<model>/records.npz``.

With ``n_k = #{i : y_i = k}`` and ``acc_k = (1 / n_k) * sum_{i : y_i = k} correct_i`` (k = 0..C-1):

- **Avg**   = (1 / N) * sum_i correct_i  (overall accuracy; equals mean_k acc_k on a balanced test set)
- **Worst** = min_k acc_k
- **NSD**   = std_k(acc_k; ddof) / mean_k(acc_k), with
  std_k(acc_k; ddof) = sqrt( sum_k (acc_k - mean_k acc_k)^2 / (C - ddof) ).
  The paper does not state the ddof: ddof = 0 is the headline, and it is a parameter everywhere.

Statistics, all from ``scipy.stats`` except Holm's correction (which scipy lacks):

- ``bootstrap_ci``: stratified bootstrap (test samples resampled within each class, class sizes fixed)
  of Avg and NSD, via ``scipy.stats.bootstrap`` with one sample per class; Worst's interval is
  ``worst_class_interval`` (the bootstrap of a minimum under-covers when classes are close).
- ``worst_class_interval``: inversion of the exact (mid-p) binomial law of the smallest class accuracy.
- ``seed_summary``: mean, std (ddof 1) and Student-t interval over training seeds.
- ``paired_seed_test``: paired t-test over seeds, with the exact sign-flip p beside it.
- ``mcnemar_exact``: exact McNemar test of two models' Avg on the same samples (``binomtest``); with
  several seeds ``image_sign_flip_test``, its exact generalisation that keeps an image's seeds together.
- ``paired_permutation_test``: paired permutation test of Worst, NSD or Avg (``permutation_test``);
  with several seeds an image's outcomes in every seed are swapped together.
- ``holm``: Holm-Bonferroni adjusted p-values for a family of tests.

Conventions: accuracies are fractions in [0, 1]; every result is made of plain Python floats, ints
and lists (JSON-ready); NaN marks a value that is mathematically undefined (never a crash):
NSD when every class accuracy is 0 (0 / 0) or when C - ddof <= 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal, TypedDict

import numpy as np
import numpy.typing as npt
from scipy import signal, stats

Statistic = Literal["avg", "worst", "nsd"]
BootstrapMethod = Literal["percentile", "basic", "BCa"]

STATISTICS: tuple[Statistic, ...] = ("avg", "worst", "nsd")
BOOTSTRAP_METHODS: tuple[BootstrapMethod, ...] = ("percentile", "basic", "BCa")


class Summary(TypedDict):
    """Point estimates for one (model, attack): the first half of the fairness.json entry."""

    avg: float
    worst: float
    nsd: float
    class_acc: list[float]
    n: int
    ddof: int


class FairnessEntry(TypedDict):
    """One (model, attack) cell of ``results/fairness.json`` (contract): fractions in [0, 1]."""

    avg: float
    worst: float
    nsd: float
    class_acc: list[float]
    avg_ci: list[float]
    worst_ci: list[float]
    nsd_ci: list[float]


class SummaryWithCI(FairnessEntry):
    """A :class:`FairnessEntry` plus how it was computed: ``n`` and ``ddof``."""

    n: int
    ddof: int


class SeedSummary(TypedDict):
    mean: float
    std: float
    ci: list[float]
    n: int


class McNemarResult(TypedDict):
    p: float
    n01: int
    n10: int
    diff: float


class PermutationResult(TypedDict):
    p: float
    diff: float


class McNemarComparison(McNemarResult):
    test: Literal["mcnemar_exact", "image_sign_flip_exact"]


class PermutationComparison(PermutationResult):
    test: Literal["paired_permutation"]


class Comparison(TypedDict):
    """Model A against model B under one attack; every ``diff`` is stat(A) - stat(B)."""

    avg: McNemarComparison
    worst: PermutationComparison
    nsd: PermutationComparison


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------


def _check_correct(correct: npt.ArrayLike, name: str = "correct") -> npt.NDArray[np.bool_]:
    arr = np.asarray(correct)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D boolean array (one entry per sample), got shape {arr.shape}")
    if arr.dtype != np.bool_:
        raise ValueError(
            f"{name} must be a boolean array, got dtype {arr.dtype}; if it holds 0/1, pass {name}.astype(bool)"
        )
    return arr


def _check_int(value: int, name: str, minimum: int, allowed: str) -> int:
    """``value`` as an int when it is an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def _check_num_classes(num_classes: int) -> int:
    return _check_int(num_classes, "num_classes", 1, "a positive integer")


def _check_ddof(ddof: int) -> int:
    return _check_int(ddof, "ddof", 0, "a non-negative integer (0 or 1)")


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    return float(confidence)


def _check_n_resamples(n_resamples: int) -> int:
    return _check_int(n_resamples, "n_resamples", 1, "a positive integer")


def _check_records(
    correct: npt.ArrayLike, y: npt.ArrayLike, num_classes: int
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Validate (correct, y, num_classes); return them with the class sizes n_k (C,).

    Raises ValueError for a non-boolean ``correct``, non-integer or out-of-range labels, mismatched
    lengths, no samples at all, and any class without samples (Worst and NSD would be undefined).
    """
    correct_arr = _check_correct(correct)  # (N,)
    num_classes = _check_num_classes(num_classes)
    y_arr = np.asarray(y)
    if y_arr.ndim != 1:
        raise ValueError(f"y must be a 1-D integer array of labels, got shape {y_arr.shape}")
    if not np.issubdtype(y_arr.dtype, np.integer):
        raise ValueError(f"y must hold integer class labels, got dtype {y_arr.dtype}")
    if correct_arr.shape[0] != y_arr.shape[0]:
        raise ValueError(f"length mismatch: correct has {correct_arr.shape[0]} samples but y has {y_arr.shape[0]}")
    if y_arr.shape[0] == 0:
        raise ValueError("no samples: correct and y are empty")
    y_min, y_max = int(y_arr.min()), int(y_arr.max())
    if y_min < 0 or y_max >= num_classes:
        bad = y_min if y_min < 0 else y_max
        raise ValueError(
            f"label {bad} out of range: labels must lie in [0, {num_classes - 1}] (num_classes={num_classes})"
        )
    y_arr = y_arr.astype(np.int64, copy=False)
    class_n = np.bincount(y_arr, minlength=num_classes)  # (C,)
    empty = np.flatnonzero(class_n == 0)
    if empty.size:
        listed = ", ".join(str(k) for k in empty[:10]) + (", ..." if empty.size > 10 else "")
        raise ValueError(
            f"class {listed} has no samples in y (num_classes={num_classes}): class accuracy, Worst and NSD "
            f"are undefined; evaluate on more samples or check num_classes"
        )
    return correct_arr, y_arr, class_n


def _check_paired(
    correct_a: npt.ArrayLike, correct_b: npt.ArrayLike
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Both models' outcomes as (S, N) boolean arrays: S seeds (1 for a 1-D input) of the same N samples."""
    a, b = np.asarray(correct_a), np.asarray(correct_b)
    if a.ndim == 2 or b.ndim == 2:
        if a.shape != b.shape or a.ndim != 2:
            raise ValueError(f"paired tests over seeds need (seeds, samples) arrays of one shape, got {a.shape} "
                             f"and {b.shape}")
        a = np.stack([_check_correct(row, "correct_a") for row in a]) if a.shape[0] else a
        b = np.stack([_check_correct(row, "correct_b") for row in b]) if b.shape[0] else b
    else:
        a, b = _check_correct(a, "correct_a")[None], _check_correct(b, "correct_b")[None]
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"length mismatch: correct_a has {a.shape[1]} samples but correct_b has {b.shape[1]}; "
            f"paired tests need both models evaluated on the same samples"
        )
    if a.size == 0:
        raise ValueError("no samples: correct_a and correct_b are empty")
    return a, b


def _batch_size(n_resamples: int, n_samples: int, max_elements: int = 1 << 22) -> int:
    """Resamples per vectorised call, so that one batch holds at most ``max_elements`` values."""
    return max(1, min(n_resamples, max_elements // max(n_samples, 1)))


# --------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------


def _nsd_last_axis(class_acc: npt.NDArray[np.floating], ddof: int) -> npt.NDArray[np.float64]:
    """NSD along the last axis of ``class_acc`` (..., C) -> (...); NaN where undefined, no warnings."""
    acc = np.asarray(class_acc, dtype=np.float64)
    num_classes = acc.shape[-1]
    mean = acc.mean(axis=-1)  # (...)
    if num_classes - ddof <= 0:
        return np.full(mean.shape, np.nan)
    # std is shift-invariant: centre on the first class first, so equal accuracies give exactly 0
    shifted = acc - acc[..., :1]  # (..., C)
    deviations = shifted - shifted.mean(axis=-1, keepdims=True)  # (..., C)
    std = np.sqrt((deviations**2).sum(axis=-1) / (num_classes - ddof))  # (...)
    safe_mean = np.where(mean > 0, mean, 1.0)
    return np.where(mean > 0, std / safe_mean, np.nan)


def class_accuracies(
    correct: npt.NDArray[np.bool_], y: npt.NDArray[np.integer], num_classes: int
) -> npt.NDArray[np.float64]:
    """Class-wise accuracies acc_k = (1 / n_k) * sum_{i : y_i = k} correct_i, shape (C,).

    ``correct`` (N,) bool, ``y`` (N,) int in [0, num_classes). Raises ValueError naming any class
    without samples.
    """
    correct_arr, y_arr, class_n = _check_records(correct, y, num_classes)
    class_correct = np.bincount(y_arr, weights=correct_arr, minlength=num_classes)  # (C,)
    return class_correct / class_n


def nsd(class_acc: npt.ArrayLike, ddof: int = 0) -> float:
    """Normalised standard deviation NSD = std_k(acc_k; ddof) / mean_k(acc_k) (lower is fairer).

    std_k(acc_k; ddof) = sqrt( sum_k (acc_k - mean)^2 / (C - ddof) ). Returns NaN, without a warning,
    when it is undefined: every class accuracy is 0 (0 / 0: no model is "unfair" at zero accuracy,
    nor fair, so no number is honest) or C - ddof <= 0 (e.g. one class with ddof = 1).
    """
    ddof = _check_ddof(ddof)
    acc = np.asarray(class_acc, dtype=np.float64)
    if acc.ndim != 1 or acc.shape[0] == 0:
        raise ValueError(f"class_acc must be a non-empty 1-D array of class accuracies, got shape {acc.shape}")
    return float(_nsd_last_axis(acc, ddof))


def summarize(correct: npt.NDArray[np.bool_], y: npt.NDArray[np.integer], num_classes: int, ddof: int = 0) -> Summary:
    """Avg, Worst, NSD and the class accuracies of one model under one attack.

    ``avg`` is the overall accuracy (1 / N) sum_i correct_i, *not* the mean of class accuracies
    (the two agree only on a balanced test set); ``worst`` = min_k acc_k; ``nsd`` as in :func:`nsd`.
    """
    ddof = _check_ddof(ddof)
    class_acc = class_accuracies(correct, y, num_classes)  # (C,)
    correct_arr = np.asarray(correct)
    return {
        "avg": float(correct_arr.mean()),
        "worst": float(class_acc.min()),
        "nsd": nsd(class_acc, ddof),
        "class_acc": [float(a) for a in class_acc],
        "n": int(correct_arr.shape[0]),
        "ddof": ddof,
    }


# --------------------------------------------------------------------------------------------------
# stratified bootstrap
# --------------------------------------------------------------------------------------------------


def _point_statistics(
    class_acc: npt.NDArray[np.float64], weights: npt.NDArray[np.float64], ddof: int
) -> npt.NDArray[np.float64]:
    """(avg, worst, nsd) of fixed class accuracies (C,) with class weights n_k / N (C,)."""
    return np.array([class_acc @ weights, class_acc.min(), float(_nsd_last_axis(class_acc, ddof))])


def bootstrap_ci(
    correct: npt.NDArray[np.bool_],
    y: npt.NDArray[np.integer],
    num_classes: int,
    *,
    n_resamples: int,
    seed: int,
    ddof: int = 0,
    confidence: float = 0.95,
    method: BootstrapMethod = "percentile",
) -> dict[str, list[float]]:
    """Stratified bootstrap confidence intervals of Avg and NSD, and Worst's :func:`worst_class_interval`.

    Each resample draws n_k test samples with replacement *within* each class k (class sizes stay
    fixed, as in the test set), recomputes acc_k* and then Avg* = sum_k n_k acc_k* / N, Worst* and
    NSD*. This is ``scipy.stats.bootstrap`` with one sample per class and ``paired=False`` (each
    class resampled independently); all three statistics share the same resamples.

    ``method`` is scipy's ("percentile", "basic" or "BCa"). Degenerate cases do not crash: a
    statistic whose bootstrap distribution is constant (e.g. Worst when a class is never correct)
    gets the interval [value, value] under every method (scipy's BCa would return NaN with a
    DegenerateDataWarning); any other undefined bound stays NaN, with a RuntimeWarning. Classes with
    a single sample are constant under resampling and are held fixed. The NSD interval is NaN when
    NSD is undefined (every class at accuracy 0) on some resample: likely only on tiny test sets.
    Deterministic given ``seed`` (``rng=numpy.random.default_rng(seed)``).

    ``worst_ci`` is not the bootstrap's (a minimum's bootstrap under-covers on near-tied classes: 71 %
    at 50 images per class) but :func:`worst_class_interval_counts` at ``confidence``; ``method``,
    ``n_resamples`` and ``seed`` do not change it.

    Returns ``{"avg_ci": [lo, hi], "worst_ci": [lo, hi], "nsd_ci": [lo, hi]}``.
    """
    correct_arr, y_arr, class_n = _check_records(correct, y, num_classes)
    ddof = _check_ddof(ddof)
    n_resamples = _check_n_resamples(n_resamples)
    confidence = _check_confidence(confidence)
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"method must be one of {BOOTSTRAP_METHODS}, got {method!r}")

    order = np.argsort(y_arr, kind="stable")
    per_class = np.split(correct_arr[order].astype(np.float64), np.cumsum(class_n)[:-1])  # C arrays (n_k,)
    class_acc = np.array([c.mean() for c in per_class])  # (C,)
    weights = class_n / class_n.sum()  # (C,) Avg = sum_k w_k acc_k
    resampled = np.flatnonzero(class_n >= 2)  # scipy needs >= 2 observations per sample

    def statistics(*samples: npt.NDArray[np.float64], axis: int = -1) -> npt.NDArray[np.float64]:
        # samples[j]: (..., n_k) for class k = resampled[j]; returns (3, ...) = (avg, worst, nsd)
        acc_resampled = np.stack([s.mean(axis=axis) for s in samples], axis=-1)  # (..., C_resampled)
        acc = np.broadcast_to(class_acc, (*acc_resampled.shape[:-1], num_classes)).copy()  # (..., C)
        acc[..., resampled] = acc_resampled
        return np.stack([acc @ weights, acc.min(axis=-1), _nsd_last_axis(acc, ddof)])

    point = _point_statistics(class_acc, weights, ddof)  # (3,)
    if resampled.size == 0:  # every class has one sample: nothing varies
        low, high = point.copy(), point.copy()
    else:
        # scipy's BCa warns (and divides 0 by 0) on a constant statistic; handled just below
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            result = stats.bootstrap(
                tuple(per_class[k] for k in resampled),
                statistics,
                n_resamples=n_resamples,
                vectorized=True,
                paired=False,
                axis=-1,
                confidence_level=confidence,
                method=method,
                batch=_batch_size(n_resamples, int(class_n[resampled].sum())),
                rng=np.random.default_rng(seed),
            )
        low = np.array(result.confidence_interval.low, dtype=np.float64)  # (3,)
        high = np.array(result.confidence_interval.high, dtype=np.float64)  # (3,)
        distribution = result.bootstrap_distribution  # (3, n_resamples)
        constant = np.all(distribution == point[:, None], axis=-1)  # (3,)
        low[constant] = point[constant]
        high[constant] = point[constant]
        undefined = (np.isnan(low) | np.isnan(high)) & np.all(np.isfinite(distribution), axis=-1)  # (3,)
        undefined[1] = False  # Worst's interval is the inversion's, below
        for i in np.flatnonzero(undefined):
            warnings.warn(
                f"the {method} interval of {STATISTICS[i]} is undefined on these records (degenerate jackknife "
                f"or bias correction); method='percentile' gives one",
                RuntimeWarning,
                stacklevel=2,
            )
    class_correct = np.bincount(y_arr, weights=correct_arr, minlength=num_classes)  # (C,)
    worst_low, worst_high = worst_class_interval_counts(class_correct, class_n, confidence)
    low[1], high[1] = float(worst_low), float(worst_high)
    return {f"{name}_ci": [float(low[i]), float(high[i])] for i, name in enumerate(STATISTICS)}


WORST_INTERVAL = ("Worst's interval inverts the exact (mid-p) binomial law of the smallest class accuracy, the other "
                  "classes at their estimates (absld.fairness.worst_class_interval); the bootstrap of a minimum "
                  "under-covers when classes are close")
"""How Worst's interval is made, in words for captions."""


def _binomial_tails(t: npt.NDArray[np.float64], n: npt.NDArray[np.float64], p: npt.NDArray[np.float64]
                    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``(P(X >= tn), P(X > tn))`` for X ~ Binomial(n, p), elementwise (broadcast)."""
    c = t * n
    return stats.binom.sf(np.ceil(c - 1e-9) - 1, n, p), stats.binom.sf(np.floor(c + 1e-9), n, p)


def _exclusive_product(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``out[..., j] = prod_{k != j} values[..., k]`` without dividing (values may be 0)."""
    ones = np.ones_like(values[..., :1])
    before = np.cumprod(np.concatenate([ones, values[..., :-1]], axis=-1), axis=-1)
    after = np.cumprod(np.concatenate([ones, values[..., :0:-1]], axis=-1), axis=-1)[..., ::-1]
    return before * after


def worst_class_interval_counts(class_correct: npt.ArrayLike, class_n: npt.ArrayLike, confidence: float = 0.95,
                                iterations: int = 40) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Confidence interval of Worst = min_k p_k from the class counts: ``class_correct`` (..., C) hits
    of ``class_n`` (C,) images each; returns ``(low, high)`` of shape (...).

    With t = min_k x_k / n_k the observed Worst and a = (1 - confidence) / 2, the interval is the set
    of theta not rejected by two one-sided tests of min_k p_k = theta on the exact binomial law of t,
    the classes other than the worst at their estimates p^_k (mid-p: the observed value counts one half):

    - high = the largest theta with P(min_k X_k / n_k < t) + P(min = t) / 2 >= a, every class at
      max(theta, p^_k);
    - low = the smallest theta with P(min > t) + P(min = t) / 2 >= a, where the law of the minimum is
      that of class j at theta and every other class k at max(theta, p^_k), for the j that makes it
      largest.

    Unlike the percentile bootstrap (whose distribution of a minimum sits below the estimate, itself
    biased down when classes are close) it keeps the law of a minimum over near-tied classes: its
    coverage, simulated in tests/test_statistical_validity.py, is within 2 points of nominal at 100
    and 1,000 images per class and 95.7-97.2 % (conservative) at 50, on CIFAR-10-like, tied and
    well-separated class accuracies; the percentile interval covers 0.7 % on ten tied classes. The interval always contains t. Bisection, ``iterations``
    halvings (40: 1e-12).
    """
    confidence = _check_confidence(confidence)
    x = np.asarray(class_correct, dtype=np.float64)  # (..., C)
    n = np.asarray(class_n, dtype=np.float64)  # (C,)
    if x.shape[-1:] != n.shape or np.any(n < 1) or np.any(x < 0) or np.any(x > n):
        raise ValueError(f"class_correct (..., C) must hold counts in [0, class_n] for class_n (C,) >= 1, got shapes "
                         f"{x.shape} and {n.shape}")
    a = (1.0 - confidence) / 2
    estimate = x / n  # (..., C)
    t = estimate.min(axis=-1, keepdims=True)  # (..., 1)

    low_hi, high_lo = t[..., 0].copy(), t[..., 0].copy()
    low_lo, high_hi = np.zeros_like(low_hi), np.ones_like(high_lo)
    for _ in range(iterations):
        # mid-p: P(min < t) + P(min = t) / 2 = 1 - (P(min >= t) + P(min > t)) / 2
        theta = ((high_lo + high_hi) / 2)[..., None]  # (..., 1)
        at_least, above = _binomial_tails(t, n, np.maximum(theta, estimate))  # (..., C)
        p_high = 1.0 - 0.5 * (np.prod(at_least, axis=-1) + np.prod(above, axis=-1))
        keep = p_high >= a
        high_lo, high_hi = np.where(keep, theta[..., 0], high_lo), np.where(keep, high_hi, theta[..., 0])

        # mid-p: P(min > t) + P(min = t) / 2, class j at theta and the others at their estimates
        theta = ((low_lo + low_hi) / 2)[..., None]
        at_least, above = _binomial_tails(t, n, np.maximum(theta, estimate))  # (..., C)
        own_at_least, own_above = _binomial_tails(t, n, np.broadcast_to(theta, estimate.shape))
        p_low = (0.5 * (own_at_least * _exclusive_product(at_least) + own_above * _exclusive_product(above))).max(axis=-1)
        keep = p_low >= a
        low_lo, low_hi = np.where(keep, low_lo, theta[..., 0]), np.where(keep, theta[..., 0], low_hi)
    return low_hi, high_lo


def worst_class_interval(correct: npt.NDArray[np.bool_], y: npt.NDArray[np.integer], num_classes: int,
                         confidence: float = 0.95) -> list[float]:
    """``[low, high]``: :func:`worst_class_interval_counts` of one model's records."""
    correct_arr, y_arr, class_n = _check_records(correct, y, num_classes)
    class_correct = np.bincount(y_arr, weights=correct_arr, minlength=num_classes)
    low, high = worst_class_interval_counts(class_correct, class_n, confidence)
    return [float(low), float(high)]


def summarize_with_ci(correct: npt.NDArray[np.bool_], y: npt.NDArray[np.integer], num_classes: int, *,
                      ddof: int = 0, **bootstrap: Any) -> SummaryWithCI:
    """One (model, attack) entry of ``results/fairness.json``: :func:`summarize` + :func:`bootstrap_ci`.

    ``bootstrap``: the keyword arguments of :func:`bootstrap_ci` (``n_resamples`` and ``seed``,
    required; ``confidence``, ``method``). Keys: ``avg, worst, nsd, class_acc, avg_ci, worst_ci,
    nsd_ci`` (the contract) and ``n, ddof``.
    """
    summary = summarize(correct, y, num_classes, ddof)
    cis = bootstrap_ci(correct, y, num_classes, ddof=ddof, **bootstrap)
    return {
        "avg": summary["avg"],
        "worst": summary["worst"],
        "nsd": summary["nsd"],
        "class_acc": summary["class_acc"],
        "avg_ci": cis["avg_ci"],
        "worst_ci": cis["worst_ci"],
        "nsd_ci": cis["nsd_ci"],
        "n": summary["n"],
        "ddof": summary["ddof"],
    }


# --------------------------------------------------------------------------------------------------
# across training seeds
# --------------------------------------------------------------------------------------------------


def seed_summary(values: Sequence[float], confidence: float = 0.95) -> SeedSummary:
    """Mean, std and Student-t confidence interval of one metric over n training seeds.

    mean = (1/n) sum_s v_s;  std = sqrt( sum_s (v_s - mean)^2 / (n - 1) )  (ddof = 1);
    ci = mean -/+ t_{(1 + confidence)/2, n-1} * std / sqrt(n)  (``scipy.stats.t.interval``).
    With n = 1 the spread is unknown: std = NaN and ci = [NaN, NaN]. With all values equal (n >= 2;
    std 0 up to rounding) std is 0 and the interval [mean, mean].
    """
    confidence = _check_confidence(confidence)
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence (one value per seed), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"values must be finite, got {arr.tolist()}")
    n = int(arr.shape[0])
    mean = float(arr.mean())
    if n == 1:
        return {"mean": mean, "std": math.nan, "ci": [math.nan, math.nan], "n": 1}
    std = float(arr.std(ddof=1))
    if std <= 1e-12 * max(abs(mean), 1e-12):  # equal values: [0.4] * 3 has a std of 7e-17 in floats
        return {"mean": mean, "std": 0.0, "ci": [mean, mean], "n": n}
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n))
    return {"mean": mean, "std": std, "ci": [float(low), float(high)], "n": n}


class SeedPairedTest(TypedDict):
    """Paired tests over training seeds of one statistic: reference minus baseline, per seed."""

    n: int  # seeds in common
    diff: float  # mean over seeds of stat(reference, s) - stat(baseline, s)
    ci: list[float]  # Student-t interval of that mean difference (NaN when the spread is unknown)
    p: float  # two-sided paired t-test (NaN with one seed or when every seed's difference is the same)
    p_sign: float  # exact two-sided sign-flip (permutation over seeds) test; needs no normality
    p_sign_floor: float  # the smallest p_sign n seeds can give: 2 / 2^n (0.25 at n = 3)
    agree: bool  # every seed's difference is the same: the spread over seeds is unknown, not zero


def sign_flip_floor(n: int) -> float:
    """The smallest two-sided p of an exact sign-flip test over ``n`` paired values: 2 / 2^n (1 at n <= 1)."""
    return 1.0 if n <= 1 else float(2.0 ** (1 - n))


def sign_flip_test(d: Sequence[float], max_exact: int = 20, n_random: int = 1 << 16, seed: int = 0) -> float:
    """Exact two-sided sign-flip test of H0: the paired differences ``d`` are symmetric about 0.

    p = #{signs e in {-1, 1}^n : |sum_s e_s d_s| >= |sum_s d_s|} / 2^n, every sign vector enumerated
    for n <= ``max_exact`` (else ``n_random`` random ones, p = (1 + hits) / (1 + n_random)). Never
    below :func:`sign_flip_floor`; p = 1 when every d is 0."""
    arr = np.asarray(d, dtype=np.float64)
    n = arr.shape[0]
    observed = abs(arr.sum())
    tol = 1e-12 * max(1.0, float(np.abs(arr).sum()))
    if n == 0 or observed <= tol:
        return 1.0
    if n <= max_exact:
        signs = 1.0 - 2.0 * ((np.arange(1 << n)[:, None] >> np.arange(n)) & 1)  # (2^n, n)
        return float(np.mean(np.abs(signs @ arr) >= observed - tol))
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_random, n))
    return float((1 + np.count_nonzero(np.abs(signs @ arr) >= observed - tol)) / (1 + n_random))


def paired_seed_test(reference: Sequence[float], baseline: Sequence[float],
                     confidence: float = 0.95) -> SeedPairedTest:
    """Paired tests over seeds: ``d_s = reference_s - baseline_s`` for the seeds both methods were
    trained with (same seed: same initialisation, batch order and attacks' randomness).

    - t-test: t = mean(d) / (std(d, ddof 1) / sqrt(n)), n - 1 degrees of freedom, and the Student-t
      interval of mean(d). It assumes the d_s are normal: at n = 2-5 nothing can check that.
    - :func:`sign_flip_test`: exact under symmetry alone, but it cannot go below 2 / 2^n (0.5, 0.25,
      0.125, 0.0625 at n = 2..5): below 6 seeds it can never reject at 0.05.

    When every d_s is the same (``agree``) the spread over training runs is unknown, not zero: the
    t-test's p and interval are NaN (a zero-spread t statistic is infinite, which tells nothing), and
    the sign-flip p is its floor. This is the test of *training* variation the per-sample tests
    cannot give (they hold the trained models fixed). With one seed every p is NaN."""
    ref, other = np.asarray(reference, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if ref.shape != other.shape or ref.ndim != 1 or ref.shape[0] == 0:
        raise ValueError(f"need one value per seed for both methods, got shapes {ref.shape} and {other.shape}")
    d = ref - other
    summary = seed_summary(d.tolist(), confidence)
    n = int(d.shape[0])
    std, mean = summary["std"], summary["mean"]
    agree = n >= 2 and std == 0.0  # seed_summary rounds a 1e-17 spread to 0
    if n < 2 or agree:
        p, ci = math.nan, [math.nan, math.nan]
    else:  # scipy.stats.ttest_rel, without its precision warning on nearly equal differences
        p = float(2.0 * stats.t.sf(abs(mean) / (std / math.sqrt(n)), n - 1))
        ci = list(summary["ci"])
    p_sign = math.nan if n < 2 else sign_flip_test(d)
    return {"n": n, "diff": mean, "ci": ci, "p": p, "p_sign": p_sign, "p_sign_floor": sign_flip_floor(n),
            "agree": bool(agree)}


# --------------------------------------------------------------------------------------------------
# paired tests of two models on the same samples
# --------------------------------------------------------------------------------------------------


def mcnemar_exact(correct_a: npt.NDArray[np.bool_], correct_b: npt.NDArray[np.bool_]) -> McNemarResult:
    """Exact McNemar test of H0: models A and B have the same accuracy on these samples.

    n01 = #{i : A wrong, B right}, n10 = #{i : A right, B wrong} (the discordant pairs); under H0,
    n10 ~ Binomial(n01 + n10, 1/2), and p is the two-sided ``scipy.stats.binomtest`` p-value
    (p = 1 when there are no discordant pairs). diff = acc_A - acc_B = (n10 - n01) / N.
    """
    if np.asarray(correct_a).ndim != 1:
        raise ValueError("mcnemar_exact compares one evaluation of each model (1-D arrays); with several seeds use "
                         "image_sign_flip_test, which keeps an image's seeds together")
    a, b = (arr[0] for arr in _check_paired(correct_a, correct_b))
    n01 = int(np.count_nonzero(~a & b))
    n10 = int(np.count_nonzero(a & ~b))
    p = 1.0 if n01 + n10 == 0 else float(stats.binomtest(n10, n01 + n10, 0.5, alternative="two-sided").pvalue)
    return {"p": min(p, 1.0), "n01": n01, "n10": n10, "diff": float(a.mean() - b.mean())}


def image_sign_flip_test(correct_a: npt.NDArray[np.bool_], correct_b: npt.NDArray[np.bool_]) -> McNemarResult:
    """Exact test of H0: models A and B are exchangeable on every image, over S seeds of each.

    ``correct_a``, ``correct_b``: (S, N) outcomes of seed-matched models on the same N images (or
    (N,): one seed). Per image D_i = sum_s (a_si - b_si) in [-S, S]; T = sum_i D_i. Under H0 the two
    methods' outcomes on image i may be swapped *together in every seed* (an image that is hard for
    a method stays hard in all its seeds, so swapping (image, seed) pairs one by one, as if 
    independent, is anti-conservative: 12-19 % rejections at 5 % in a simulated null), which flips
    the sign of D_i. The null law of T is that of sum_i e_i |D_i|, e_i = +-1 fair coins, computed
    exactly by convolution; p = P(|T*| >= |T|). With S = 1 this is the exact McNemar test.
    ``n01`` / ``n10``: images on which B / A was right more often; ``diff`` = acc_A - acc_B.
    """
    a, b = _check_paired(correct_a, correct_b)
    per_image = a.sum(axis=0).astype(np.int64) - b.sum(axis=0).astype(np.int64)  # (N,) D_i
    magnitude = np.abs(per_image)
    pmf = np.ones(1)  # law of sum e_i |D_i| on the integers -M..M, index = value + M
    for m, count in zip(*np.unique(magnitude[magnitude > 0], return_counts=True)):
        m, count = int(m), int(count)
        term = np.zeros(2 * m * count + 1)  # m (2B - count), B ~ Binomial(count, 1/2)
        term[:: 2 * m] = stats.binom.pmf(np.arange(count + 1), count, 0.5)
        pmf = signal.fftconvolve(pmf, term) if pmf.size * term.size > 4_000_000 else np.convolve(pmf, term)
        pmf = np.clip(pmf, 0.0, None)
    total = int(magnitude.sum())
    observed = abs(int(per_image.sum()))
    values = np.abs(np.arange(-total, total + 1))
    p = 1.0 if observed == 0 else float(pmf[values >= observed].sum() / pmf.sum())
    return {"p": min(p, 1.0), "n01": int(np.count_nonzero(per_image < 0)), "n10": int(np.count_nonzero(per_image > 0)),
            "diff": float(a.mean() - b.mean())}


def paired_permutation_test(
    correct_a: npt.NDArray[np.bool_],
    correct_b: npt.NDArray[np.bool_],
    y: npt.NDArray[np.integer],
    num_classes: int,
    *,
    statistic: Statistic,
    n_resamples: int,
    seed: int,
    ddof: int = 0,
) -> PermutationResult:
    """Paired permutation test of H0: A and B are exchangeable on every sample, for Worst, NSD or Avg.

    Test statistic T = stat(A) - stat(B). Under H0 the outcomes (correct_a_i, correct_b_i) of each
    sample may be swapped; the null distribution of T comes from random swaps
    (``scipy.stats.permutation_test``, ``permutation_type="samples"``, two-sided:
    p = min(1, 2 min(P(T* <= T), P(T* >= T)))). Swapping a concordant pair (both right or both
    wrong) changes nothing, so only the d discordant samples are permuted, with the concordant ones
    held as fixed class counts: the same test, far faster. When 2^d <= n_resamples scipy enumerates
    every swap (exact test). p = 1 when d <= 1 (no swap can be more extreme). Resamples on which
    NSD is undefined (NaN) never count as extreme; p is NaN if the observed T is NaN.

    With several seeds (``correct_a``, ``correct_b`` of shape (S, N), seed-matched) the statistics
    are those of the seed-pooled class accuracies and a swap exchanges the two methods' outcomes on
    an image in every seed together (its hit counts over the seeds): an image hard for one method
    stays hard in all its seeds, so (image, seed) pairs are not independent.

    Returns ``{"p": p, "diff": T}``.
    """
    seeds_a, seeds_b = _check_paired(correct_a, correct_b)  # (S, N)
    _, y_arr, class_n = _check_records(seeds_a[0], y, num_classes)
    a = seeds_a.sum(axis=0).astype(np.float64)  # (N,) hits of A over the seeds
    b = seeds_b.sum(axis=0).astype(np.float64)
    class_n = class_n * seeds_a.shape[0]  # (C,) (image, seed) outcomes per class
    ddof = _check_ddof(ddof)
    n_resamples = _check_n_resamples(n_resamples)
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    weights = class_n / class_n.sum()  # (C,)

    concordant_correct = np.where(a == b, a, 0.0)  # (N,) counted for both models under every swap
    base_counts = np.bincount(y_arr, weights=concordant_correct, minlength=num_classes)  # (C,)
    discordant = np.flatnonzero(a != b)  # (d,)
    onehot = np.zeros((discordant.size, num_classes))  # (d, C)
    onehot[np.arange(discordant.size), y_arr[discordant]] = 1.0

    def stat_of(disc_correct: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        # disc_correct (..., d) -> chosen statistic (...)
        acc = (base_counts + disc_correct @ onehot) / class_n  # (..., C)
        if statistic == "avg":
            return np.asarray(acc @ weights, dtype=np.float64)
        if statistic == "worst":
            return np.asarray(acc.min(axis=-1), dtype=np.float64)
        return _nsd_last_axis(acc, ddof)

    def difference(
        disc_a: npt.NDArray[np.float64], disc_b: npt.NDArray[np.float64], axis: int = -1
    ) -> npt.NDArray[np.float64]:
        disc_a = np.moveaxis(disc_a, axis, -1)
        disc_b = np.moveaxis(disc_b, axis, -1)
        return stat_of(disc_a) - stat_of(disc_b)

    disc_a = a[discordant]  # (d,)
    disc_b = b[discordant]  # (d,)
    diff = float(difference(disc_a, disc_b))
    if discordant.size <= 1:
        return {"p": 1.0, "diff": diff}
    if math.isnan(diff):
        return {"p": math.nan, "diff": diff}
    result = stats.permutation_test(
        (disc_a, disc_b),
        difference,
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        batch=_batch_size(n_resamples, discordant.size),
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return {"p": float(min(result.pvalue, 1.0)), "diff": diff}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given (family-wise error control).

    Sort p_(1) <= ... <= p_(m); adjusted p_(i) = min(1, max_{j <= i} (m - j + 1) p_(j)). Reject H_(i)
    at level alpha iff its adjusted p <= alpha. Adjusted values are monotone in the raw ones and
    never smaller. An empty family gives [].
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be a 1-D sequence, got shape {p.shape}")
    if p.size and (np.any(np.isnan(p)) or p.min() < 0 or p.max() > 1):
        raise ValueError(f"p-values must lie in [0, 1] (no NaN), got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")  # (m,)
    scaled = (m - np.arange(m)) * p[order]  # (m,) (m - j + 1) p_(j), j 1-based
    adjusted_sorted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    return [float(v) for v in adjusted]


def compare(correct_a: npt.NDArray[np.bool_], correct_b: npt.NDArray[np.bool_], y: npt.NDArray[np.integer],
            num_classes: int, **permutation: Any) -> Comparison:
    """Compare model A with model B on the same samples under one attack.

    ``correct_a``, ``correct_b``: (N,) for one evaluation of each, or (S, N) for S seed-matched pairs.
    ``avg``: exact McNemar (:func:`mcnemar_exact`; :func:`image_sign_flip_test` with several seeds);
    ``worst`` and ``nsd``: paired permutation tests
    (:func:`paired_permutation_test`, both with ``permutation``: its keyword arguments
    ``n_resamples`` and ``seed``, required, and ``ddof``). Every ``diff`` is stat(A) - stat(B).
    p-values are raw: apply :func:`holm` over the whole family of comparisons being reported.
    """
    several = np.asarray(correct_a).ndim == 2
    avg = image_sign_flip_test(correct_a, correct_b) if several else mcnemar_exact(correct_a, correct_b)
    worst = paired_permutation_test(correct_a, correct_b, y, num_classes, statistic="worst", **permutation)
    nsd_test = paired_permutation_test(correct_a, correct_b, y, num_classes, statistic="nsd", **permutation)
    return {
        "avg": {"test": "image_sign_flip_exact" if several else "mcnemar_exact", **avg},
        "worst": {"test": "paired_permutation", **worst},
        "nsd": {"test": "paired_permutation", **nsd_test},
    }
