"""Shared pieces of the params models: scalar types (eps as fractions of 255), the strict section base, the one-line error."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
)

from ..errors import UserError


Device = Literal["auto", "cpu", "cuda"]


KLReduction = Literal["element_mean", "batchmean"]


Selection = Literal["last", "val_fair_best", "test_fair_best"]


TeacherSource = Literal["train", "file", "robustbench"]


TeacherMethod = Literal["sat", "trades"]


TemperatureMode = Literal["separate", "aliased"]


CONF = Path("conf")
"""The profiles' home: conf/config.yaml (the paper) and conf/profile/<name>.yaml."""


class ConfigError(UserError, ValueError):
    """A problem with params.yaml or a profile, phrased for the user (one line)."""


_FRACTION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")


def _parse_fraction(value: Any) -> Any:
    """``"5/6"`` -> 0.8333..; numbers pass through; anything else is left to pydantic."""
    if isinstance(value, str):
        match = _FRACTION.match(value)
        if match:
            num, den = (float(g) for g in match.groups())
            if den == 0:
                raise ValueError(f"{value!r} divides by zero")
            return num / den
    return value


def _parse_pixels(value: Any) -> Any:
    """Perturbation sizes in pixel space: ``"8/255"`` or ``0``; bare floats are rejected."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a perturbation size; write it like 8/255")
    if isinstance(value, (int, float)) and value != 0:
        in_255 = float(value) * 255
        raise ValueError(
            f"{value!r} is ambiguous; write perturbation sizes as fractions of 255, "
            f"e.g. {round(in_255)}/255 (= {round(in_255) / 255:.6f}) — {value} is {in_255:.2f}/255"
        )
    if isinstance(value, str) and not _FRACTION.match(value):
        raise ValueError(f"{value!r} is not a fraction; write it like 8/255")
    return _parse_fraction(value)


Num = Annotated[float, BeforeValidator(_parse_fraction)]
"""A float that may be written as a fraction (``5/6``)."""


Pixels = Annotated[float, BeforeValidator(_parse_pixels), Field(ge=0, le=1)]
"""A perturbation size in [0, 1] pixel space, written as a fraction of 255."""


Radius = Annotated[float, BeforeValidator(_parse_pixels), Field(gt=0, le=1)]
"""An attack's L-inf radius eps in (0, 1] pixel space (0 would make every attack the clean input)."""


PosInt = Annotated[int, Field(gt=0)]


NonNegInt = Annotated[int, Field(ge=0)]


Prob = Annotated[float, BeforeValidator(_parse_fraction), Field(ge=0, le=1)]


def _distinct(values: list, what: str, allow_empty: bool = False) -> list:
    """A list validator: no repeats (and not empty unless allowed)."""
    if (not values and not allow_empty) or len(set(values)) != len(values):
        raise ValueError(f"{what} {values} must be a {'' if allow_empty else 'non-empty '}list without repeats")
    return values


class Section(BaseModel):
    """Base of every params section: unknown keys are errors, values are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are leaves)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def fraction_of_255(value: float) -> str:
    """Render a pixel-space size the way params write it (``0.0313..`` -> ``"8/255"``)."""
    frac = Fraction(value * 255).limit_denominator(1000)
    return f"{float(frac):g}/255"
