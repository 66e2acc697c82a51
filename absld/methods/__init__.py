"""Training methods, one file each, all behind the protocol of :mod:`absld.methods.base`.

Adding a method = one file here, one entry in :data:`METHODS`, one section in params.yaml.
"""

from __future__ import annotations

from typing import Any

from .base import Method, MethodBase, MethodContext, StepOutput
from .sat import SAT
from .trades import TRADES

METHODS: dict[str, type[MethodBase]] = {cls.name: cls for cls in (SAT, TRADES)}


def build_method(name: str, cfg: Any, ctx: MethodContext) -> MethodBase:
    """Instantiate the method ``name`` with its params section ``cfg``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](cfg, ctx)


__all__ = ["METHODS", "Method", "MethodBase", "MethodContext", "StepOutput", "build_method"]
