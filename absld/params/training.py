"""What the teacher and distill sections share: the attack, the SGD recipe (and a method's changes to it), a model, an evaluation PGD."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from ..models import ModelName
from .common import NonNegInt, Pixels, PosInt, Radius, Section


class AttackConfig(Section):
    """An L-inf PGD attack: eps and step in pixel space (fractions of 255)."""

    eps: Radius = 8 / 255
    step: Pixels = 2 / 255
    steps: NonNegInt = 10

    @model_validator(mode="after")
    def _step_le_eps(self) -> "AttackConfig":
        if self.step > self.eps and self.steps > 0:
            raise ValueError(f"step {self.step * 255:.3g}/255 exceeds eps {self.eps * 255:.3g}/255")
        return self


class TrainConfig(Section):
    """SGD with momentum, weight decay and a milestone schedule (docs/method.md §5)."""

    epochs: PosInt = 300
    batch_size: PosInt = 128
    lr: Annotated[float, Field(gt=0)] = 0.1
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 2e-4
    nesterov: bool = False
    milestones: list[PosInt] = Field(default_factory=lambda: [215, 260, 285])
    lr_gamma: Annotated[float, Field(gt=0, le=1)] = 0.1
    lr_decay: Literal["cumulative", "from_base"] = "cumulative"
    """cumulative: lr * gamma^(milestones passed) (the intent; ABSLD/RSLAD code); from_base:
    lr * gamma once any milestone has passed (the released ARD/IAD/Fair-ARD function, which
    always scales the base rate, so a second milestone leaves it at lr * gamma)."""

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, value: list[int]) -> list[int]:
        if value != sorted(set(value)):
            raise ValueError(f"milestones {value} must be strictly increasing")
        return value


class TrainOverride(Section):
    """Per-method changes to the shared training recipe (only the keys that are set)."""

    epochs: PosInt | None = None
    batch_size: PosInt | None = None
    lr: Annotated[float, Field(gt=0)] | None = None
    momentum: Annotated[float, Field(ge=0, lt=1)] | None = None
    weight_decay: Annotated[float, Field(ge=0)] | None = None
    nesterov: bool | None = None
    milestones: list[PosInt] | None = None
    lr_gamma: Annotated[float, Field(gt=0, le=1)] | None = None
    lr_decay: Literal["cumulative", "from_base"] | None = None

    def apply(self, base: TrainConfig) -> TrainConfig:
        changes = {k: v for k, v in self.model_dump().items() if v is not None}
        return TrainConfig(**{**base.model_dump(), **changes})


class ModelConfig(Section):
    arch: ModelName = "resnet18"
    normalize: bool = False
    """Normalise inputs inside the model with the training set's mean/std (the official ABSLD and
    TRADES models take raw [0, 1] inputs: false)."""


class EvalAttackConfig(Section):
    """Quick clean + PGD check of a trained or imported model."""

    n_samples: PosInt | None = None
    batch_size: PosInt = 256
    eps: Radius = 8 / 255
    step: Pixels = 2 / 255
    steps: NonNegInt = 20
