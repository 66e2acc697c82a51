"""``distill``: the students, their recipe, attack, checkpoint selection and every method's section."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    model_validator,
)

from ..vocab import METHOD_NAMES, MethodName
from .common import KLReduction, Pixels, PosInt, Section, Selection, _distinct
from .training import AttackConfig, EvalAttackConfig, ModelConfig, TrainConfig
from .methods import AbsldConfig, AdaadConfig, ArdConfig, BMtardConfig, CfaConfig, DafaConfig, FairArdConfig, FairIadConfig, FairRsladConfig, FrlRwConfig, FrlRwrmConfig, IadConfig, MethodConfig, ReweightedRsladConfig, RiskRuleConfig, RsladConfig, SatConfig, TradesConfig, TrixConfig, WatConfig


TeacherLogits = Literal["live", "table", "auto"]
"""Where the distillation methods' clean teacher logits come from (``distill.teacher_logits``)."""


class SelectEvalConfig(EvalAttackConfig):
    """PGD evaluation for checkpoint selection (distill.select val_fair_best / test_fair_best):
    the teacher's check (:class:`EvalAttackConfig`: the first ``n_samples`` images of the split,
    null: all of them) plus when to run it.

    The defaults are the official ABSLD script's: PGD-20 on CE, uniform start, eps 8/255, step
    0.003 (= 0.765/255), on the whole split, after every 10th epoch before the first LR milestone
    and after every epoch from that milestone on.
    """

    step: Pixels = 0.765 / 255
    every: PosInt = 10
    """Evaluate after epoch e when e % every == 0 or e >= the method's first LR milestone
    (1: after every epoch); see :meth:`epochs`."""

    def epochs(self, train: TrainConfig) -> list[int]:
        """The epochs (1-based) after which the selection PGD runs, for the recipe ``train``:
        ``e % every == 0`` before the first of ``train.milestones``, every epoch from it on
        (the official script: ``(e % 10 == 0 and e < 215) or e >= 215``); with no milestones,
        every ``every``-th epoch."""
        first = train.milestones[0] if train.milestones else train.epochs + 1
        return [e for e in range(1, train.epochs + 1) if e % self.every == 0 or e >= first]


class DistillConfig(Section):
    methods: Annotated[list[MethodName], AfterValidator(lambda v: _distinct(v, "methods"))] = Field(
        default_factory=lambda: list(METHOD_NAMES))
    student: ModelConfig = Field(default_factory=ModelConfig)
    train_per_class: PosInt | None = None
    """Students train on a stratified subset of the prepared training split, this many images per
    class (null: all); nested in teacher.train_per_class's subset (same data.split_seed)."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    kl_reduction: KLReduction = "element_mean"
    """element_mean: KL summed over classes, averaged over B x C (the reference codes);
    batchmean: averaged over B (the textbook KL). TRADES always uses its own batchmean."""
    teacher_amp: bool = False
    """Every teacher pass (its soft labels on clean inputs; AdaAD's and IAD's passes on attacked
    inputs) under runtime.amp's bf16 autocast; false: float32, as the official codes run them (the
    student's attack and loss follow runtime.amp either way)."""
    teacher_logits: TeacherLogits = "auto"
    """The teacher's logits on the clean batch: live (its forward every step), table (computed once for
    every training image x crop offset x flip, then gathered; absld/train/teacher_table.py), or auto (the
    table where it fits teacher_table_gib and a student trains at least as many epochs as there are
    views, 162 for crop padding 4; live otherwise). Live and table differ by floating-point rounding only."""
    teacher_table_gib: Annotated[float, Field(ge=0)] = 4.0
    """The largest teacher-logit table (GiB, float32, on the training device) that teacher_logits: auto
    builds; a larger one means live."""
    measure_amp: bool = False
    """The measurements between epochs (FRL's and CFA's validation PGD, the checkpoint-selection PGD)
    under runtime.amp's bf16 autocast; false: float32, as the official codes and evaluate.amp's default."""
    select: Selection = "last"
    select_eval: SelectEvalConfig = Field(default_factory=SelectEvalConfig)
    absld: AbsldConfig = Field(default_factory=AbsldConfig)
    rslad: RsladConfig = Field(default_factory=RsladConfig)
    ard: ArdConfig = Field(default_factory=ArdConfig)
    iad: IadConfig = Field(default_factory=IadConfig)
    adaad: AdaadConfig = Field(default_factory=AdaadConfig)
    sat: SatConfig = Field(default_factory=SatConfig)
    trades: TradesConfig = Field(default_factory=TradesConfig)
    fair_rslad: FairRsladConfig = Field(default_factory=FairRsladConfig)
    fair_ard: FairArdConfig = Field(default_factory=FairArdConfig)
    fair_iad: FairIadConfig = Field(default_factory=FairIadConfig)
    reweighted_rslad: ReweightedRsladConfig = Field(default_factory=ReweightedRsladConfig)
    frl_rw: FrlRwConfig = Field(default_factory=FrlRwConfig)
    frl_rwrm: FrlRwrmConfig = Field(default_factory=FrlRwrmConfig)
    cfa: CfaConfig = Field(default_factory=CfaConfig)
    wat: WatConfig = Field(default_factory=WatConfig)
    dafa: DafaConfig = Field(default_factory=DafaConfig)
    trix: TrixConfig = Field(default_factory=TrixConfig)
    b_mtard: BMtardConfig = Field(default_factory=BMtardConfig)


    def method_config(self, name: str) -> MethodConfig:
        """Method ``name``'s section, with ABSLD-style beta_milestones (and B-MTARD's rate_milestones):
        null resolved to the method's own LR milestones (distill.train changed by distill.<name>.train)."""
        cfg = getattr(self, name)
        if isinstance(cfg, RiskRuleConfig) and cfg.beta_milestones is None:
            milestones = cfg.train.apply(self.train).milestones
            return cfg.model_copy(update={"beta_milestones": list(milestones)})
        if isinstance(cfg, BMtardConfig) and cfg.rate_milestones is None:
            milestones = cfg.train.apply(self.train).milestones
            return cfg.model_copy(update={"rate_milestones": list(milestones)})
        return cfg

    @model_validator(mode="after")
    def _beta_follows_lr(self) -> "DistillConfig":
        for name in METHOD_NAMES:
            cfg = getattr(self, name)
            if not isinstance(cfg, RiskRuleConfig) or cfg.beta_milestones is None or cfg.beta_decoupled:
                continue
            lr_milestones = cfg.train.apply(self.train).milestones
            if sorted(cfg.beta_milestones) != sorted(lr_milestones):
                raise ValueError(
                    f"{name}.beta_milestones {cfg.beta_milestones} differ from {name}'s LR milestones "
                    f"{lr_milestones}; the reference code decays beta with the learning rate: set "
                    f"distill.{name}.beta_milestones to null (follow the LR) or "
                    f"distill.{name}.beta_decoupled to true")
        return self

    def selection_epochs(self, name: str) -> list[int]:
        """The epochs after which method ``name``'s checkpoint-selection PGD runs (select_eval.every
        against the method's effective recipe, its own milestones included); [] for select last."""
        if self.select == "last":
            return []
        method = self.method_config(name)
        return [e for e in self.select_eval.epochs(method.train.apply(self.train)) if e >= method.first_selectable_epoch]

    @model_validator(mode="after")
    def _selection_evaluates_some_epoch(self) -> "DistillConfig":
        for name in self.methods:
            if self.select != "last" and not self.selection_epochs(name):
                train = self.method_config(name).train.apply(self.train)
                first = self.method_config(name).first_selectable_epoch
                after = f" from its epoch {first} on (before it, the method has not trained yet)" if first > 1 else ""
                raise ValueError(
                    f"select_eval.every = {self.select_eval.every} picks no epoch of {name}'s {train.epochs} "
                    f"(milestones {train.milestones}){after}, so select {self.select} has nothing to choose from; "
                    "lower select_eval.every (1: every epoch)")
        return self
