"""``analyze``: the statistics and what the figures show."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    model_validator,
)

from ..vocab import MethodName
from .common import NonNegInt, PosInt, Section, _distinct


PAPER_BASELINES: tuple[str, ...] = ("rslad", "ard", "iad", "adaad", "sat", "trades", "fair_rslad",
                                     "reweighted_rslad", "frl_rw", "frl_rwrm", "cfa")
"""The baselines of the paper's table."""
NEWER_BASELINES: tuple[str, ...] = ("fair_ard", "fair_iad", "wat", "dafa", "trix", "b_mtard")
"""The robust-fairness methods a reviewer of a reproduction expects beside them (not in the paper's
table); with PAPER_BASELINES, conf/config.yaml distill.methods without absld."""


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
    baselines: Annotated[list[MethodName], AfterValidator(lambda v: _distinct(v, "analyze.baselines"))] = Field(
        default_factory=lambda: list(PAPER_BASELINES + NEWER_BASELINES))
    """The declared family of comparisons: Holm's correction runs over these baselines whether they
    were trained or not (an untrained one counts with p = 1), so a verdict does not depend on how
    many baselines happen to be trained. Default: every baseline of the paper's table and the newer ones. A trained
    method outside the family is still compared, with raw p-values marked exploratory."""
    verdict_baseline: MethodName = "rslad"
    """The baseline the report's verdict on ABSLD's claims is judged against (one of baselines)."""
    classes_shown: PosInt = 10
    """How many worst and how many best classes the per-class figures and tables show when the
    dataset has more than 2 x classes_shown classes (CIFAR-100, Tiny-ImageNet): the classes are
    ranked by the reference method's class accuracy under the headline attack (PGD, else AA; the
    mean over its seeds), and a marker says how many middle classes are omitted. With at most
    2 x classes_shown classes every class is shown. Display only: Avg, Worst, NSD, the intervals
    and the tests always cover every class, and results/classwise.csv holds every class."""

    @model_validator(mode="after")
    def _family(self) -> AnalyzeConfig:
        if self.reference in self.baselines:
            raise ValueError(f"analyze.baselines holds the reference {self.reference!r}: the family is what it is "
                             f"compared against; remove it or change analyze.reference")
        if self.verdict_baseline not in self.baselines:
            raise ValueError(f"analyze.verdict_baseline {self.verdict_baseline!r} is not in analyze.baselines "
                             f"{self.baselines}: the verdict's test must be in the declared family")
        return self
