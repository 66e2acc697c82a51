"""``analyze``: the statistics and what the figures show."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
)

from ..vocab import MethodName
from .common import NonNegInt, PosInt, Section


class AnalyzeConfig(Section):
    nsd_ddof: Literal[0, 1] = 0
    """ddof of the std in NSD = std(class acc) / mean(class acc); the paper does not state it."""
    confidence: Annotated[float, Field(gt=0, lt=1)] = 0.95
    n_bootstrap: PosInt = 1000
    bootstrap_method: Literal["percentile", "basic", "BCa"] = "percentile"
    """scipy.stats.bootstrap's interval: percentile, basic, or BCa (bias-corrected; can help when
    the percentile interval of Worst/NSD misses the point estimate on small classes)."""
    n_permutations: PosInt = 10000
    seed: NonNegInt = 0
    reference: MethodName = "absld"
    """The method compared against every other one (McNemar, permutation tests, Holm)."""
    classes_shown: PosInt = 10
    """How many worst and how many best classes the per-class figures and tables show when the
    dataset has more than 2 x classes_shown classes (CIFAR-100, Tiny-ImageNet): the classes are
    ranked by the reference method's class accuracy under the headline attack (PGD, else AA; the
    mean over its seeds), and a marker says how many middle classes are omitted. With at most
    2 x classes_shown classes every class is shown. Display only: Avg, Worst, NSD, the intervals
    and the tests always cover every class, and results/classwise.csv holds every class."""
