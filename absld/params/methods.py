"""``distill.<method>`` (and ``teacher.sat``/``teacher.trades``): each training method's own settings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BeforeValidator,
    Field,
    model_validator,
)

from .common import KLReduction, NonNegInt, Num, PosInt, Prob, Section, TemperatureMode, _parse_fraction
from .training import EvalAttackConfig, TrainOverride


class MethodConfig(Section):
    train: TrainOverride = Field(default_factory=TrainOverride)
    """Changes to the shared training recipe for this method only."""

    @property
    def validates(self) -> bool:
        """Whether the method measures the student on the validation split between epochs."""
        return False

    @property
    def first_selectable_epoch(self) -> int:
        """The first epoch (1-based) whose checkpoint the method itself trained: checkpoint selection
        (distill.select val_fair_best / test_fair_best) never evaluates or picks an earlier one."""
        return 1


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


class AbsldConfig(RiskRuleConfig):
    """ABSLD (Zhao et al., NeurIPS 2024): RSLAD with class-wise teacher temperatures (docs/method.md §2-3)."""

    tau_init: Annotated[float, BeforeValidator(_parse_fraction), Field(gt=0)] = 1.0
    tau_min: Annotated[float, BeforeValidator(_parse_fraction), Field(gt=0)] = 0.5
    tau_max: Annotated[float, BeforeValidator(_parse_fraction), Field(gt=0)] = 5.0
    temperature_mode: TemperatureMode = "separate"
    """separate: tau_adv for the attack and KL_adv, tau_nat for KL_nat (the intent); aliased: the
    product tau_adv[y] * tau_nat[y] everywhere (the released code, docs/method.md §4)."""

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
    """Fair-ARD's re-weighting (Yue et al., NeurIPS 2023) on RSLAD: w_k ∝ (1/mean kappa_k)^beta."""

    beta: Annotated[float, Field(ge=0)] = 2.0
    w_min: Num = 5 / 6
    w_max: Num = 5 / 2
    train: TrainOverride = Field(default_factory=lambda: TrainOverride(nesterov=True))
    """The official Fair-RSLAD/Fair-ARD scripts use Nesterov momentum."""


class ArdConfig(MethodConfig):
    """ARD (Goldblum et al., AAAI 2020): alpha t^2 KL(T(x)/t || S(x')/t) + (1-alpha) CE(S(x), y)."""

    temperature: Annotated[float, Field(gt=0)] = 30.0
    alpha: Prob = 1.0
    train: TrainOverride = Field(
        default_factory=lambda: TrainOverride(epochs=200, milestones=[100, 150], lr_decay="from_base")
    )
    """The released code's recipe: 200 epochs, lr 0.1 -> 0.01 after epoch 100 and still 0.01 after
    150 (lr_decay from_base scales the base rate; the intent: cumulative)."""


class IadConfig(MethodConfig):
    """IAD (Zhu et al., ICLR 2022): ARD with the teacher's reliability a_i = P_T(y|x')^beta."""

    temperature: Annotated[float, Field(gt=0)] = 1.0
    beta: Annotated[float, Field(ge=0)] = 0.1
    begin: NonNegInt = 60
    """Epoch after which introspection (the (1 - a_i) self-distillation term) starts."""
    train: TrainOverride = Field(
        default_factory=lambda: TrainOverride(epochs=200, milestones=[100, 150], lr_decay="from_base")
    )
    """The released code's recipe, as ARD's: 200 epochs, milestones 100 and 150, lr_decay from_base."""


def _check_weight_bounds(cfg):
    if cfg.w_min > cfg.w_max:
        raise ValueError(f"need w_min <= w_max, got w_min {cfg.w_min} and w_max {cfg.w_max}")
    return cfg


class FairArdConfig(ArdConfig):
    """Fair-ARD (Yue et al., NeurIPS 2023): ARD's KL and CE terms weighted per sample by w[y],
    w_k ∝ (1/mean kappa_k)^beta (absld/methods/fair_ard.py)."""

    beta: Annotated[float, Field(ge=0)] = 2.0
    w_min: Annotated[float, BeforeValidator(_parse_fraction), Field(gt=0)] = 5 / 6
    w_max: Annotated[float, BeforeValidator(_parse_fraction), Field(gt=0)] = 5 / 2
    train: TrainOverride = Field(default_factory=lambda: TrainOverride(
        epochs=200, milestones=[100, 150], lr_decay="from_base", nesterov=True))
    """ARD's released recipe with Nesterov momentum (Fair-ARD.py:14-16,30-34,160)."""

    _bounds = model_validator(mode="after")(_check_weight_bounds)


class FairIadConfig(MethodConfig):
    """Fair-IAD (Yue et al., NeurIPS 2023): IAD's two KL terms weighted per sample by w[y],
    w_k ∝ (1/mean kappa_k)^beta; IAD's own exponent is beta_iad (absld/methods/fair_iad.py)."""

    temperature: Annotated[float, Field(gt=0)] = 1.0
    beta_iad: Annotated[float, Field(ge=0)] = 0.1
    """IAD's a_i = P_T(y|x')^beta_iad (distill.iad.beta)."""
    begin: NonNegInt = 60
    """Epoch after which introspection (the (1 - a_i) self-distillation term) starts."""
    beta: Annotated[float, Field(ge=0)] = 2.0
    """The re-weighting exponent, as in fair_rslad and fair_ard."""
    w_min: Annotated[float, BeforeValidator(_parse_fraction), Field(gt=0)] = 5 / 6
    w_max: Annotated[float, BeforeValidator(_parse_fraction), Field(gt=0)] = 5 / 2
    train: TrainOverride = Field(default_factory=lambda: TrainOverride(
        epochs=200, milestones=[100, 150], lr_decay="from_base", nesterov=True))
    """IAD's released recipe with Nesterov momentum (Fair-IAD.py:14-16,45-49,214)."""

    _bounds = model_validator(mode="after")(_check_weight_bounds)


class AdaadConfig(MethodConfig):
    """AdaAD (Huang et al., AAAI 2023): the teacher is attacked too; KL(T(x') || S(x'))."""

    alpha: Prob = 1.0
    """alpha KL(T(x')||S(x')) + (1 - alpha) KL(T(x)||S(x))."""
    kl_reduction: KLReduction | None = None
    """The KL's reduction for AdaAD alone; null: distill.kl_reduction. The official main.py reduces by
    dataset: ``nn.KLDivLoss()`` (element mean over B x C) in its CIFAR10 branch, the sum over the batch
    divided by B (batchmean) in its CIFAR100 branch (boyellow/AdaAD main.py, the AdaAD method's
    ``if args.dataset == 'CIFAR100'``); the cifar100 profile sets batchmean."""
    train: TrainOverride = Field(
        default_factory=lambda: TrainOverride(epochs=200, milestones=[100, 150], weight_decay=5e-4)
    )
    """200 epochs, lr x 0.1 after epochs 100 and 150, weight decay 5e-4."""


class FrlConfig(MethodConfig):
    """FRL (Xu et al., ICML 2021), as the official code (hannxu123/fair_robust) runs it: TRADES whose
    natural and boundary terms are re-weighted per class by Lagrange multipliers that grow with each
    class's clean / boundary error on the validation split, measured by PGD after every epoch
    (:mod:`absld.methods.frl`). ``frl_rwrm`` also widens the attack radius of classes with a high
    boundary error (remargin). The defaults are the code's (HEAD a80547d), except the hot start and
    the training recipe, which the code does not release (it fine-tunes a pre-trained robust model)."""

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
    hot_start_epochs: NonNegInt = 100
    """Epochs of plain TRADES (uniform weights, no multiplier update) before the fair epochs: the
    code fine-tunes a pre-trained robust model whose recipe it does not release (frlrw.py:21)."""
    hot_start_beta: Annotated[float, BeforeValidator(_parse_fraction), Field(ge=0)] | None = 6.0
    """TRADES weight during the hot start, which stands in for the code's pre-trained robust model:
    6, TRADES's own (our ``distill.trades.beta``); null: FRL's ``beta``."""

    @property
    def first_selectable_epoch(self) -> int:
        """The first fair epoch: the hot start's checkpoints are plain TRADES, never FRL's."""
        return self.hot_start_epochs + 1
    validation: EvalAttackConfig = Field(default_factory=lambda: EvalAttackConfig(steps=20))
    """The PGD (CE, uniform start) that measures the class-wise errors on the validation split
    (n_samples: its first n images, null: all)."""
    train: TrainOverride = Field(
        default_factory=lambda: TrainOverride(epochs=140, weight_decay=5e-4, milestones=[75, 90])
    )
    """100 hot-start epochs (lr 0.1 -> 0.001 at epochs 75 and 90), then 40 fair epochs at 1e-3 (the
    code's fine-tuning lr)."""

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
    model (:mod:`absld.methods.cfa`). The official train.py's own defaults except lambda_eps (the
    paper's 0.3 for TRADES) and CCM/CCR, which its argparse leaves off unless ``--ccm``/``--ccr`` are
    passed (``action='store_true'``): on here, as the paper's CFA runs them."""

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
    train: TrainOverride = Field(
        default_factory=lambda: TrainOverride(epochs=200, weight_decay=5e-4, milestones=[100, 150])
    )
    """The code's recipe: 200 epochs, lr 0.1 divided by 10 at 50% and 75%, weight decay 5e-4."""

    @property
    def validates(self) -> bool:
        return self.average == "fawa"


class WatConfig(MethodConfig):
    """WAT (Li & Liu, AAAI 2023), as the official code (boqili/WAT, 62d1184) runs it: TRADES whose
    per-sample loss is weighted by w_{y_i} + w_avg, the C + 1 weights (one per class and one for the
    average) an exponentiated-gradient (Hedge) step on the cumulative class-wise TRADES loss of the
    validation split, measured after every epoch (:mod:`absld.methods.wat`). The script's own
    defaults (``worst_class_adversarial_train.py``), its README's command (``--beta 6.0 --eta 0.1``)."""

    beta: Annotated[float, BeforeValidator(_parse_fraction), Field(ge=0)] = 6.0
    """TRADES weight of the KL term, in the training loss and in the validation cost (``--beta``, :25)."""
    eta: Annotated[float, BeforeValidator(_parse_fraction), Field(ge=0)] = 0.1
    """Hedge's step: w = C softmax(eta * the summed validation costs of every epoch so far) (``--eta``, :37)."""
    validation: EvalAttackConfig = Field(default_factory=lambda: EvalAttackConfig(steps=10))
    """The TRADES attack (KL(S(x) || S(x')), start x + 0.001 N(0, I), eval mode) of the validation
    measurement, on the first n_samples images of the validation split (null: all); the code attacks
    the validation images with its training attack (:135, eps 0.031, step 0.007, 10 steps)."""
    train: TrainOverride = Field(default_factory=lambda: TrainOverride(epochs=100, milestones=[74, 89, 99]))
    """The code's recipe (:16-19, :165-177): 100 epochs, lr 0.1 x 0.1 from epoch 75, 90 and 100
    (``epoch + 1 >= 75`` ...: the rate drops after epochs 74, 89 and 99), momentum 0.9, wd 2e-4."""

    @property
    def validates(self) -> bool:
        return True


class DafaConfig(MethodConfig):
    """DAFA (Lee et al., ICLR 2024), as the official code (rucy74/DAFA) runs it: TRADES whose CE term
    and attack radius and step are scaled per class by weights W computed once, at the end of the
    warm-up epoch, from the class-wise mean predictions on the training adversarial examples
    (:mod:`absld.methods.dafa`). Defaults: arguments.py and scripts/trades_dafa.sh at HEAD c60ba83."""

    beta: Annotated[float, BeforeValidator(_parse_fraction), Field(ge=0)] = 6.0
    """TRADES weight of the KL term (arguments.py:57)."""
    warmup: PosInt = 70
    """The epoch during which the predictions are recorded and after which W is computed (--dafa_warmup)."""
    lam: Annotated[float, BeforeValidator(_parse_fraction), Field(ge=0)] = 1.0
    """Scale of the weight transfer (--dafa_lambda: 1.0 CIFAR-10; 1.5 CIFAR-100 and STL-10)."""
    weight_rule: Literal["algorithm", "first_release"] = "algorithm"
    """algorithm: the paper's Algorithm 2 and utils.py at HEAD; first_release: utils.py before 74657cd,
    whose easier class loses p_k(j) p_j(j) instead of p_j(k) p_k(k)."""
    reweight: bool = True
    """W_{y_i} weighs each sample's CE term (the KL term is never weighted, as the code)."""
    remargin: bool = True
    """The attack radius and step of a sample are W_{y_i} eps and W_{y_i} step (the class-wise margin)."""
    train: TrainOverride = Field(
        default_factory=lambda: TrainOverride(epochs=110, weight_decay=5e-4, nesterov=True, milestones=[99, 104])
    )
    """The code's recipe: 110 epochs, lr 0.1 x 0.1 from epoch 100 and x 0.01 from 105 ("bag_of_tricks"),
    weight decay 5e-4, Nesterov (train.py:32 negates the --nesterov flag)."""


class TrixConfig(DafaConfig):
    """TRIX (Medi et al., arXiv 2507.07768), as the official code (Fairness-a11y/TRIX) runs it: DAFA
    whose attack is targeted (towards a random other class, descending CE) for the samples of the
    batch's strong classes and TRADES' untargeted KL attack for the others (:mod:`absld.methods.trix`).
    Its per-batch split has no setting of its own: the lam of its batch weights (the code: 1.0) moves
    no class across the batch mean."""

    train: TrainOverride = Field(
        default_factory=lambda: TrainOverride(epochs=150, weight_decay=5e-4, nesterov=True, milestones=[139, 144])
    )
    """The code's recipe: 150 epochs (arguments.py:32), lr x 0.1 from epoch 140 and x 0.01 from 145,
    weight decay 5e-4, Nesterov (train.py:20)."""


class BMtardConfig(MethodConfig):
    """B-MTARD (Zhao, Wang, Wei; TPAMI 2024): distil a clean teacher on x and the robust teacher on x',
    the two KL terms weighted by loss-ratio-balanced weights and the two teachers' temperatures moved
    to balance their entropies after every step (:mod:`absld.methods.b_mtard`). The defaults are the
    official ``resnet18_mtard_cifar10.py`` (zhaoshiji123/MTARD-extension, HEAD 93506d6)."""

    weight_init: Annotated[float, BeforeValidator(_parse_fraction), Field(gt=0, lt=1)] = 0.5
    """The robust (adversarial) term's initial weight; the clean term's is 1 - weight_init (lines 47-50)."""
    weight_lr: Annotated[float, BeforeValidator(_parse_fraction), Field(ge=0, le=1)] = 0.025
    """Step of the weights towards the normalised loss ratios, every batch (line 83: weight_learn_rate)."""
    temp_init: Annotated[float, BeforeValidator(_parse_fraction), Field(gt=0)] = 1.0
    """Both teachers' initial temperature (lines 90-91)."""
    temp_lr: Annotated[float, BeforeValidator(_parse_fraction), Field(ge=0)] = 0.001
    """Step of each temperature per batch, against the sign of the entropy gap (line 84: temp_learn_rate);
    0: fixed temperatures, i.e. MTARD (ECCV 2022) with temperature temp_init."""
    temp_min: Annotated[float, BeforeValidator(_parse_fraction), Field(gt=0)] = 1.0
    temp_max: Annotated[float, BeforeValidator(_parse_fraction), Field(gt=0)] = 10.0
    """Each temperature is clamped to [temp_min, temp_max] after each update (lines 93-94, 133-134)."""
    rate_milestones: list[PosInt] | None = None
    """Epochs at whose end weight_lr and temp_lr are multiplied by rate_gamma; null: the method's LR
    milestones (the code decays both with the learning rate, lines 234-238)."""
    rate_gamma: Annotated[float, Field(gt=0, le=1)] = 0.1

    @model_validator(mode="after")
    def _temperature_bounds(self) -> "BMtardConfig":
        if not self.temp_min <= self.temp_init <= self.temp_max:
            raise ValueError(f"need temp_min <= temp_init <= temp_max, got {self.temp_min}, "
                             f"{self.temp_init}, {self.temp_max}")
        return self
