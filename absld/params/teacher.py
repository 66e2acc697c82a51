"""``teacher``: train or import the (robust) teacher, and its check; ``teacher_clean``: the second,
clean teacher of the two-teacher methods (B-MTARD)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from .common import NonNegInt, PosInt, Prob, Section, TeacherMethod, TeacherSource
from .training import AttackConfig, EvalAttackConfig, ModelConfig, TrainConfig
from .methods import SatConfig, TradesConfig


class TeacherConfig(Section):
    source: TeacherSource = "robustbench"
    train_per_class: PosInt | None = None
    """source train: a stratified subset of the prepared training split per class (null: all)."""
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(arch="wrn34_10"))
    robustbench_id: str | None = "Zhang2019Theoretically"
    path: str | None = None
    """teacher.source file: a local checkpoint path (either this or url)."""
    url: str | None = None
    sha256: str | None = None
    """Expected sha256 of the imported file (required for source file)."""
    published_clean_acc: Prob | None = 0.8492
    """Published clean accuracy of an imported teacher; null: no check."""
    max_clean_gap: Prob = 0.01
    method: TeacherMethod = "trades"
    seed: NonNegInt = 0
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=100, weight_decay=5e-4, milestones=[75, 90])
    )
    attack: AttackConfig = Field(default_factory=AttackConfig)
    sat: SatConfig = Field(default_factory=SatConfig)
    trades: TradesConfig = Field(default_factory=TradesConfig)
    eval: EvalAttackConfig = Field(default_factory=EvalAttackConfig)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        return _sha256(value)

    @model_validator(mode="after")
    def _source_fields(self) -> "TeacherConfig":
        _file_fields(self, "teacher")
        if self.source == "robustbench" and not self.robustbench_id:
            raise ValueError("teacher.source robustbench needs teacher.robustbench_id")
        return self


def _sha256(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise ValueError(f"{value!r} is not a sha256 (64 hex digits)")
    return value.lower() if value else value


def _file_fields(cfg: "TeacherConfig | CleanTeacherConfig", section: str) -> None:
    """source file: exactly one of path/url, and the expected sha256."""
    if cfg.source == "file":
        if bool(cfg.path) == bool(cfg.url):
            raise ValueError(f"{section}.source file needs exactly one of {section}.path, {section}.url")
        if not cfg.sha256:
            raise ValueError(f"{section}.source file needs {section}.sha256 (the expected checksum)")


class CleanTeacherConfig(Section):
    """The clean (naturally trained, non-robust) teacher of B-MTARD, made by the DVC stage
    ``teacher-clean`` (``absld teacher --clean``) apart from the robust teacher, so that changing one
    never remakes the other. ``source train`` (default: the official code imports one whose recipe
    it does not release); ``none``: no clean teacher, the stage writes a small constant placeholder,
    and no method that needs one may be in distill.methods (profiles without B-MTARD)."""

    source: Literal["none", "train", "file"] = "train"
    train_per_class: PosInt | None = None
    """source train: a stratified subset of the prepared training split per class (null: all)."""
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(arch="resnet56"))
    path: str | None = None
    """source file: a local checkpoint path (either this or url)."""
    url: str | None = None
    sha256: str | None = None
    """Expected sha256 of the imported file (required for source file)."""
    published_clean_acc: Prob | None = None
    """Published clean accuracy of an imported clean teacher; null: no check."""
    max_clean_gap: Prob = 0.01
    seed: NonNegInt = 0
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=200, weight_decay=5e-4, milestones=[100, 150])
    )
    """source train: plain cross-entropy on clean images (no attack) with this recipe."""
    eval: EvalAttackConfig = Field(default_factory=EvalAttackConfig)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        return _sha256(value)

    @model_validator(mode="after")
    def _source_fields(self) -> "CleanTeacherConfig":
        _file_fields(self, "teacher_clean")
        return self
