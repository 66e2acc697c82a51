"""The report's tests and intervals hold their nominal error rates at the sample sizes we have.

Simulated studies, each a small robust-fairness study of its own (4 classes of 50 test images, 3
seeds per method), under nulls with image heterogeneity — some images easy, some hard, as under an
attack — and a fixed random seed, so each rate below is one deterministic number:

- per-sample tests (Avg's exact sign-flip / McNemar test, the Worst and NSD permutation tests) under
  the null "each method has its own easy and hard images, drawn from one law": an image is hard for
  a method in every seed, so (image, seed) pairs are not independent. Stacking them as independent
  (what the report did before) rejects 15.7 % (Avg), 10.7 % (Worst) at a nominal 5 % (asserted
  below, so that the simulation shows it can see the failure); swapping an image's seeds together
  holds 3.5-4.7 % (1,500 studies);
- tests over seeds (the paired t-test and the exact sign-flip test of the per-seed differences)
  under the null "each training run draws its own outcomes on shared image difficulties";
- the worst-class interval's coverage at 50, 100 and 1,000 images per class, where the percentile
  bootstrap of a minimum covers far less (asserted too).
"""

from __future__ import annotations

import numpy as np
import pytest

from absld import fairness

ALPHA = 0.05
N_CLASSES, PER_CLASS, SEEDS, STUDIES = 4, 50, 3, 1000
Y = np.repeat(np.arange(N_CLASSES), PER_CLASS)


def method_specific_null(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(S, N) outcomes of two methods with no true difference: each method draws its own per-image
    difficulty from Beta(0.5, 0.5) (easy and hard images), the same in every one of its seeds."""
    p_a, p_b = rng.beta(0.5, 0.5, size=(2, Y.size))
    return rng.random((SEEDS, Y.size)) < p_a, rng.random((SEEDS, Y.size)) < p_b


def training_null(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(S, N) outcomes with one image difficulty shared by both methods; every training run (method,
    seed) draws its outcomes independently: the two methods' runs are exchangeable."""
    p = rng.beta(0.5, 0.5, size=Y.size)
    return rng.random((SEEDS, Y.size)) < p, rng.random((SEEDS, Y.size)) < p


def rejection_rates(null, seed: int, stacked: bool = False, studies: int = STUDIES) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    rejected = {"avg": 0, "worst": 0, "nsd": 0}
    for study in range(studies):
        a, b = null(rng)
        if stacked:  # the (image, seed) pairs pooled as if independent
            a, b, y = a.reshape(-1), b.reshape(-1), np.tile(Y, SEEDS)
        else:
            y = Y
        result = fairness.compare(a, b, y, N_CLASSES, n_resamples=200, seed=study)
        for stat in rejected:
            rejected[stat] += result[stat]["p"] <= ALPHA
    return {stat: count / studies for stat, count in rejected.items()}


@pytest.mark.parametrize("null", [method_specific_null, training_null])
def test_per_sample_tests_with_several_seeds_hold_their_level(null):
    rates = rejection_rates(null, seed=11, studies=1500)
    assert all(0.03 <= rate <= 0.07 for rate in rates.values()), rates


def test_stacking_an_images_seeds_as_independent_pairs_is_anti_conservative():
    """What the report did before: the simulation must be able to see it."""
    rates = rejection_rates(method_specific_null, seed=11, stacked=True, studies=300)
    assert rates["avg"] > 0.09 and rates["worst"] > 0.09, rates


def per_seed_statistics(correct: np.ndarray) -> np.ndarray:
    """(S, 3): Avg, Worst, NSD of each seed's records."""
    out = []
    for row in correct:
        summary = fairness.summarize(row, Y, N_CLASSES)
        out.append([summary["avg"], summary["worst"], summary["nsd"]])
    return np.array(out)


@pytest.mark.parametrize("seeds", [3, 6])
def test_tests_over_seeds_hold_their_level(seeds):
    """The t-test at 3-7 %; the exact sign-flip test never above 5 % + noise, and never below its
    floor 2 / 2^n: at 3 seeds (floor 0.25) it can never reject."""
    rng = np.random.default_rng(5)
    t_rejected = np.zeros(3)
    sign_rejected = np.zeros(3)
    for _ in range(STUDIES):
        p = rng.beta(0.5, 0.5, size=Y.size)
        a = per_seed_statistics(rng.random((seeds, Y.size)) < p)
        b = per_seed_statistics(rng.random((seeds, Y.size)) < p)
        for k in range(3):
            test = fairness.paired_seed_test(a[:, k], b[:, k])
            t_rejected[k] += test["p"] <= ALPHA
            sign_rejected[k] += test["p_sign"] <= ALPHA
            assert test["p_sign"] >= test["p_sign_floor"] == 2.0 ** (1 - seeds)
    t_rates, sign_rates = t_rejected / STUDIES, sign_rejected / STUDIES
    assert np.all((t_rates >= 0.03) & (t_rates <= 0.07)), t_rates
    assert np.all(sign_rates <= 0.07), sign_rates
    if seeds == 3:
        assert np.all(sign_rates == 0.0)


CLASS_ACCURACIES = {
    # the class accuracies of a robust CIFAR-10 ResNet-18 under PGD (cat, bird, deer close at the bottom)
    "cifar10-like": np.array([0.64, 0.75, 0.35, 0.28, 0.38, 0.42, 0.58, 0.60, 0.70, 0.68]),
    "ten tied classes": np.full(10, 0.30),
    "one class far below": np.array([0.30, 0.60, 0.60, 0.65, 0.70, 0.70, 0.75, 0.80, 0.80, 0.85]),
}


def percentile_bootstrap_worst(counts: np.ndarray, n: int, rng: np.random.Generator, resamples: int = 1000
                               ) -> tuple[np.ndarray, np.ndarray]:
    """The stratified percentile bootstrap of Worst (what fairness.json held before), from the class
    counts: resampling within a class is a binomial draw of its count."""
    boot = rng.binomial(n, counts[:, None, :] / n, size=(counts.shape[0], resamples, counts.shape[1])) / n
    return tuple(np.quantile(boot.min(axis=-1), [ALPHA / 2, 1 - ALPHA / 2], axis=-1))


@pytest.mark.parametrize("per_class", [50, 100, 1000])
@pytest.mark.parametrize("profile", list(CLASS_ACCURACIES))
def test_the_worst_class_interval_covers_at_its_nominal_level(profile, per_class):
    """Coverage within 2 points of 95 % at 100 and 1,000 images per class; at 50 the inversion is
    conservative where several classes are close (97.2 % on ten tied classes and CIFAR-10-like
    accuracies, measured here; 98.1 % on another draw of 2,000), never under-covering."""
    truth = CLASS_ACCURACIES[profile]
    rng = np.random.default_rng(per_class)
    counts = rng.binomial(per_class, truth, size=(2000, truth.size))
    low, high = fairness.worst_class_interval_counts(counts, np.full(truth.size, per_class))
    coverage = float(np.mean((low <= truth.min()) & (truth.min() <= high)))
    upper = 0.985 if per_class == 50 else 0.97
    assert 0.93 <= coverage <= upper, coverage
    if profile == "ten tied classes":  # the bootstrap of a minimum: far off
        boot_low, boot_high = percentile_bootstrap_worst(counts[:400], per_class, rng)
        assert np.mean((boot_low <= truth.min()) & (truth.min() <= boot_high)) < 0.5
