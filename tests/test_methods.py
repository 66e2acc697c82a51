"""Specification of the training methods (docs/method.md §2, §7): losses, attacks, teacher use, state.

The loss tests use a 2-sample, 3-class case whose student and teacher are fixed affine maps of a
(B, 1, 1, 2) input, so every expected value is written out by hand below with ``math`` only
(softmax, log, explicit sums over classes and samples, the 1/(B*C) or 1/B reduction): a wrong
reduction, a missing t², a reversed KL or a missing weight changes the number.
The attack tests use small random conv nets on (B, 3, 8, 8) inputs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from absld.data import Batch
from absld.methods import METHODS, MethodBase, MethodContext, build_method
from absld.params import (
    AbsldConfig,
    AdaadConfig,
    ArdConfig,
    AttackConfig,
    BMtardConfig,
    CfaConfig,
    DafaConfig,
    FairArdConfig,
    FairIadConfig,
    FairRsladConfig,
    FrlRwConfig,
    FrlRwrmConfig,
    IadConfig,
    ReweightedRsladConfig,
    RsladConfig,
    SatConfig,
    TradesConfig,
    TrixConfig,
    WatConfig,
)

C = 3  # classes in every test here
B = 2  # samples in the hand-computed cases
DISTILLERS = ["rslad", "absld", "ard", "iad", "adaad", "fair_rslad", "fair_ard", "fair_iad", "reweighted_rslad",
              "b_mtard"]
NON_DISTILLERS = ["sat", "trades", "frl_rw", "frl_rwrm", "cfa", "wat", "dafa", "trix"]
DEFAULT_CONFIGS = {
    "absld": AbsldConfig, "rslad": RsladConfig, "ard": ArdConfig, "iad": IadConfig,
    "adaad": AdaadConfig, "sat": SatConfig, "trades": TradesConfig,
    "fair_rslad": FairRsladConfig, "fair_ard": FairArdConfig, "fair_iad": FairIadConfig,
    "reweighted_rslad": ReweightedRsladConfig,
    "frl_rw": FrlRwConfig, "frl_rwrm": FrlRwrmConfig, "cfa": CfaConfig, "wat": WatConfig,
    "dafa": DafaConfig, "trix": TrixConfig, "b_mtard": BMtardConfig,
}


# ----------------------------------------------------------------------------------------------
# the hand-computable case: logits_k = sum_j W[k][j] * x_j + b[k] on the flattened (1, 1, 2) input
STUDENT_W = [[2.0, -1.0], [-1.0, 3.0], [0.5, 0.5]]
STUDENT_B = [0.1, -0.2, 0.0]
TEACHER_W = [[3.0, 0.0], [0.0, 2.0], [-1.0, 1.0]]
TEACHER_B = [0.0, 0.3, -0.1]
X = [[0.2, 0.7], [0.9, 0.4]]  # clean inputs of the two samples
X_ADV = [[0.25, 0.65], [0.85, 0.45]]  # their "adversarial" inputs (passed to loss() directly)
Y = [0, 2]


class FixedAffine(nn.Module):
    """(B, 1, 1, 2) -> (B, 3) logits ``W x + b`` with hand-set W, b."""

    def __init__(self, weight: list[list[float]], bias: list[float]) -> None:
        super().__init__()
        self.linear = nn.Linear(2, C)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor(weight))
            self.linear.bias.copy_(torch.tensor(bias))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))


def affine(weight: list[list[float]], bias: list[float], v: list[float]) -> list[float]:
    return [weight[k][0] * v[0] + weight[k][1] * v[1] + bias[k] for k in range(C)]


def student_logits(v: list[float]) -> list[float]:
    return affine(STUDENT_W, STUDENT_B, v)


def teacher_logits_of(v: list[float]) -> list[float]:
    return affine(TEACHER_W, TEACHER_B, v)


def log_softmax(z: list[float]) -> list[float]:
    log_norm = math.log(sum(math.exp(z_c) for z_c in z))
    return [z_c - log_norm for z_c in z]


def softmax(z: list[float]) -> list[float]:
    return [math.exp(v) for v in log_softmax(z)]


def kl_sum(p: list[float], z: list[float]) -> float:
    """KL(p ‖ softmax(z)) summed over the classes of one sample."""
    log_q = log_softmax(z)
    return sum(p[c] * (math.log(p[c]) - log_q[c]) for c in range(C))


def cross_entropy(z: list[float], y: int) -> float:
    return -log_softmax(z)[y]


def scaled(z: list[float], t: float) -> list[float]:
    return [z_c / t for z_c in z]


def hand_batch() -> tuple[Batch, Tensor]:
    x = torch.tensor(X).reshape(B, 1, 1, 2)
    x_adv = torch.tensor(X_ADV).reshape(B, 1, 1, 2)
    return Batch(x=x, y=torch.tensor(Y), index=torch.arange(B)), x_adv


def hand_loss(name: str, cfg, kl_reduction: str = "element_mean", prepare=None) -> float:
    """Build ``name`` around the fixed teacher, run ``loss`` on the hand case, return the number."""
    teacher = FixedAffine(TEACHER_W, TEACHER_B).eval()
    uses_teacher = METHODS[name].uses_teacher
    ctx = MethodContext(num_classes=C, attack=AttackConfig(), teacher=teacher if uses_teacher else None,
                        kl_reduction=kl_reduction)
    method = build_method(name, cfg, ctx)
    if prepare is not None:
        prepare(method)
    student = FixedAffine(STUDENT_W, STUDENT_B)
    batch, x_adv = hand_batch()
    teacher_logits = None
    if uses_teacher:
        with torch.no_grad():
            teacher_logits = teacher(batch.x).float()  # as the training loop does
    return float(method.loss(student, batch, x_adv, teacher_logits).loss.detach())


# ----------------------------------------------------------------------------------------------
# 1. losses equal their hand-computed values
def test_sat_loss_is_the_batch_mean_cross_entropy_on_adversarial_inputs():
    expected = (cross_entropy(student_logits(X_ADV[0]), Y[0])
                + cross_entropy(student_logits(X_ADV[1]), Y[1])) / B
    assert hand_loss("sat", SatConfig()) == pytest.approx(expected, rel=1e-5)


def test_trades_loss_is_natural_ce_plus_beta_times_batchmean_kl_from_natural_to_adversarial():
    beta = 6.0
    natural = sum(cross_entropy(student_logits(X[i]), Y[i]) for i in range(B)) / B
    robust = sum(kl_sum(softmax(student_logits(X[i])), student_logits(X_ADV[i])) for i in range(B)) / B
    assert hand_loss("trades", TradesConfig(beta=beta)) == pytest.approx(natural + beta * robust, rel=1e-5)


def test_rslad_loss_is_five_sixths_adversarial_kl_plus_one_sixth_natural_kl_averaged_over_b_times_c():
    kl_adv = sum(kl_sum(softmax(teacher_logits_of(X[i])), student_logits(X_ADV[i])) for i in range(B))
    kl_nat = sum(kl_sum(softmax(teacher_logits_of(X[i])), student_logits(X[i])) for i in range(B))
    expected = 5 / 6 * kl_adv / (B * C) + 1 / 6 * kl_nat / (B * C)
    assert hand_loss("rslad", RsladConfig()) == pytest.approx(expected, rel=1e-5)


def test_ard_loss_with_alpha_one_is_t_squared_times_tempered_kl_from_teacher_to_adversarial_student():
    t = 2.0
    distill = sum(kl_sum(softmax(scaled(teacher_logits_of(X[i]), t)), scaled(student_logits(X_ADV[i]), t))
                  for i in range(B)) / (B * C)
    expected = t * t * distill
    assert hand_loss("ard", ArdConfig(temperature=t, alpha=1.0)) == pytest.approx(expected, rel=1e-5)


def test_ard_loss_with_alpha_half_adds_natural_cross_entropy_with_weight_one_minus_alpha():
    t, alpha = 2.0, 0.5
    distill = sum(kl_sum(softmax(scaled(teacher_logits_of(X[i]), t)), scaled(student_logits(X_ADV[i]), t))
                  for i in range(B)) / (B * C)
    natural_ce = sum(cross_entropy(student_logits(X[i]), Y[i]) for i in range(B)) / B
    expected = alpha * t * t * distill + (1 - alpha) * natural_ce
    assert hand_loss("ard", ArdConfig(temperature=t, alpha=alpha)) == pytest.approx(expected, rel=1e-5)


def test_iad_loss_up_to_epoch_begin_is_only_the_tempered_distillation_term():
    t = 2.0
    distill = sum(kl_sum(softmax(scaled(teacher_logits_of(X[i]), t)), scaled(student_logits(X_ADV[i]), t))
                  for i in range(B)) / B  # summed over classes, mean over the batch (IAD-I.py)
    cfg = IadConfig(temperature=t, beta=0.5, begin=3)
    # epochs 1..begin are trained without introspection: the method is at epoch `begin` after
    # the end of epoch begin - 1
    loss = hand_loss("iad", cfg, prepare=lambda m: m.on_epoch_end(cfg.begin - 1))
    assert loss == pytest.approx(t * t * distill, rel=1e-5)


def test_iad_loss_after_epoch_begin_adds_introspection_weighted_by_one_minus_teacher_trust():
    t, beta = 2.0, 0.5
    cfg = IadConfig(temperature=t, beta=beta, begin=3)
    distill = sum(kl_sum(softmax(scaled(teacher_logits_of(X[i]), t)), scaled(student_logits(X_ADV[i]), t))
                  for i in range(B)) / B
    trust = [softmax(teacher_logits_of(X_ADV[i]))[Y[i]] ** beta for i in range(B)]  # a_i = P_T(y_i|x'_i)^beta
    introspection = sum((1 - trust[i]) * kl_sum(softmax(student_logits(X[i])), student_logits(X_ADV[i]))
                        for i in range(B)) / B
    for reduction in ("element_mean", "batchmean"):  # IAD's own reduction, whatever distill.kl_reduction
        loss = hand_loss("iad", cfg, kl_reduction=reduction,
                         prepare=lambda m: m.on_epoch_end(cfg.begin))  # now at epoch begin + 1
        assert loss == pytest.approx(t * t * distill + introspection, rel=1e-5)


def test_adaad_loss_with_alpha_one_is_kl_from_attacked_teacher_to_attacked_student():
    kl_adv = sum(kl_sum(softmax(teacher_logits_of(X_ADV[i])), student_logits(X_ADV[i])) for i in range(B))
    expected = kl_adv / (B * C)
    assert hand_loss("adaad", AdaadConfig(alpha=1.0)) == pytest.approx(expected, rel=1e-5)


def test_adaad_loss_with_alpha_below_one_adds_the_clean_teacher_student_kl():
    alpha = 0.25
    kl_adv = sum(kl_sum(softmax(teacher_logits_of(X_ADV[i])), student_logits(X_ADV[i])) for i in range(B))
    kl_nat = sum(kl_sum(softmax(teacher_logits_of(X[i])), student_logits(X[i])) for i in range(B))
    expected = alpha * kl_adv / (B * C) + (1 - alpha) * kl_nat / (B * C)
    assert hand_loss("adaad", AdaadConfig(alpha=alpha)) == pytest.approx(expected, rel=1e-5)


def test_fair_rslad_loss_weights_each_samples_kl_terms_by_its_class_weight():
    weights = [2.0, 0.9, 0.5]

    def set_weights(method):
        method.weights = torch.tensor(weights)

    kl_adv = sum(weights[Y[i]] * kl_sum(softmax(teacher_logits_of(X[i])), student_logits(X_ADV[i]))
                 for i in range(B))
    kl_nat = sum(weights[Y[i]] * kl_sum(softmax(teacher_logits_of(X[i])), student_logits(X[i]))
                 for i in range(B))
    expected = 5 / 6 * kl_adv / (B * C) + 1 / 6 * kl_nat / (B * C)
    assert hand_loss("fair_rslad", FairRsladConfig(), prepare=set_weights) == pytest.approx(expected, rel=1e-5)


def test_reweighted_rslad_loss_weights_adversarial_and_natural_terms_by_their_own_class_weights():
    w_adv, w_nat = [1.5, 1.0, 0.7], [0.6, 1.0, 1.2]

    def set_weights(method):
        method.w_adv, method.w_nat = torch.tensor(w_adv), torch.tensor(w_nat)

    kl_adv = sum(w_adv[Y[i]] * kl_sum(softmax(teacher_logits_of(X[i])), student_logits(X_ADV[i]))
                 for i in range(B))
    kl_nat = sum(w_nat[Y[i]] * kl_sum(softmax(teacher_logits_of(X[i])), student_logits(X[i]))
                 for i in range(B))
    expected = 5 / 6 * kl_adv / (B * C) + 1 / 6 * kl_nat / (B * C)
    loss = hand_loss("reweighted_rslad", ReweightedRsladConfig(beta_milestones=[]), prepare=set_weights)
    assert loss == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# 2. the KL reduction
def test_rslad_batchmean_loss_is_exactly_num_classes_times_the_element_mean_loss():
    element_mean = hand_loss("rslad", RsladConfig(), kl_reduction="element_mean")
    batchmean = hand_loss("rslad", RsladConfig(), kl_reduction="batchmean")
    assert batchmean == pytest.approx(C * element_mean, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# 3. the inner maximisation
EPS, STEP, STEPS = 8 / 255, 2 / 255, 3
ATTACK = AttackConfig(eps="8/255", step="2/255", steps=STEPS)


class TinyConv(nn.Module):
    """conv 3->4, relu, 2x2 average pool, linear to 3 classes; (B, 3, 8, 8) -> (B, 3)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, C)
        with torch.no_grad():  # large enough logits that the softmaxes are far from uniform
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.avg_pool2d(F.relu(self.conv(x)), 2).flatten(1))


def conv_setup(name: str, seed: int = 0):
    """A method built around a random conv teacher, a random conv student in eval mode, a batch."""
    teacher = TinyConv(seed + 100).eval()
    student = TinyConv(seed).eval()
    uses_teacher = METHODS[name].uses_teacher
    clean_teacher = TinyConv(seed + 200).eval() if METHODS[name].uses_clean_teacher else None
    method = build_method(name, DEFAULT_CONFIGS[name](),
                          MethodContext(num_classes=C, attack=ATTACK, teacher=teacher if uses_teacher else None,
                                        clean_teacher=clean_teacher))
    generator = torch.Generator().manual_seed(seed + 7)
    x = torch.rand(16, 3, 8, 8, generator=generator)
    y = torch.randint(0, C, (16,), generator=generator)
    batch = Batch(x=x, y=y, index=torch.arange(16))
    teacher_logits = None
    if method.logits_teacher is not None:  # as the loop does
        with torch.no_grad():
            teacher_logits = method.logits_teacher(x)
    return method, student, teacher, batch, teacher_logits


def _kl_per_sample(p: Tensor, logits: Tensor) -> Tensor:
    return (p * (p.log() - F.log_softmax(logits, dim=1))).sum(1)


def _ce_objective(student, teacher, x, x_adv, y) -> Tensor:
    return F.cross_entropy(student(x_adv), y, reduction="none")


def _teacher_label_objective(student, teacher, x, x_adv, y) -> Tensor:
    return _kl_per_sample(F.softmax(teacher(x), dim=1), student(x_adv))


def _trades_objective(student, teacher, x, x_adv, y) -> Tensor:
    return _kl_per_sample(F.softmax(student(x), dim=1), student(x_adv))


def _adaad_objective(student, teacher, x, x_adv, y) -> Tensor:
    return _kl_per_sample(F.softmax(teacher(x_adv), dim=1), student(x_adv))


OBJECTIVES: dict[str, Callable[..., Tensor]] = {
    "sat": _ce_objective, "ard": _ce_objective, "iad": _ce_objective,
    "fair_ard": _ce_objective, "fair_iad": _ce_objective,
    "rslad": _teacher_label_objective, "absld": _teacher_label_objective,  # tau = 1 at the start
    "fair_rslad": _teacher_label_objective, "reweighted_rslad": _teacher_label_objective,
    "trades": _trades_objective, "adaad": _adaad_objective,
    "frl_rw": _trades_objective, "frl_rwrm": _trades_objective, "cfa": _trades_objective,  # before any update
    "wat": _trades_objective,
    "dafa": _trades_objective,  # before the warm-up ends
    "trix": _trades_objective,  # its targeted samples leave S(x) too
    "b_mtard": _ce_objective,
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_perturb_returns_the_input_shape_inside_the_eps_ball_and_the_unit_box(name):
    torch.manual_seed(0)
    method, student, _, batch, teacher_logits = conv_setup(name)
    x_adv = method.perturb(student, batch, teacher_logits)
    assert x_adv.shape == batch.x.shape
    assert float((x_adv - batch.x).abs().max()) <= EPS + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


@pytest.mark.parametrize("name", sorted(METHODS))
def test_perturb_increases_the_methods_own_objective_over_the_clean_input(name):
    torch.manual_seed(0)
    method, student, teacher, batch, teacher_logits = conv_setup(name)
    x_adv = method.perturb(student, batch, teacher_logits)
    objective = OBJECTIVES[name]
    with torch.no_grad():
        clean = objective(student, teacher, batch.x, batch.x, batch.y).mean()
        attacked = objective(student, teacher, batch.x, x_adv, batch.y).mean()
    assert float(attacked) > float(clean)


# ----------------------------------------------------------------------------------------------
# 4. who needs a teacher
@pytest.mark.parametrize("name", DISTILLERS)
def test_distillation_methods_declare_that_they_use_a_teacher(name):
    assert METHODS[name].uses_teacher is True


@pytest.mark.parametrize("name", DISTILLERS)
def test_building_a_distillation_method_without_a_teacher_raises_value_error(name):
    with pytest.raises(ValueError, match="teacher"):
        build_method(name, DEFAULT_CONFIGS[name](), MethodContext(num_classes=C, attack=AttackConfig()))


@pytest.mark.parametrize("name", NON_DISTILLERS)
def test_adversarial_training_methods_do_not_use_a_teacher(name):
    assert METHODS[name].uses_teacher is False
    build_method(name, DEFAULT_CONFIGS[name](), MethodContext(num_classes=C, attack=AttackConfig()))


def test_the_registry_covers_every_method():
    assert sorted(METHODS) == sorted(DISTILLERS + NON_DISTILLERS)


# ----------------------------------------------------------------------------------------------
# 5. state round trip
def _move_state(name: str, method: MethodBase) -> None:
    """Put ``method`` in a state that a freshly built one does not have."""
    if name == "iad":
        method.on_epoch_end(method.cfg.begin)  # introspection on from now
    elif name == "fair_rslad":
        method.weights = torch.tensor([2.5, 5 / 6, 1.2])
        method.kappa_sum = torch.tensor([3.0, 20.0, 7.0])
        method.count = torch.tensor([4.0, 5.0, 6.0])
    elif name == "reweighted_rslad":
        method.w_adv = torch.tensor([1.3, 0.9, 0.8])
        method.w_nat = torch.tensor([0.7, 1.1, 1.4])
        method.beta = 0.037
    elif name == "absld":
        method.tau_adv = torch.tensor([0.6, 1.0, 2.0])
        method.tau_nat = torch.tensor([1.5, 0.9, 0.5])
        method.beta = 0.01
        method.log = [{"epoch": 1, "class": 0, "tau_adv": 1.0, "tau_nat": 1.0,
                       "risk_adv": 2.0, "risk_nat": 1.0, "beta": 0.1}]
    # every method also accumulates whatever it accumulates during one step
    teacher = method.logits_teacher
    student = FixedAffine(STUDENT_W, STUDENT_B)
    batch, x_adv = hand_batch()
    teacher_logits = teacher(batch.x).detach() if teacher is not None else None
    method.loss(student, batch, x_adv, teacher_logits)


IAD_CFG = IadConfig(temperature=2.0, beta=0.5, begin=3)
STATEFUL = {
    "rslad": RsladConfig(), "absld": AbsldConfig(beta_milestones=[]), "iad": IAD_CFG,
    "fair_rslad": FairRsladConfig(), "reweighted_rslad": ReweightedRsladConfig(beta_milestones=[5]),
}


def _build_hand(name: str):
    teacher = FixedAffine(TEACHER_W, TEACHER_B).eval()
    return build_method(name, STATEFUL[name], MethodContext(num_classes=C, attack=AttackConfig(), teacher=teacher))


def _save_and_load(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _assert_same_state(a, b) -> None:
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and torch.equal(a.cpu(), b.cpu())
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same_state(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for item_a, item_b in zip(a, b):
            _assert_same_state(item_a, item_b)
    else:
        assert a == b


def _step_loss(method: MethodBase) -> float:
    student = FixedAffine(STUDENT_W, STUDENT_B)
    batch, x_adv = hand_batch()
    teacher_logits = method.teacher(batch.x).detach()
    return float(method.loss(student, batch, x_adv, teacher_logits).loss.detach())


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_state_survives_torch_save_and_weights_only_load_unchanged(name):
    method = _build_hand(name)
    _move_state(name, method)
    state = method.state_dict()
    _assert_same_state(_save_and_load(state), state)


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_a_fresh_method_loaded_from_the_state_gives_the_same_loss_and_the_same_next_epoch(name):
    original = _build_hand(name)
    _move_state(name, original)
    restored = _build_hand(name)
    restored.load_state_dict(_save_and_load(original.state_dict()))

    assert _step_loss(restored) == _step_loss(original)
    # the end of the epoch (risk sums, kappa sums, beta decay, epoch counter) comes out the same
    assert restored.on_epoch_end(5) == original.on_epoch_end(5)
    _assert_same_state(restored.state_dict(), original.state_dict())
    assert _step_loss(restored) == _step_loss(original)


@pytest.mark.parametrize("name", ["iad", "fair_rslad", "reweighted_rslad", "absld"])
def test_a_fresh_method_without_the_state_gives_a_different_loss(name):
    """Guards the round-trip test: for these methods the state does change the loss."""
    original = _build_hand(name)
    _move_state(name, original)
    assert _step_loss(_build_hand(name)) != pytest.approx(_step_loss(original), rel=1e-4)


def test_fair_rslad_state_holds_weights_and_kappa_sums():
    method = _build_hand("fair_rslad")
    _move_state("fair_rslad", method)
    state = _save_and_load(method.state_dict())
    restored = _build_hand("fair_rslad")
    restored.load_state_dict(state)
    assert torch.equal(restored.weights, torch.tensor([2.5, 5 / 6, 1.2]))
    assert torch.equal(restored.kappa_sum, torch.tensor([3.0, 20.0, 7.0]))
    assert torch.equal(restored.count, torch.tensor([4.0, 5.0, 6.0]))


def test_reweighted_rslad_state_holds_weights_and_decayed_beta():
    method = _build_hand("reweighted_rslad")
    _move_state("reweighted_rslad", method)
    restored = _build_hand("reweighted_rslad")
    restored.load_state_dict(_save_and_load(method.state_dict()))
    assert torch.equal(restored.w_adv, torch.tensor([1.3, 0.9, 0.8]))
    assert torch.equal(restored.w_nat, torch.tensor([0.7, 1.1, 1.4]))
    assert restored.beta == 0.037


def test_iad_state_holds_the_epoch():
    method = _build_hand("iad")
    method.on_epoch_end(7)
    restored = _build_hand("iad")
    restored.load_state_dict(_save_and_load(method.state_dict()))
    assert restored.epoch == method.epoch == 8


# ----------------------------------------------------------------------------------------------
# 6. Fair-RSLAD's kappa and weights
class AlwaysClassOne(nn.Module):
    """Predicts class 1 for every input in [0, 1] (a large bias), with a small input gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 4 * 4, C)
        with torch.no_grad():
            self.linear.weight.copy_(torch.linspace(-0.01, 0.01, C * 48).reshape(C, 48))
            self.linear.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))


def _fair_rslad_epoch() -> MethodBase:
    """One epoch (two batches) in which class 0 is wrong from the first PGD step, class 1 never."""
    method = build_method("fair_rslad", FairRsladConfig(),
                          MethodContext(num_classes=C, attack=ATTACK, teacher=TinyConv(5).eval()))
    student = AlwaysClassOne().eval()
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        x = torch.rand(6, 3, 4, 4, generator=generator)
        y = torch.tensor([0, 1, 0, 1, 1, 0])
        batch = Batch(x=x, y=y, index=torch.arange(6))
        teacher_logits = torch.randn(6, C, generator=generator)  # any soft labels will do
        method.perturb(student, batch, teacher_logits)
    return method


def test_fair_rslad_kappa_counts_the_pgd_steps_at_which_the_prediction_is_right():
    method = _fair_rslad_epoch()
    mean_kappa = method.kappa_sum / method.count
    assert method.count.tolist() == [6.0, 6.0, 0.0]
    assert mean_kappa[0] == 0.0  # wrong at the first step
    assert mean_kappa[1] == STEPS  # right at every step


class CorrectWrongCorrect(nn.Module):
    """Predicts class 0 on its 1st and 3rd call and class 1 on its 2nd (a small input gradient)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        bias = torch.tensor([0.0, 5.0, 0.0]) if self.calls == 2 else torch.tensor([5.0, 0.0, 0.0])
        return 0.01 * x.flatten(1)[:, :C] + bias


def test_fair_rslad_kappa_counts_every_correct_step_also_after_a_recovery():
    method = build_method("fair_rslad", FairRsladConfig(),
                          MethodContext(num_classes=C, attack=ATTACK, teacher=TinyConv(5).eval()))
    x = torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    batch = Batch(x=x, y=torch.zeros(4, dtype=torch.long), index=torch.arange(4))
    method.perturb(CorrectWrongCorrect(), batch, torch.zeros(4, C))
    # correct, wrong, correct (then correct again for the remaining steps): every correct step counts
    assert method.kappa_sum[0] / method.count[0] == STEPS - 1


def test_fair_rslad_gives_the_class_broken_first_the_larger_weight_within_the_bounds():
    method = _fair_rslad_epoch()
    cfg = method.cfg
    method.on_epoch_end(1)
    weights = method.weights
    assert float(weights[0]) > float(weights[1])
    assert float(weights.min()) >= cfg.w_min - 1e-6 and float(weights.max()) <= cfg.w_max + 1e-6
    assert float(weights[0]) == pytest.approx(cfg.w_max)  # kappa 0 dominates the normalisation
    assert float(weights[1]) == pytest.approx(cfg.w_min)


def test_fair_rslad_resets_its_kappa_sums_at_the_end_of_an_epoch():
    method = _fair_rslad_epoch()
    method.on_epoch_end(1)
    assert method.kappa_sum.tolist() == [0.0, 0.0, 0.0]
    assert method.count.tolist() == [0.0, 0.0, 0.0]


# ----------------------------------------------------------------------------------------------
# 7. re-weighted RSLAD's end-of-epoch rule
class PrefersClassesOneAndTwo(nn.Module):
    """Constant logits (0, 5, 5): CE is large for class 0 and equal for classes 1 and 2."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.0, 5.0, 5.0]))

    def forward(self, x: Tensor) -> Tensor:
        return self.bias.expand(x.shape[0], C)


def test_reweighted_rslad_raises_the_weight_of_the_riskiest_class_by_exactly_beta():
    beta = 0.1
    teacher = FixedAffine(TEACHER_W, TEACHER_B).eval()
    method = build_method("reweighted_rslad", ReweightedRsladConfig(beta_milestones=[], beta=beta),
                          MethodContext(num_classes=C, attack=AttackConfig(), teacher=teacher))
    x = torch.rand(6, 1, 1, 2, generator=torch.Generator().manual_seed(0))
    batch = Batch(x=x, y=torch.tensor([0, 1, 2, 0, 1, 2]), index=torch.arange(6))
    method.loss(PrefersClassesOneAndTwo(), batch, x, teacher(x).detach())
    # risks R = (2a, 2b, 2b) with a > b: gap = (4(a-b)/3, -2(a-b)/3, -2(a-b)/3), class 0 has max |gap|
    method.on_epoch_end(1)
    assert float(method.w_adv[0]) == pytest.approx(1.0 + beta, abs=1e-6)
    assert method.w_adv[1:].tolist() == pytest.approx([1.0 - beta / 2] * 2, abs=1e-6)
    assert float(method.w_nat[0]) == pytest.approx(1.0 + beta, abs=1e-6)


# ----------------------------------------------------------------------------------------------
# gradients that must (or must not) flow: a detach in the wrong place changes the training
class _ConstantLogits(nn.Module):
    """Logits that do not depend on the input (zero input gradient), with a parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.3, -0.2, 0.1]))

    def forward(self, x: Tensor) -> Tensor:
        return self.bias.expand(x.shape[0], C) + 0.0 * x.flatten(1).sum(1, keepdim=True)


def _grad_of(loss: Tensor, module: nn.Module) -> Tensor:
    (grad,) = torch.autograd.grad(loss, module.linear.weight)
    return grad


@pytest.mark.parametrize("detach_target", [False, True])
def test_trades_robust_term_keeps_the_gradient_through_its_target_s_of_x(detach_target):
    """TRADES' KL(S(x) ‖ S(x')) is differentiated through S(x) as well (the official code); the
    test's own detached variant shows that the comparison can tell the two apart."""
    beta = 6.0
    method = build_method("trades", TradesConfig(beta=beta), MethodContext(num_classes=C, attack=AttackConfig()))
    student = FixedAffine(STUDENT_W, STUDENT_B)
    batch, x_adv = hand_batch()
    ours = _grad_of(method.loss(student, batch, x_adv, None).loss, student)
    logits_nat, logits_adv = student(batch.x), student(x_adv)
    target = F.softmax(logits_nat, dim=1)
    target = target.detach() if detach_target else target
    robust = (target * (target.log() - F.log_softmax(logits_adv, dim=1))).sum() / B
    expected = _grad_of(F.cross_entropy(logits_nat, batch.y) + beta * robust, student)
    assert torch.allclose(ours, expected, atol=1e-6) is (not detach_target)


@pytest.mark.parametrize("detach_target", [False, True])
def test_iad_introspection_keeps_the_gradient_through_its_target_s_of_x(detach_target):
    cfg = IadConfig(temperature=1.0, beta=0.5, begin=0)  # introspection from the first epoch
    teacher = FixedAffine(TEACHER_W, TEACHER_B).eval()
    method = build_method("iad", cfg, MethodContext(num_classes=C, attack=AttackConfig(), teacher=teacher))
    student = FixedAffine(STUDENT_W, STUDENT_B)
    batch, x_adv = hand_batch()
    with torch.no_grad():
        z_t = teacher(batch.x)
        trust = F.softmax(teacher(x_adv), dim=1).gather(1, batch.y[:, None]).squeeze(1) ** 0.5
    ours = _grad_of(method.loss(student, batch, x_adv, z_t).loss, student)
    logits_nat, logits_adv = student(batch.x), student(x_adv)
    p_t = F.softmax(z_t, dim=1)
    distill = (p_t * (p_t.log() - F.log_softmax(logits_adv, dim=1))).sum() / B
    target = F.softmax(logits_nat, dim=1)
    target = target.detach() if detach_target else target
    per_sample = (target * (target.log() - F.log_softmax(logits_adv, dim=1))).sum(1)
    expected = _grad_of(distill + ((1 - trust) * per_sample).sum() / B, student)
    assert torch.allclose(ours, expected, atol=1e-6) is (not detach_target)


def test_adaad_attack_follows_the_gradient_through_the_teacher():
    """AdaAD attacks KL(T(x') ‖ S(x')) through both networks' inputs: with a student whose logits
    do not depend on x, only the teacher's gradient can move x' (a detached teacher leaves it at
    its 0.001-Gaussian start); the teacher's weights get no gradient."""
    teacher = FixedAffine(TEACHER_W, TEACHER_B).eval().requires_grad_(False)
    attack = AttackConfig(eps="8/255", step="2/255", steps=3)
    method = build_method("adaad", AdaadConfig(), MethodContext(num_classes=C, attack=attack, teacher=teacher))
    batch, _ = hand_batch()
    torch.manual_seed(0)
    x_adv = method.perturb(_ConstantLogits(), batch, teacher(batch.x))
    moved = (x_adv - batch.x).abs()
    assert moved.max().item() == pytest.approx(6 / 255, abs=1e-3)  # 3 steps of 2/255, not 0.001 noise
    assert teacher.linear.weight.grad is None


def test_the_rslad_family_starts_its_attack_at_the_unprojected_gaussian_point():
    """The official TRADES/RSLAD/ABSLD attack starts at x + 0.001 N(0, I) without clamping it to
    [0, 1]: the first gradient is taken outside the box where x is 0 or 1."""
    seen: list[Tensor] = []

    class Recorder(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            seen.append(x.detach().clone())
            return x.flatten(1).sum(1, keepdim=True) * torch.tensor([1.0, -1.0, 0.5])

    x = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).reshape(B, 1, 1, 2)
    batch = Batch(x=x, y=torch.tensor(Y), index=torch.arange(B))
    teacher_logits = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.5, 1.0]])
    for name in ("rslad", "absld"):
        seen.clear()
        cfg = RsladConfig() if name == "rslad" else AbsldConfig(beta_milestones=[])
        ctx = MethodContext(num_classes=C, attack=AttackConfig(steps=1), teacher=nn.Identity())
        torch.manual_seed(1)
        build_method(name, cfg, ctx).perturb(Recorder(), batch, teacher_logits)
        torch.manual_seed(1)
        expected = x + 0.001 * torch.randn_like(x)  # the same draw, neither clamped nor projected
        assert torch.equal(seen[0], expected), name
        assert ((expected < 0) | (expected > 1)).any()  # the case does leave the box


def test_rslad_step_output_carries_both_logits_and_its_two_kl_terms():
    """What the loop logs and ABSLD's risks read: the student's adversarial and clean logits and the
    two KL terms; the epoch end reports the spread of the class risks."""
    teacher = FixedAffine(TEACHER_W, TEACHER_B).eval()
    method = build_method("rslad", RsladConfig(), MethodContext(num_classes=C, attack=AttackConfig(), teacher=teacher))
    student = FixedAffine(STUDENT_W, STUDENT_B)
    batch, x_adv = hand_batch()
    with torch.no_grad():
        out = method.loss(student, batch, x_adv, teacher(batch.x))
    assert torch.allclose(out.logits_adv, student(x_adv)) and torch.allclose(out.logits_nat, student(batch.x))
    p = [softmax(teacher_logits_of(v)) for v in X]
    kl_adv = sum(kl_sum(p[i], student_logits(X_ADV[i])) for i in range(B)) / (B * C)
    kl_nat = sum(kl_sum(p[i], student_logits(X[i])) for i in range(B)) / (B * C)
    assert set(out.stats) == {"kl_adv", "kl_nat"}
    assert out.stats["kl_adv"].item() == pytest.approx(kl_adv, rel=1e-5)
    assert out.stats["kl_nat"].item() == pytest.approx(kl_nat, rel=1e-5)
    risk = [cross_entropy(student_logits(X_ADV[i]), Y[i]) for i in range(B)]  # classes 0 and 2
    assert method.on_epoch_end(1) == pytest.approx({"risk_adv_max_gap": max(risk)})  # class 1: risk 0
