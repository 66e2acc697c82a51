"""Typed configuration: ``params.yaml`` parsed once into pydantic models.

Every tunable number of the pipeline lives in ``params.yaml``; this module is the only place that
reads it. Validation is strict: an unknown key, a wrong type or an out-of-range value is a
:class:`ConfigError` whose one-line message names the key, the value and what is allowed.

Perturbation sizes (``eps``, ``step``) are written as fractions of 255 (``8/255``) and parsed
here; a bare float such as ``0.031`` is rejected with a hint, because it is the most common way
AutoAttack numbers stop matching the literature.
"""

from __future__ import annotations

import copy
import re
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .models import ModelName
from .vocab import AA_ATTACK_NAMES, METHOD_NAMES, AutoAttackName, DatasetName, MethodName
from .errors import UserError

DATASETS = ("cifar10", "cifar100", "fashion-mnist", "tinyimagenet")
Dataset = DatasetName
Device = Literal["auto", "cpu", "cuda"]
KLReduction = Literal["element_mean", "batchmean"]
Selection = Literal["last", "val_fair_best", "test_fair_best"]
TeacherSource = Literal["train", "file", "robustbench"]
TeacherMethod = Literal["sat", "trades"]
TemperatureMode = Literal["separate", "aliased"]


class ConfigError(UserError, ValueError):
    """A problem with params.yaml or a profile, phrased for the user (one line)."""


# ----------------------------------------------------------------------------------------------
# scalar types
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


# ----------------------------------------------------------------------------------------------
# shared sections
class RuntimeConfig(Section):
    device: Device = "auto"
    amp: bool = True
    """bf16 autocast for forward passes on CUDA (on the CPU: cpu_bf16)."""
    channels_last: bool = True
    """channels_last memory format on CUDA (on the CPU: cpu_bf16)."""
    cpu_bf16: bool = False
    """On the CPU: bf16 autocast for forward passes and channels_last, as amp and channels_last do
    on CUDA. 1.9-2.4x faster training steps for the small CNNs on a CPU with native bf16
    (AVX512-BF16/AMX; `absld bench`); it changes the numerics, so off unless a profile asks."""
    deterministic: bool = False
    """On CUDA: deterministic cuDNN algorithms (slower). The CPU is always deterministic."""
    compile: bool = False
    """torch.compile the student for training (its attack and its loss): faster steps on a GPU once
    compiled, a minute or more of compiling first (and on the CPU, a C++ compiler); numerics differ from
    eager in the last bits."""
    distributed: bool = False
    """Data-parallel training when the stage is started by torchrun (`torchrun --nproc_per_node N
    -m pipeline.cli distill ...`): one process per device, each on its share of every batch,
    gradients averaged by DistributedDataParallel (absld/distributed.py); alone, one process."""
    nan_policy: Literal["stop", "skip_batch"] = "stop"
    """A NaN/inf training loss: stop (name the epoch, batch and method; the last finished epoch's
    checkpoint is kept) or skip_batch (no update from that batch; counted in the training log)."""




class AugmentConfig(Section):
    crop_padding: NonNegInt = 4
    flip: bool = True


class SyntheticConfig(Section):
    """The generated ``synthetic`` dataset (pipeline checks in seconds; no download, no results)."""

    train_per_class: PosInt = 20
    test_per_class: PosInt = 6
    seed: NonNegInt = 0


class DataConfig(Section):
    dataset: Dataset = "cifar10"
    root: str = "data/raw"
    """Where torchvision's archives are looked for (and downloaded to, when allowed)."""
    source_dir: str | None = None
    """An existing directory holding the dataset's files, e.g. /usr/share/datasets/fashion-mnist."""
    download: bool = True
    verify_md5: bool = True
    """Check the CIFAR archives against torchvision's md5 sums."""
    val_per_class: NonNegInt = 100
    """Stratified validation images per class, held out from training (0: no validation split)."""
    train_per_class: PosInt | None = None
    """Stratified subset of the training set per class (small profiles); null: all."""
    split_seed: NonNegInt = 0
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    """Sizes of data.dataset: synthetic (ignored for the real datasets)."""
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


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
    """SGD with momentum, weight decay and a milestone schedule (METHOD.md §5)."""

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


# ----------------------------------------------------------------------------------------------
# methods (one section each; every key reachable with dvc exp run -S distill.<method>.<key>=...)
class MethodConfig(Section):
    train: TrainOverride = Field(default_factory=TrainOverride)
    """Changes to the shared training recipe for this method only."""

    @property
    def validates(self) -> bool:
        """Whether the method measures the student on the validation split between epochs."""
        return False


class SatConfig(MethodConfig):
    """PGD-AT (Madry et al. 2018): CE on PGD examples with a uniform random start."""

    start: Literal["uniform", "gaussian"] = "uniform"


class TradesConfig(MethodConfig):
    """TRADES (Zhang et al. 2019): CE(S(x), y) + beta KL(S(x) || S(x'))."""

    beta: Annotated[float, Field(ge=0)] = 6.0


class DistillWeights(MethodConfig):
    """The RSLAD-family loss: kl_scale * (adv_weight * KL_adv + nat_weight * KL_nat)."""

    adv_weight: Num = 5 / 6
    nat_weight: Num = 1 / 6
    kl_scale: Annotated[float, BeforeValidator(_parse_fraction), Field(gt=0)] = 1.0
    """Multiplies both KL terms (RSLAD uses 10 on CIFAR-100)."""


class RsladConfig(DistillWeights):
    """RSLAD (Zi et al., ICCV 2021): distil the teacher's clean soft labels on x' and x."""


class RiskRuleConfig(DistillWeights):
    """The step size of ABSLD's end-of-epoch rule and its decay."""

    beta: Annotated[float, BeforeValidator(_parse_fraction), Field(ge=0)] = 0.1
    """The largest change of one end-of-epoch update."""
    beta_milestones: list[PosInt] | None = None
    """Epochs at whose end beta is multiplied by beta_gamma, before that epoch's update; null: the
    method's LR milestones (the reference code decays beta together with the learning rate). A
    list that differs from the LR milestones is refused unless beta_decoupled is true."""
    beta_gamma: Annotated[float, Field(gt=0, le=1)] = 0.1
    beta_decoupled: bool = False
    """true: allow beta_milestones that differ from the LR milestones (not the reference's rule)."""

    # the schedule itself: absld.methods.absld.beta_after (beside update_temperatures)


class AbsldConfig(RiskRuleConfig):
    """ABSLD (Zhao et al., NeurIPS 2024): RSLAD with class-wise teacher temperatures (METHOD.md §2-3)."""

    tau_init: Annotated[float, BeforeValidator(_parse_fraction), Field(gt=0)] = 1.0
    tau_min: Annotated[float, BeforeValidator(_parse_fraction), Field(gt=0)] = 0.5
    tau_max: Annotated[float, BeforeValidator(_parse_fraction), Field(gt=0)] = 5.0
    temperature_mode: TemperatureMode = "separate"
    """separate: tau_adv for the attack and KL_adv, tau_nat for KL_nat (the intent); aliased: the
    product tau_adv[y] * tau_nat[y] everywhere (the released code, METHOD.md §4)."""

    @model_validator(mode="after")
    def _bounds(self) -> "AbsldConfig":
        if not self.tau_min <= self.tau_init <= self.tau_max:
            raise ValueError(f"need tau_min <= tau_init <= tau_max, got {self.tau_min}, "
                             f"{self.tau_init}, {self.tau_max}")
        return self


class ReweightedRsladConfig(RiskRuleConfig):
    """Control: RSLAD with class weights moved by ABSLD's rule (higher risk -> larger weight)."""

    w_init: Annotated[float, Field(gt=0)] = 1.0
    w_min: Annotated[float, Field(gt=0)] = 0.5
    w_max: Annotated[float, Field(gt=0)] = 5.0


class FairRsladConfig(DistillWeights):
    """Fair-ARD's re-weighting (Yue et al., ICCV 2023) on RSLAD: w_k ∝ (1/mean kappa_k)^beta."""

    beta: Annotated[float, Field(ge=0)] = 2.0
    w_min: Num = 5 / 6
    w_max: Num = 5 / 2


class ArdConfig(MethodConfig):
    """ARD (Goldblum et al., AAAI 2020): alpha t^2 KL(T(x)/t || S(x')/t) + (1-alpha) CE(S(x), y)."""

    temperature: Annotated[float, Field(gt=0)] = 30.0
    alpha: Prob = 1.0


class IadConfig(MethodConfig):
    """IAD (Zhu et al., ICLR 2022): ARD with the teacher's reliability a_i = P_T(y|x')^beta."""

    temperature: Annotated[float, Field(gt=0)] = 1.0
    beta: Annotated[float, Field(ge=0)] = 0.1
    begin: NonNegInt = 60
    """Epoch after which introspection (the (1 - a_i) self-distillation term) starts."""


class AdaadConfig(MethodConfig):
    """AdaAD (Huang et al., AAAI 2023): the teacher is attacked too; KL(T(x') || S(x'))."""

    alpha: Prob = 1.0
    """alpha KL(T(x')||S(x')) + (1 - alpha) KL(T(x)||S(x))."""


class FrlConfig(MethodConfig):
    """FRL (Xu et al., ICML 2021), as the official code (hannxu123/fair_robust) runs it: TRADES whose
    natural and boundary terms are re-weighted per class by Lagrange multipliers that grow with each
    class's clean / boundary error on the validation split, measured by PGD after every epoch
    (:mod:`absld.methods.frl`). ``frl_rwrm`` also widens the attack radius of classes with a high
    boundary error (remargin). The defaults are the code's (HEAD a80547d)."""

    beta: Annotated[float, BeforeValidator(_parse_fraction), Field(ge=0)] = 1.5
    """TRADES weight of the boundary (KL) term (HEAD: 1.5; the first upload, 18d1177: 1.0)."""
    tau_clean: Annotated[float, BeforeValidator(_parse_fraction), Field(ge=0)] = 0.1
    """Tolerance tau_1 of a class's clean error above the average (code: --bound0; RWRM 0.07)."""
    tau_boundary: Annotated[float, BeforeValidator(_parse_fraction), Field(ge=0)] = 0.1
    """Tolerance tau_2 of a class's boundary error above the average (code: --bound1; RWRM 0.07)."""
    rate_clean: Annotated[float, BeforeValidator(_parse_fraction), Field(gt=0)] = 0.05
    """Step of the natural multipliers lambda_0 (code: --rate1)."""
    boundary_rate_scale: Annotated[float, BeforeValidator(_parse_fraction), Field(gt=0)] = 2.0
    """The boundary multipliers lambda_1 move by boundary_rate_scale x rate_clean (the code: 2)."""
    rate_halve_every: PosInt = 40
    """rate_clean is halved before fair epoch n when n % rate_halve_every == 0 (the code: 40)."""
    lim: Annotated[float, BeforeValidator(_parse_fraction), Field(gt=0, lt=1)] = 0.5
    """Projection of each multiplier vector onto {lambda >= 0, sum(lambda) <= lim} (code: --lim); below 1,
    so that every class weight 1/C + lambda_k - sum(lambda)/C stays >= (1 - lim)/C > 0."""
    loss_reduction: Literal["separate", "joint"] = "separate"
    """separate: sum w0 CE / sum w0 + beta sum w1 KL / sum w1 (HEAD); joint: sum (w0 CE + beta w1 KL) /
    sum (w0 + w1) (the first upload, 18d1177)."""
    hot_start_epochs: NonNegInt = 0
    """Epochs of plain TRADES (uniform weights, no multiplier update) before the fair epochs: the
    code fine-tunes a pre-trained robust model whose recipe it does not release."""
    validation: EvalAttackConfig = Field(default_factory=lambda: EvalAttackConfig(steps=20))
    """The PGD (CE, uniform start) that measures the class-wise errors on the validation split
    (n_samples: its first n images, null: all)."""

    @property
    def validates(self) -> bool:
        return True


class FrlRwConfig(FrlConfig):
    """FRL reweight (``frlrw.py``): the multipliers re-weight both TRADES terms; the radius stays eps."""


class FrlRwrmConfig(FrlConfig):
    """FRL reweight + remargin (``frlrmrw.py``): also eps_k = eps * clamp(exp(2 lambda_2,k), 0.98, margin_max)."""

    tau_clean: Annotated[float, BeforeValidator(_parse_fraction), Field(ge=0)] = 0.07
    tau_boundary: Annotated[float, BeforeValidator(_parse_fraction), Field(ge=0)] = 0.07
    rate_margin: Annotated[float, BeforeValidator(_parse_fraction), Field(gt=0)] = 0.2
    """Step of the margin multipliers lambda_2 (code: --rate2; unprojected)."""
    margin_min: Annotated[float, Field(gt=0)] = 0.98
    margin_max: Annotated[float, Field(gt=0)] = 3.0
    """eps_k / eps is clamped to [margin_min, margin_max] (utils_frl2.py: 0.98, 3.0; the removed RM script 2.5)."""
    step_rule: Literal["max_eps_quarter", "fixed"] = "max_eps_quarter"
    """max_eps_quarter: the attack step is max over the batch of eps_{y_i} / 4 (HEAD); fixed: distill.attack.step."""


class CfaConfig(MethodConfig):
    """CFA (Wei et al., CVPR 2023), as the official code (PKU-ML/CFA) runs it: class-wise radii
    eps_k = (lambda_eps + t_k) eps and TRADES weights beta_k = (lambda_beta + t_k) beta from each class's
    robust training accuracy t_k of the previous epoch, and fairness-aware weight averaging of the
    model (:mod:`absld.methods.cfa`). Code defaults except lambda_eps (the paper's 0.3 for TRADES)."""

    base: Literal["trades", "at"] = "trades"
    """The adversarial training CFA calibrates: trades (KL attack in eval mode, (CE + beta_y KL) / (1 + beta_y))
    or at (PGD-AT: CE attack in train mode, uniform start, CE loss)."""
    beta: Annotated[float, BeforeValidator(_parse_fraction), Field(ge=0)] = 6.0
    ccm: bool = True
    """Class-wise calibrated margin (eps_k)."""
    ccr: bool = True
    """Class-wise calibrated regularisation (beta_k; trades only)."""
    lambda_eps: Annotated[float, BeforeValidator(_parse_fraction), Field(ge=0)] = 0.3
    """lambda_1 of eps_k = (lambda_1 + t_k) eps (paper: 0.3 TRADES, 0.5 AT, 0.7 FAT; code default 0.5)."""
    lambda_beta: Annotated[float, BeforeValidator(_parse_fraction), Field(ge=0)] = 0.5
    """lambda_2 of beta_k = (lambda_2 + t_k) beta."""
    begin: NonNegInt = 10
    """Calibration starts after this many epochs (code: --begin 10; Algorithm 1 of the paper: from the first)."""
    average: Literal["fawa", "ema", "none"] = "fawa"
    """fawa: the written student is the fairness-aware weight average; ema: the plain EMA; none: the trained weights."""
    decay: Annotated[float, BeforeValidator(_parse_fraction), Field(ge=0, lt=1)] = 0.88
    """Average <- decay * average + (1 - decay) * model after each epoch (code 0.88; paper 0.85)."""
    threshold: Prob = 0.24
    """FAWA averages an epoch's weights only when the worst class's validation PGD accuracy is >= this
    (code 0.24; paper and README 0.2)."""
    validation: EvalAttackConfig = Field(default_factory=lambda: EvalAttackConfig(steps=10))
    """The PGD (CE, uniform start) of the FAWA gate on the validation split."""

    @property
    def validates(self) -> bool:
        return self.average == "fawa"


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


DISTILL_METHODS = METHOD_NAMES
DistillMethod = MethodName


class DistillConfig(Section):
    methods: Annotated[list[DistillMethod], AfterValidator(lambda v: _distinct(v, "methods"))] = Field(default_factory=lambda: list(DISTILL_METHODS))
    student: ModelConfig = Field(default_factory=ModelConfig)
    train_per_class: PosInt | None = None
    """Students train on a stratified subset of the prepared training split, this many images per
    class (null: all); nested in teacher.train_per_class's subset (same data.split_seed)."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    kl_reduction: KLReduction = "element_mean"
    """element_mean: KL summed over classes, averaged over B x C (the reference codes);
    batchmean: averaged over B (the textbook KL). TRADES always uses its own batchmean."""
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
    reweighted_rslad: ReweightedRsladConfig = Field(default_factory=ReweightedRsladConfig)
    frl_rw: FrlRwConfig = Field(default_factory=FrlRwConfig)
    frl_rwrm: FrlRwrmConfig = Field(default_factory=FrlRwrmConfig)
    cfa: CfaConfig = Field(default_factory=CfaConfig)


    def method_config(self, name: str) -> MethodConfig:
        """Method ``name``'s section, with ABSLD-style beta_milestones: null resolved to the
        method's own LR milestones (distill.train changed by distill.<name>.train)."""
        cfg = getattr(self, name)
        if isinstance(cfg, RiskRuleConfig) and cfg.beta_milestones is None:
            milestones = cfg.train.apply(self.train).milestones
            return cfg.model_copy(update={"beta_milestones": list(milestones)})
        return cfg

    @model_validator(mode="after")
    def _beta_follows_lr(self) -> "DistillConfig":
        for name in DISTILL_METHODS:
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
        return self.select_eval.epochs(self.method_config(name).train.apply(self.train))

    @model_validator(mode="after")
    def _selection_evaluates_some_epoch(self) -> "DistillConfig":
        for name in self.methods:
            if self.select != "last" and not self.selection_epochs(name):
                train = self.method_config(name).train.apply(self.train)
                raise ValueError(
                    f"select_eval.every = {self.select_eval.every} picks no epoch of {name}'s {train.epochs} "
                    f"(milestones {train.milestones}), so select {self.select} has nothing to choose from; "
                    "lower select_eval.every (1: every epoch)")
        return self


# ----------------------------------------------------------------------------------------------
# stages
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


class FgsmConfig(Section):
    gauss_std: Annotated[float, Field(ge=0)] = 0.001
    """Start x + gauss_std * N(0, I), as the reference evaluation code."""


class PgdEvalConfig(Section):
    step: Pixels = 2 / 255
    steps: PosInt = 20


class CwEvalConfig(Section):
    step: Pixels = 2 / 255
    steps: PosInt = 20
    kappa: Annotated[float, Field(ge=0)] = 50.0


AA_ATTACKS = AA_ATTACK_NAMES


class AutoAttackConfig(Section):
    backend: Literal["pyautoattack", "torchattacks"] = "pyautoattack"
    """pyautoattack: Croce & Hein's reference code (report this); torchattacks: a cross-check."""
    version: Literal["standard", "rand", "custom"] = "standard"
    attacks: list[AutoAttackName] | None = None
    """The attacks of version custom, in order (e.g. [apgd-ce, apgd-t] on a CPU)."""
    batch_size: PosInt = 500
    n_samples: PosInt | None = None
    """AutoAttack (and so the worst case) only on the first n evaluated images (null: all of
    them); the other attacks still cover evaluate.n_samples. For CPU studies: AA costs ~10-100x PGD."""

    @model_validator(mode="after")
    def _custom_needs_attacks(self) -> "AutoAttackConfig":
        if self.version == "custom" and not self.attacks:
            raise ValueError(f"version custom needs a list of attacks from {', '.join(AA_ATTACKS)}")
        if self.version != "custom" and self.attacks:
            raise ValueError(f"attacks {self.attacks} are only used with version custom (got {self.version})")
        return self


EvalAttack = Literal["fgsm", "pgd", "cw", "aa"]


class EvaluateConfig(Section):
    n_samples: PosInt | None = None
    """Evaluate the first n test images in test-set order (null: all)."""
    batch_size: PosInt = 256
    eps: Radius = 8 / 255
    seed: NonNegInt = 0
    """Seeds every random start (per sample, so results do not depend on batching) and AutoAttack."""
    amp: bool = False
    """bf16 autocast (runtime.amp on CUDA) for clean, FGSM, PGD and CW and their verdicts; false
    (default): float32 throughout, as the reference evaluations. AutoAttack always runs in float32."""
    cascade: bool = False
    """true: each attack only on the samples robust to every earlier one (per-attack columns then
    mean 'robust to this and all earlier attacks'); false: every attack on every clean-correct
    sample. correct_worst is the same either way."""
    attacks: Annotated[list[EvalAttack], AfterValidator(lambda v: _distinct(v, "attacks", True))] = Field(default_factory=lambda: ["fgsm", "pgd", "cw", "aa"])
    fgsm: FgsmConfig = Field(default_factory=FgsmConfig)
    pgd: PgdEvalConfig = Field(default_factory=PgdEvalConfig)
    cw: CwEvalConfig = Field(default_factory=CwEvalConfig)
    aa: AutoAttackConfig = Field(default_factory=AutoAttackConfig)



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
    reference: DistillMethod = "absld"
    """The method compared against every other one (McNemar, permutation tests, Holm)."""
    classes_shown: PosInt = 10
    """How many worst and how many best classes the per-class figures and tables show when the
    dataset has more than 2 x classes_shown classes (CIFAR-100, Tiny-ImageNet): the classes are
    ranked by the reference method's class accuracy under the headline attack (PGD, else AA; the
    mean over its seeds), and a marker says how many middle classes are omitted. With at most
    2 x classes_shown classes every class is shown. Display only: Avg, Worst, NSD, the intervals
    and the tests always cover every class, and results/classwise.csv holds every class."""


class Params(Section):
    """The whole of params.yaml."""

    profile: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = "paper"
    """Which configuration this is (``paper``, or the profile that overrode it): shown by ``dvc exp
    show``, named by the report, and the default W&B group (``absld-<profile>``)."""
    seeds: Annotated[list[NonNegInt], AfterValidator(lambda v: _distinct(v, "seeds"))] = Field(default_factory=lambda: [0])
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    analyze: AnalyzeConfig = Field(default_factory=AnalyzeConfig)

    @model_validator(mode="after")
    def _validation_split_for_methods_that_measure(self) -> "Params":
        needing = [name for name in self.distill.methods if self.distill.method_config(name).validates]
        if needing and self.data.val_per_class == 0:
            raise ValueError(f"distill methods {', '.join(needing)} measure the student on the validation split "
                             "after every epoch, but data.val_per_class is 0; set it > 0 (the official FRL code "
                             "holds out 300 images per class, CFA's 2%)")
        return self


# ----------------------------------------------------------------------------------------------
# loading
MOVED_TO_ENVIRONMENT = {
    "study": "the W&B group comes from WANDB_RUN_GROUP (default absld-<profile>); name the configuration with `profile`",
    "wandb": "W&B reads WANDB_PROJECT (default absld-repro), WANDB_ENTITY and WANDB_TAGS (comma-separated)",
    "runtime.progress": "progress bars are on unless TQDM_DISABLE=1",
    "runtime.num_threads": "torch's CPU threads come from OMP_NUM_THREADS",
}
"""Settings that cannot change a result live in the environment, not in params.yaml, so that changing
them leaves every DVC stage (and the `check` stage that reads the whole file) up to date."""


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if first["type"] == "extra_forbidden":
        moved = next((why for key, why in MOVED_TO_ENVIRONMENT.items()
                      if loc == key or loc.startswith(key + ".")), None)
        if moved:
            return f"{source}: '{loc}' is not a params.yaml key: {moved}"
        return f"{source}: unknown key '{loc}'; check its spelling against params.yaml"
    if first["type"] == "literal_error":
        return f"{source}: {loc} = {first['input']!r} is not allowed; {msg[0].lower()}{msg[1:]}"
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    more = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}{shown}: {msg}{more}"


def deep_merge(base: dict, override: dict) -> dict:
    """Recursively merge ``override`` into a copy of ``base`` (override wins; lists replace)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; run from the project root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__}: {exc})".replace("\n", " "))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def parse_params(raw: dict, source: str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def load_params(path: str | Path = "params.yaml", profile: str | Path | None = None) -> Params:
    """Read and validate params.yaml (optionally merged with a profile override file)."""
    raw = read_yaml(path)
    source = str(path)
    if profile is not None:
        raw = deep_merge(raw, read_yaml(profile))
        source = f"{path} + {profile}"
    return parse_params(raw, source)


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
