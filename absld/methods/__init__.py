"""Training methods, one file each, all behind the protocol of :mod:`absld.methods.base`.

Adding a method = one file here, one entry in :data:`METHODS`, one section in params.yaml.
"""

from __future__ import annotations

from typing import Any

from .absld import ABSLD, update_temperatures
from .adaad import AdaAD
from .ard import ARD
from .b_mtard import BMTARD
from .base import ClassAccuracy, MethodBase, MethodContext, StepOutput
from .cfa import CFA
from .fair_ard import FairARD
from .fair_iad import FairIAD
from .dafa import DAFA
from .fair_rslad import FairRSLAD
from .frl import FRLReweight, FRLReweightRemargin
from .iad import IAD
from .natural import Natural
from .reweighted_rslad import ReweightedRSLAD
from .rslad import RSLAD
from .sat import SAT
from .trades import TRADES
from .trix import TRIX
from .wat import WAT

METHODS: dict[str, type[MethodBase]] = {
    cls.name: cls
    for cls in (ABSLD, RSLAD, ARD, IAD, AdaAD, SAT, TRADES, FairRSLAD, FairARD, FairIAD, ReweightedRSLAD,
                FRLReweight, FRLReweightRemargin, CFA, WAT, DAFA, TRIX, BMTARD)
}
"""The student methods, in the vocabulary's order. :class:`Natural` (plain training of B-MTARD's clean
teacher) is no student method and not listed."""


def build_method(name: str, cfg: Any, ctx: MethodContext) -> MethodBase:
    """Instantiate the method ``name`` with its params section ``cfg``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](cfg, ctx)


__all__ = ["METHODS", "ClassAccuracy", "MethodBase", "MethodContext", "Natural", "StepOutput", "build_method",
           "update_temperatures"]
