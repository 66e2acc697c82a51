"""``teacher``: train or import the teacher, and its check."""

from __future__ import annotations

import re

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
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError(f"{value!r} is not a sha256 (64 hex digits)")
        return value.lower() if value else value

    @model_validator(mode="after")
    def _source_fields(self) -> "TeacherConfig":
        if self.source == "file":
            if bool(self.path) == bool(self.url):
                raise ValueError("teacher.source file needs exactly one of teacher.path, teacher.url")
            if not self.sha256:
                raise ValueError("teacher.source file needs teacher.sha256 (the expected checksum)")
        if self.source == "robustbench" and not self.robustbench_id:
            raise ValueError("teacher.source robustbench needs teacher.robustbench_id")
        return self
