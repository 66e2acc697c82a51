"""FRL (RW, RWRM), CFA, Fair-RSLAD and AdaAD: the slips mutation testing found unguarded.

Every expected value is re-derived here from the formula in the method's docstring
(absld/methods/<name>.py, docs/methods.md), with ``math`` on the 2-sample, 3-class affine case of
tests/test_methods.py, a plain re-computation with autograd, or numbers worked out in the comments;
none is read back from the code under test. Four slips were applied to the source by hand and seen
to fail here: FRL's per-device weight cache kept across an update, FRL's S(x) target detached, CFA
calibrated from clean hits, AdaAD's attack KL reversed; the other tests kill mutmut's mutants (an
off-by-one, a log key renamed, state left on the wrong device, ...).

Devices: the class-wise state must follow the batch's device. The tests move it to ``meta`` (a
device with shapes but no data, on every machine) and to CUDA where there is one.

"Every configured knob reaches its code" (:func:`test_every_configured_knob_reaches_its_code`):
for every field of the four methods' params sections, one value changed away from
``Params().distill.<method>`` changes what the method computes in a short scenario (its loss, its
class-wise state and log over the epochs, its attack's arguments, what it asks the validation split,
the weights it writes). Not one field is inert in a unit setting, but one field is not the method's
own: ``train`` (a TrainOverride) is read by the training loop, not by the method; what it must reach
is the recipe the distill stage trains with, ``method_config(name).train.apply(distill.train)``
(absld/train/distill.py), so that is what its case compares.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from absld.data import Batch
from absld.methods import ClassAccuracy, MethodContext, build_method
from absld.methods.cfa import STATE_COLUMNS as CFA_COLUMNS
from absld.methods.frl import STATE_COLUMNS as FRL_COLUMNS
from absld.params import AttackConfig, EvalAttackConfig, Params, load_profile

from .test_methods import (
    STUDENT_B,
    STUDENT_W,
    TEACHER_B,
    TEACHER_W,
    X_ADV,
    B,
    C,
    FixedAffine,
    X,
    Y,
    cross_entropy,
    hand_batch,
    kl_sum,
    softmax,
    student_logits,
    teacher_logits_of,
)

EPS, STEP = 8 / 255, 2 / 255
DEVICES = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])


def section(name: str, **changes):
    """``Params().distill.method_config(name)`` with ``changes`` (validated like params.yaml)."""
    cfg = Params().distill.method_config(name)
    return type(cfg).model_validate({**cfg.model_dump(exclude_unset=True), **changes}) if changes else cfg


def build(name: str, *, attack: AttackConfig | None = None, validate=None, student=None, teacher=None, **changes):
    if teacher is None and name in ("fair_rslad", "adaad"):
        teacher = FixedAffine(TEACHER_W, TEACHER_B).eval()
    return build_method(name, section(name, **changes), MethodContext(
        num_classes=C, attack=attack or AttackConfig(), teacher=teacher, student=student, validate=validate))


def accuracy(clean: list[float], robust: list[float]) -> ClassAccuracy:
    """A made-up validation measurement of a balanced split (totals = class means)."""
    return ClassAccuracy(clean=torch.tensor(clean, dtype=torch.float64),
                         robust=torch.tensor(robust, dtype=torch.float64),
                         clean_total=sum(clean) / len(clean), robust_total=sum(robust) / len(robust),
                         n=300 * len(clean))


# clean errors 0.7 / 0.1 / 0.1 (mean 0.3), boundary errors 0.2 / 0.1 / 0.5 (mean 0.8 / 3)
MEASURED = accuracy([0.3, 0.9, 0.9], [0.1, 0.8, 0.4])


def step_output(method, student: nn.Module | None = None):
    """``method.loss`` on the hand batch (clean X, adversarial X_ADV, labels 0 and 2)."""
    student = student or FixedAffine(STUDENT_W, STUDENT_B)
    batch, x_adv = hand_batch()
    teacher_logits = None
    if method.teacher is not None:
        with torch.no_grad():
            teacher_logits = method.teacher(batch.x).float()
    return method.loss(student, batch, x_adv, teacher_logits)


def hand_loss(method) -> float:
    return float(step_output(method).loss.detach())


def spy_on_pgd(monkeypatch, module: str) -> dict:
    """Replace ``absld.methods.<module>.pgd`` by a recorder that returns x unchanged."""
    calls: dict = {}

    def spy(model, x, loss_fn, **kwargs):
        calls.update(model=model, x=x, loss_fn=loss_fn, **kwargs)
        return x.detach().clone()

    monkeypatch.setattr(f"absld.methods.{module}.pgd", spy)
    return calls


def perturb_hand(method, student: nn.Module | None = None) -> None:
    student = student or FixedAffine(STUDENT_W, STUDENT_B)
    batch, _ = hand_batch()
    teacher_logits = method.teacher(batch.x).detach() if method.teacher is not None else None
    method.perturb(student, batch, teacher_logits)


def ce_terms(inputs: list[list[float]]) -> list[float]:
    return [cross_entropy(student_logits(inputs[i]), Y[i]) for i in range(B)]


def boundary_terms() -> list[float]:
    """TRADES' KL(S(x_i) ‖ S(x'_i)) of the two hand samples."""
    return [kl_sum(softmax(student_logits(X[i])), student_logits(X_ADV[i])) for i in range(B)]


def frl_weights(lam: list[float]) -> list[float]:
    """w_k = 1/C + lambda_k - (1/C) sum_j lambda_j."""
    return [1 / C + lam_k - sum(lam) / C for lam_k in lam]


def frl_expected_loss(lam_nat: list[float], lam_boundary: list[float], beta: float) -> float:
    """sum_i w0[y_i] CE_i / sum_i w0[y_i] + beta sum_i w1[y_i] KL_i / sum_i w1[y_i]."""
    w0 = [frl_weights(lam_nat)[y] for y in Y]
    w1 = [frl_weights(lam_boundary)[y] for y in Y]
    ce, kl = ce_terms(X), boundary_terms()
    return (sum(w * v for w, v in zip(w0, ce)) / sum(w0)
            + beta * sum(w * v for w, v in zip(w1, kl)) / sum(w1))


def _flat(value) -> list:
    if isinstance(value, Tensor):
        return [str(value.dtype)] + _flat(value.detach().cpu().double().flatten().tolist())
    if isinstance(value, dict):
        return [item for key in sorted(value) for item in [key] + _flat(value[key])]
    if isinstance(value, (list, tuple)):
        return [len(value)] + [item for v in value for item in _flat(v)]
    return [value]


def same(a, b, rel: float = 1e-9) -> bool:
    """Equal structure, equal strings, numbers equal to ``rel`` relative."""
    fa, fb = _flat(a), _flat(b)
    if len(fa) != len(fb):
        return False
    for u, v in zip(fa, fb):
        numbers = isinstance(u, (int, float)) and isinstance(v, (int, float)) and not isinstance(u, bool)
        if numbers and not (u is None or v is None):
            if not math.isclose(u, v, rel_tol=rel, abs_tol=1e-12):
                return False
        elif u != v:
            return False
    return True


# ==============================================================================================
# FRL
def frl(name: str = "frl_rw", **kw):
    return build(name, **kw)


def test_frl_trains_each_epoch_with_the_multipliers_of_the_update_before_it():
    """The batch-side weights are cached per device; an update must drop that cache, or the next
    epochs keep training with the weights of the first batch (uniform)."""
    method = frl(validate=lambda attack: MEASURED, student=nn.Linear(1, 1), hot_start_epochs=0, rate_clean=1.0)
    assert hand_loss(method) == pytest.approx(frl_expected_loss([0] * 3, [0] * 3, 1.5), rel=1e-5)
    method.on_epoch_end(1)
    # g0 = clean_err - 0.3 - 0.1 = [0.3, -0.3, -0.3]: lambda_0 = max(1.0 g0, 0)
    lam_nat = [0.3, 0.0, 0.0]
    # g1 = boundary_err - 0.8/3 - 0.1 = [-1/6, -4/15, 2/15]: lambda_1 = max(2 x 1.0 g1, 0), sum 4/15 < lim
    lam_boundary = [0.0, 0.0, 4 / 15]
    assert method.lambda_nat.tolist() == pytest.approx(lam_nat)
    assert method.lambda_boundary.tolist() == pytest.approx(lam_boundary)
    after_one = frl_expected_loss(lam_nat, lam_boundary, 1.5)
    assert after_one != pytest.approx(hand_loss(frl()), rel=1e-3)  # the update does change the loss
    assert hand_loss(method) == pytest.approx(after_one, rel=1e-5)
    method.on_epoch_end(2)
    # lambda_0 = [0.6, 0, 0] -> projected to sum 0.5; lambda_1 = [0, 0, 8/15] -> 0.5
    assert hand_loss(method) == pytest.approx(frl_expected_loss([0.5, 0, 0], [0, 0, 0.5], 1.5), rel=1e-5)


def test_frl_remargin_attacks_the_next_epoch_in_the_radii_of_the_update_before_it(monkeypatch):
    calls = spy_on_pgd(monkeypatch, "frl")
    method = frl("frl_rwrm", validate=lambda attack: MEASURED, student=nn.Linear(1, 1), hot_start_epochs=0)
    perturb_hand(method)
    assert calls["eps"].tolist() == pytest.approx([EPS, EPS])  # lambda_2 = 0: exp(0) = 1 in [0.98, 3]
    method.on_epoch_end(1)
    # g1 = boundary_err - 0.8/3 - 0.07; lambda_2 = 0.2 g1 (classes 0 and 2 are the hand batch's)
    g1 = [0.2 - 0.8 / 3 - 0.07, 0.1 - 0.8 / 3 - 0.07, 0.5 - 0.8 / 3 - 0.07]
    radii = [EPS * min(max(math.exp(2 * 0.2 * g1[k]), 0.98), 3.0) for k in (0, 2)]
    perturb_hand(method)
    assert calls["eps"].tolist() == pytest.approx(radii, rel=1e-6)
    assert calls["step"] == pytest.approx(max(radii) / 4, rel=1e-6)


def test_frl_trains_with_the_multipliers_of_a_loaded_state():
    moved = frl(validate=lambda attack: MEASURED, student=nn.Linear(1, 1), hot_start_epochs=0, rate_clean=1.0)
    moved.on_epoch_end(1)
    fresh = frl(hot_start_epochs=0)
    hand_loss(fresh)  # a batch before the load (the cache of the uniform weights)
    fresh.load_state_dict(moved.state_dict())
    assert hand_loss(fresh) == pytest.approx(frl_expected_loss([0.3, 0, 0], [0, 0, 4 / 15], 1.5), rel=1e-5)


@pytest.mark.parametrize("hot_start_beta, expected_beta", [(6.0, 6.0), (None, 1.5)])
def test_frl_hot_start_trains_plain_trades_with_its_own_beta_then_frls(hot_start_beta, expected_beta):
    """The hot start stands in for the code's pre-trained robust model: TRADES with TRADES's beta
    (6; null: FRL's 1.5) and uniform weights during its epochs; FRL's beta 1.5 from the first fair epoch."""
    method = frl(validate=lambda attack: MEASURED, student=nn.Linear(1, 1), hot_start_epochs=2, rate_clean=1.0,
                 hot_start_beta=hot_start_beta)
    uniform = frl_expected_loss([0] * 3, [0] * 3, expected_beta)
    assert hand_loss(method) == pytest.approx(uniform, rel=1e-5)  # epoch 1
    method.on_epoch_end(1)
    assert hand_loss(method) == pytest.approx(uniform, rel=1e-5)  # epoch 2: still the hot start
    method.on_epoch_end(2)  # the first measurement: lambda as after one update (see above)
    assert hand_loss(method) == pytest.approx(frl_expected_loss([0.3, 0, 0], [0, 0, 4 / 15], 1.5), rel=1e-5)


def test_frl_resumed_inside_the_hot_start_keeps_its_beta_and_after_it_frls():
    hot = frl(validate=lambda attack: MEASURED, student=nn.Linear(1, 1), hot_start_epochs=2)
    hot.on_epoch_end(1)
    resumed = frl(hot_start_epochs=2)
    resumed.load_state_dict(hot.state_dict())
    assert hand_loss(resumed) == pytest.approx(frl_expected_loss([0] * 3, [0] * 3, 6.0), rel=1e-5)
    hot.on_epoch_end(2)
    resumed.load_state_dict(hot.state_dict())
    assert resumed.epoch == 3 and not resumed.in_hot_start()


@pytest.mark.parametrize("detach_target", [False, True])
def test_frl_boundary_term_is_differentiated_through_its_target_s_of_x(detach_target):
    """KL(S(x) ‖ S(x')) with S(x) not detached, as TRADES and the official FRL code: the test's
    detached variant shows that the comparison tells the two apart."""
    method = frl(beta=1.5, hot_start_epochs=0)
    method.lambda_nat = torch.tensor([0.3, 0.0, 0.1], dtype=torch.float64)
    method.lambda_boundary = torch.tensor([0.0, 0.2, 0.25], dtype=torch.float64)
    student = FixedAffine(STUDENT_W, STUDENT_B)
    batch, x_adv = hand_batch()
    (ours,) = torch.autograd.grad(method.loss(student, batch, x_adv, None).loss, student.linear.weight)
    logits_nat, logits_adv = student(batch.x), student(x_adv)
    w0 = torch.tensor([frl_weights([0.3, 0.0, 0.1])[y] for y in Y])
    w1 = torch.tensor([frl_weights([0.0, 0.2, 0.25])[y] for y in Y])
    target = F.softmax(logits_nat, dim=1)
    target = target.detach() if detach_target else target
    kl_i = (target * (target.log() - F.log_softmax(logits_adv, dim=1))).sum(1)
    ce_i = F.cross_entropy(logits_nat, batch.y, reduction="none")
    expected_loss = (w0 * ce_i).sum() / w0.sum() + 1.5 * (w1 * kl_i).sum() / w1.sum()
    (expected,) = torch.autograd.grad(expected_loss, student.linear.weight)
    assert torch.allclose(ours, expected, atol=1e-6) is (not detach_target)


def test_frl_step_output_carries_both_logits_and_the_mean_terms():
    student = FixedAffine(STUDENT_W, STUDENT_B)
    batch, x_adv = hand_batch()
    out = frl().loss(student, batch, x_adv, None)
    assert torch.allclose(out.logits_adv, student(x_adv)) and torch.allclose(out.logits_nat, student(batch.x))
    assert set(out.stats) == {"loss_natural", "loss_robust"}
    assert float(out.stats["loss_natural"]) == pytest.approx(sum(ce_terms(X)) / B, rel=1e-5)
    assert float(out.stats["loss_robust"]) == pytest.approx(sum(boundary_terms()) / B, rel=1e-5)


@pytest.mark.parametrize("name", ["frl_rw", "frl_rwrm"])
def test_frl_attack_is_trades_kl_from_the_clean_prediction_in_the_class_radius(monkeypatch, name):
    calls = spy_on_pgd(monkeypatch, "frl")
    student = FixedAffine(STUDENT_W, STUDENT_B)
    method = frl(name, attack=AttackConfig(steps=5), step_rule="fixed") if name == "frl_rwrm" else \
        frl(name, attack=AttackConfig(steps=5))
    perturb_hand(method, student)
    batch, x_adv = hand_batch()
    assert calls["model"] is student and torch.equal(calls["x"], batch.x)
    assert calls["steps"] == 5 and calls["start"] == "gaussian" and calls["step"] == pytest.approx(STEP)
    eps = calls["eps"].tolist() if isinstance(calls["eps"], Tensor) else [calls["eps"]] * B
    assert eps == pytest.approx([EPS] * B)
    with torch.no_grad():
        values = calls["loss_fn"](student(x_adv)).tolist()
    assert values == pytest.approx(boundary_terms(), rel=1e-5)


def test_frl_multipliers_are_float64_from_the_first_epoch():
    """The multipliers accumulate small steps; they start (and are checkpointed) in float64."""
    state = frl("frl_rwrm").state_dict()
    assert {state[k].dtype for k in ("lambda_nat", "lambda_boundary", "lambda_margin")} == {torch.float64}


def test_frl_counts_fair_epochs_from_the_first_after_the_hot_start_for_the_rate_halving():
    """``update(acc, fair_epoch)``: the measurement after epoch e comes before fair epoch
    e - hot_start + 1; the rate halves before fair epochs 3, 6, ... (rate_halve_every 3)."""
    method = frl(validate=lambda attack: MEASURED, student=nn.Linear(1, 1), hot_start_epochs=2,
                 rate_halve_every=3, rate_clean=0.08)
    rates = []
    for epoch in range(1, 8):
        row = method.on_epoch_end(epoch)
        rates.append(row.get("frl_rate"))
    # epochs 1: hot start; 2..7 = before fair epochs 1..6
    assert rates == [None, 0.08, 0.08, 0.04, 0.04, 0.04, 0.02]


@pytest.mark.parametrize("name", ["frl_rw", "frl_rwrm"])
def test_frl_epoch_end_logs_and_returns_the_class_wise_state_it_will_train_with(name):
    method = frl(name, validate=lambda attack: MEASURED, student=nn.Linear(1, 1), hot_start_epochs=0,
                 rate_clean=1.0)
    row = method.on_epoch_end(1)
    remargin = name == "frl_rwrm"
    tau = 0.07 if remargin else 0.1
    clean_err, boundary_err = [0.7, 0.1, 0.1], [0.2, 0.1, 0.5]
    g0 = [e - 0.3 - tau for e in clean_err]
    g1 = [e - 0.8 / 3 - tau for e in boundary_err]
    lam_nat = [max(g, 0.0) for g in g0]
    lam_boundary = [max(2 * g, 0.0) for g in g1]
    lam_boundary = [v * 0.5 / sum(lam_boundary) for v in lam_boundary] if sum(lam_boundary) > 0.5 else lam_boundary
    lam_nat = [v * 0.5 / sum(lam_nat) for v in lam_nat] if sum(lam_nat) > 0.5 else lam_nat
    lam_margin = [0.2 * g for g in g1] if remargin else [0.0] * 3
    eps_255 = [8 * min(max(math.exp(2 * m), 0.98), 3.0) if remargin else 8.0 for m in lam_margin]
    w_nat, w_boundary = frl_weights(lam_nat), frl_weights(lam_boundary)
    expected_log = [{"epoch": 1, "class": k, "clean_err": clean_err[k], "boundary_err": boundary_err[k],
                     "lambda_nat": lam_nat[k], "lambda_boundary": lam_boundary[k], "lambda_margin": lam_margin[k],
                     "w_nat": w_nat[k], "w_boundary": w_boundary[k], "eps_255": eps_255[k], "rate": 1.0}
                    for k in range(C)]
    assert [list(r) for r in method.log] == [FRL_COLUMNS] * C
    assert same(method.log, expected_log)
    expected_row = {"val_clean_acc": 0.7, "val_pgd_acc": 1.3 / 3, "frl_rate": 1.0,
                    "w_nat_max": max(w_nat), "w_boundary_max": max(w_boundary),
                    **{f"w_boundary/{k}": w for k, w in enumerate(w_boundary)},
                    **({f"eps_255/{k}": e for k, e in enumerate(eps_255)} if remargin else {})}
    assert same(row, expected_row)


@pytest.mark.parametrize("name", ["frl_rw", "frl_rwrm"])
def test_frl_artefacts_are_its_state_table_and_curves(name):
    method = frl(name)
    method.log = [{"epoch": 1, "class": 0, "w_nat": 0.4}]
    art = method.artefacts(1, ["a", "b", "c"])
    assert art.tables == {"frl_state.csv": (method.log, FRL_COLUMNS)}
    keys = ["w_nat", "w_boundary"] + (["eps_255"] if name == "frl_rwrm" else [])
    assert art.curves == {"frl_state": (method.log, keys)}


# ==============================================================================================
# CFA
def cfa(**kw):
    return build("cfa", **kw)


class Encoded(nn.Module):
    """Predicts the class written in the input's first value (logits 10 one_hot): a test chooses
    what each clean and each adversarial input is classified as."""

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(1)
        return F.one_hot(flat[:, 0].round().long(), C).float() * 10 + 0.0 * flat[:, :1]


def feed(method, labels: list[int], clean_pred: list[int], adv_pred: list[int]) -> None:
    """One ``loss`` call whose clean inputs are classified ``clean_pred``, the adversarial ``adv_pred``."""
    x = torch.tensor(clean_pred, dtype=torch.float32).reshape(-1, 1, 1, 1)
    x_adv = torch.tensor(adv_pred, dtype=torch.float32).reshape(-1, 1, 1, 1)
    method.loss(Encoded(), Batch(x=x, y=torch.tensor(labels), index=torch.arange(len(labels))), x_adv, None)


# class 0: 1 of 4 adversarial inputs right, class 1: 1 of 2, class 2: its one; every clean input right
LABELS = [0, 0, 0, 0, 1, 1, 2]
ADV_PRED = [0, 1, 1, 2, 1, 0, 2]
T_ADV = [0.25, 0.5, 1.0]


@pytest.mark.parametrize("base", ["trades", "at"])
def test_cfa_calibrates_from_the_adversarial_hits_not_the_clean_ones(base):
    method = cfa(base=base, begin=1, average="none")
    feed(method, LABELS, LABELS, ADV_PRED)
    method.on_epoch_end(1)
    assert method.eps.tolist() == pytest.approx([(0.3 + t) * EPS for t in T_ADV])
    betas = [(0.5 + t) * 6.0 for t in T_ADV] if base == "trades" else [6.0] * C  # CCR: TRADES only
    assert method.beta.tolist() == pytest.approx(betas)
    assert [r["train_robust_acc"] for r in method.log] == pytest.approx(T_ADV)


def test_cfa_with_the_at_base_never_calibrates_beta():
    method = cfa(base="at", begin=0, average="none", ccr=True)
    feed(method, LABELS, LABELS, ADV_PRED)
    method.on_epoch_end(1)
    assert [r["beta"] for r in method.log] == [6.0] * C


@pytest.mark.parametrize("detach_target", [False, True])
def test_cfa_trades_boundary_term_is_differentiated_through_its_target_s_of_x(detach_target):
    method = cfa()
    method.beta = torch.tensor([2.0, 9.0, 4.0])
    student = FixedAffine(STUDENT_W, STUDENT_B)
    batch, x_adv = hand_batch()
    (ours,) = torch.autograd.grad(method.loss(student, batch, x_adv, None).loss, student.linear.weight)
    logits_nat, logits_adv = student(batch.x), student(x_adv)
    b = torch.tensor([2.0 / 3.0, 4.0 / 5.0])  # beta_y / (1 + beta_y), labels 0 and 2
    target = F.softmax(logits_nat, dim=1)
    target = target.detach() if detach_target else target
    kl_i = (target * (target.log() - F.log_softmax(logits_adv, dim=1))).sum(1)
    ce_i = F.cross_entropy(logits_nat, batch.y, reduction="none")
    (expected,) = torch.autograd.grad(((1 - b) * ce_i + b * kl_i).mean(), student.linear.weight)
    assert torch.allclose(ours, expected, atol=1e-6) is (not detach_target)


@pytest.mark.parametrize("base", ["trades", "at"])
def test_cfa_step_output(base):
    student = FixedAffine(STUDENT_W, STUDENT_B)
    batch, x_adv = hand_batch()
    out = cfa(base=base).loss(student, batch, x_adv, None)
    assert torch.allclose(out.logits_adv, student(x_adv))
    if base == "at":
        assert out.logits_nat is None and out.stats == {}
        return
    assert torch.allclose(out.logits_nat, student(batch.x))
    assert set(out.stats) == {"loss_natural", "loss_robust"}
    assert float(out.stats["loss_natural"]) == pytest.approx(sum(ce_terms(X)) / B, rel=1e-5)
    assert float(out.stats["loss_robust"]) == pytest.approx(sum(boundary_terms()) / B, rel=1e-5)


@pytest.mark.parametrize("base", ["trades", "at"])
def test_cfa_attack_arguments(monkeypatch, base):
    """AT: CE of the labels, uniform start; TRADES: KL from the clean prediction, 0.001-Gaussian
    start; both in each sample's class radius with the shared step and step count."""
    calls = spy_on_pgd(monkeypatch, "cfa")
    method = cfa(base=base, attack=AttackConfig(steps=5))
    method.eps = torch.tensor([1 / 255, 2 / 255, 3 / 255])
    student = FixedAffine(STUDENT_W, STUDENT_B)
    perturb_hand(method, student)
    batch, x_adv = hand_batch()
    assert calls["model"] is student and torch.equal(calls["x"], batch.x)
    assert calls["eps"].tolist() == pytest.approx([1 / 255, 3 / 255])
    assert calls["step"] == pytest.approx(STEP) and calls["steps"] == 5
    assert calls["start"] == ("uniform" if base == "at" else "gaussian")
    with torch.no_grad():
        values = calls["loss_fn"](student(x_adv)).tolist()
    assert values == pytest.approx(ce_terms(X_ADV) if base == "at" else boundary_terms(), rel=1e-5)


def test_cfa_at_attack_runs_pgd_on_the_cross_entropy_in_the_class_radius():
    """One real PGD step of the AT base, re-computed: uniform start in the class radius, then the
    sign of the CE gradient."""
    method = cfa(base="at", attack=AttackConfig(steps=1))
    method.eps = torch.tensor([1 / 255, 2 / 255, 4 / 255])
    student = FixedAffine(STUDENT_W, STUDENT_B)
    batch, _ = hand_batch()
    torch.manual_seed(5)
    ours = method.perturb(student, batch, None)
    radius = torch.tensor([1 / 255, 4 / 255]).reshape(B, 1, 1, 1)
    torch.manual_seed(5)
    noise = torch.empty_like(batch.x).uniform_(-1.0, 1.0)
    start = (batch.x + radius * noise).clamp(0, 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(student(start), batch.y, reduction="sum"), start)
    expected = torch.minimum(torch.maximum(start.detach() + STEP * grad.sign(), batch.x - radius), batch.x + radius)
    assert torch.allclose(ours, expected, atol=1e-7)


def test_cfa_counts_a_class_seen_once_and_leaves_an_unseen_class_at_zero():
    method = cfa(begin=0, average="none")
    feed(method, [0, 0, 1], [0, 0, 1], [0, 1, 1])  # class 0: 1 of 2, class 1: its one, class 2 unseen
    method.on_epoch_end(1)
    assert [r["train_robust_acc"] for r in method.log] == pytest.approx([0.5, 1.0, 0.0])


def test_cfa_epoch_end_logs_and_returns_the_class_wise_state():
    val = accuracy([0.9, 0.9, 0.9], [0.3, 0.8, 0.5])
    method = cfa(begin=1, student=nn.Linear(2, C), validate=lambda attack: val, threshold=0.2)
    feed(method, LABELS, LABELS, ADV_PRED)
    row = method.on_epoch_end(1)
    eps_255 = [(0.3 + t) * 8 for t in T_ADV]
    betas = [(0.5 + t) * 6.0 for t in T_ADV]
    expected_log = [{"epoch": 1, "class": k, "train_robust_acc": T_ADV[k], "eps_255": eps_255[k], "beta": betas[k],
                     "val_robust_acc": [0.3, 0.8, 0.5][k], "fawa_update": 1} for k in range(C)]
    assert [list(r) for r in method.log] == [CFA_COLUMNS] * C
    assert same(method.log, expected_log, rel=1e-6)  # eps_k, beta_k: float32 state
    expected_row = {"cfa_eps_255_min": min(eps_255), "cfa_eps_255_max": max(eps_255), "cfa_averaged_epochs": 1,
                    **{f"eps_255/{k}": e for k, e in enumerate(eps_255)}, "val_pgd_worst": 0.3}
    assert same(row, expected_row, rel=1e-6)


@pytest.mark.parametrize("average", ["ema", "none"])
def test_cfa_without_the_gate_logs_no_validation_accuracy(average):
    method = cfa(average=average, student=nn.Linear(2, C))
    row = method.on_epoch_end(1)
    assert "val_pgd_worst" not in row and [r["val_robust_acc"] for r in method.log] == [None] * C
    assert [r["fawa_update"] for r in method.log] == [int(average == "ema")] * C
    assert method.updates == int(average == "ema")


def test_cfa_gate_admits_an_epoch_whose_worst_class_equals_the_threshold():
    """FAWA averages when the worst class's validation PGD accuracy is >= the threshold."""
    def validate(attack):
        return accuracy([1.0] * 3, [0.25, 0.5, 0.75])

    method = cfa(student=nn.Linear(2, C), validate=validate, threshold=0.25)
    method.on_epoch_end(1)
    assert method.updates == 1 and method.output_state() is not None


def test_cfa_average_without_a_student_says_what_it_needs():
    with pytest.raises(ValueError, match="^CFA averages the student's weights: give MethodContext the student$"):
        cfa(average="ema").on_epoch_end(1)


def test_cfa_average_is_a_copy_of_the_student_at_that_epoch():
    student = nn.Linear(2, C)
    method = cfa(student=student, average="ema")
    with torch.no_grad():
        student.weight.fill_(1.0)
    method.on_epoch_end(1)
    with torch.no_grad():
        student.weight.fill_(7.0)  # training goes on
    assert torch.equal(method.output_state()["weight"], torch.ones(C, 2))


@pytest.mark.parametrize("average", ["fawa", "ema", "none"])
def test_cfa_artefacts(average):
    method = cfa(average=average)
    method.log = [{"epoch": 1, "class": 0, "eps_255": 8.0}]
    method.updates = 3
    art = method.artefacts(1, ["a", "b", "c"])
    assert art.tables == {"cfa_state.csv": (method.log, CFA_COLUMNS)}
    assert art.metrics == {"cfa_average": average, "cfa_averaged_epochs": 3}
    keys = ["eps_255", "beta", "train_robust_acc"] + (["val_robust_acc"] if average == "fawa" else [])
    assert art.curves == {"cfa_state": (method.log, keys)}


# ==============================================================================================
# Fair-RSLAD
def fair(**kw):
    return build("fair_rslad", **kw)


def with_kappa(method, kappa_sum: list[float], count: list[float]):
    method.load_state_dict({**method.state_dict(), "kappa_sum": torch.tensor(kappa_sum),
                            "count": torch.tensor(count)})
    return method


def test_fair_rslad_weights_are_inverse_mean_kappa_to_the_beta_normalised_to_sum_c():
    method = with_kappa(fair(beta=2.0, w_min=0.01, w_max=10.0), [3.0, 4.0, 8.0], [3.0, 2.0, 2.0])
    row = method.on_epoch_end(1)
    raw = [1.0, 1 / 4, 1 / 16]  # mean kappa 1, 2, 4
    expected = [r * C / sum(raw) for r in raw]
    assert method.weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert {k: v for k, v in row.items() if k.startswith("w/")} == pytest.approx(
        {f"w/{k}": w for k, w in enumerate(expected)}, rel=1e-6)
    assert "risk_adv_max_gap" in row  # RSLAD's epoch end still runs


def test_fair_rslad_counts_a_class_seen_once_and_gives_an_unseen_class_raw_weight_one():
    method = with_kappa(fair(beta=2.0, w_min=0.01, w_max=10.0), [2.0, 2.0, 0.0], [1.0, 2.0, 0.0])
    method.on_epoch_end(1)
    raw = [1 / 4, 1.0, 1.0]  # mean kappa 2 (one sample), 1; class 2 unseen
    assert method.weights.tolist() == pytest.approx([r * C / sum(raw) for r in raw], rel=1e-6)


def test_fair_rslad_clamps_the_normalised_weights():
    method = with_kappa(fair(), [3.0, 4.0, 8.0], [3.0, 2.0, 2.0])
    method.on_epoch_end(1)
    # normalised 16/7, 4/7, 1/7 -> clamped to [5/6, 5/2]
    assert method.weights.tolist() == pytest.approx([16 / 7, 5 / 6, 5 / 6], rel=1e-6)


def test_fair_rslad_artefacts_are_the_logged_class_weights():
    history = [{"epoch": 1, "w/0": 1.5, "w/1": 0.5, "loss": 2.0}, {"epoch": 2, "w/0": 1.2, "w/1": 0.8}]
    art = fair().artefacts(2, ["a", "b"], history)
    assert art.tables == {"weights.csv": ([{"epoch": 1, "class": 0, "w": 1.5}, {"epoch": 1, "class": 1, "w": 0.5},
                                           {"epoch": 2, "class": 0, "w": 1.2}, {"epoch": 2, "class": 1, "w": 0.8}],
                                          ["epoch", "class", "w"])}
    assert fair().artefacts(2, ["a", "b"]).tables == {"weights.csv": ([], ["epoch", "class", "w"])}


class Scripted(nn.Module):
    """Classifies sample i correctly at its first ``right[y_i]`` calls (PGD steps), wrongly after."""

    def __init__(self, labels: Tensor, right: list[int]) -> None:
        super().__init__()
        self.labels, self.right, self.calls = labels, torch.tensor(right), 0

    def forward(self, x: Tensor) -> Tensor:
        correct = self.calls < self.right[self.labels]
        self.calls += 1
        pred = torch.where(correct, self.labels, (self.labels + 1) % C)
        return F.one_hot(pred, C).float() * 5 + 0.01 * x.flatten(1)[:, :C]


# ==============================================================================================
# AdaAD
def adaad(**kw):
    return build("adaad", **kw)


def test_adaad_attack_objective_is_kl_from_the_teacher_to_the_student_on_x_prime(monkeypatch):
    calls = spy_on_pgd(monkeypatch, "adaad")
    method = adaad(attack=AttackConfig(steps=5))
    student = FixedAffine(STUDENT_W, STUDENT_B)
    perturb_hand(method, student)
    batch, x_adv = hand_batch()
    assert torch.equal(calls["x"], batch.x)
    assert calls["eps"] == pytest.approx(EPS) and calls["step"] == pytest.approx(STEP)
    assert calls["steps"] == 5 and calls["start"] == "gaussian"
    with torch.no_grad():
        values = calls["loss_fn"](calls["model"](x_adv)).tolist()
    expected = [kl_sum(softmax(teacher_logits_of(X_ADV[i])), student_logits(X_ADV[i])) for i in range(B)]
    reverse = [kl_sum(softmax(student_logits(X_ADV[i])), teacher_logits_of(X_ADV[i])) for i in range(B)]
    assert expected != pytest.approx(reverse, rel=1e-2)  # the case tells the two directions apart
    assert values == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_adaad_one_attack_step_ascends_kl_teacher_to_student_through_both_networks(reverse):
    """One real PGD step re-computed: start x + 0.001 N(0, I), then the sign of the gradient of
    sum_i KL(T(x') ‖ S(x')) through the teacher and the student; the reversed KL (the test's
    variant) steps elsewhere."""
    teacher = TinyNet(1)
    method = adaad(attack=AttackConfig(steps=1), teacher=teacher)
    student = TinyNet(0)
    x = torch.rand(8, 3, 2, 2, generator=torch.Generator().manual_seed(2)) * 0.5 + 0.25
    batch = Batch(x=x, y=torch.arange(8) % C, index=torch.arange(8))
    torch.manual_seed(4)
    ours = method.perturb(student, batch, teacher(x).detach())
    torch.manual_seed(4)
    start = (x + 0.001 * torch.randn_like(x)).requires_grad_(True)
    p, q = F.softmax(teacher(start), dim=1), F.softmax(student(start), dim=1)
    if reverse:
        p, q = q, p
    (grad,) = torch.autograd.grad((p * (p.log() - q.log())).sum(), start)
    expected = torch.minimum(torch.maximum(start.detach() + STEP * grad.sign(), x - EPS), x + EPS)
    assert torch.allclose(ours, expected, atol=1e-7) is (not reverse)


class TinyNet(nn.Module):
    """(B, 3, 2, 2) -> (B, 3): tanh layer and a linear map with seeded weights (no BatchNorm)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.hidden = nn.Linear(12, 6)
        self.out = nn.Linear(6, C)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.hidden(x.flatten(1))))


@pytest.mark.parametrize("alpha", [1.0, 0.25])
def test_adaad_step_output(alpha):
    method = adaad(alpha=alpha)
    student = FixedAffine(STUDENT_W, STUDENT_B)
    batch, x_adv = hand_batch()
    out = step_output(method, student)
    kl_adv = sum(kl_sum(softmax(teacher_logits_of(X_ADV[i])), student_logits(X_ADV[i])) for i in range(B)) / (B * C)
    kl_nat = sum(kl_sum(softmax(teacher_logits_of(X[i])), student_logits(X[i])) for i in range(B)) / (B * C)
    assert torch.allclose(out.logits_adv, student(x_adv))
    assert float(out.stats["kl_adv"]) == pytest.approx(kl_adv, rel=1e-5)
    if alpha == 1.0:  # no clean term: neither its logits nor its KL
        assert out.logits_nat is None and set(out.stats) == {"kl_adv"}
        assert float(out.loss.detach()) == pytest.approx(kl_adv, rel=1e-5)
    else:
        assert torch.allclose(out.logits_nat, student(batch.x)) and set(out.stats) == {"kl_adv", "kl_nat"}
        assert float(out.stats["kl_nat"]) == pytest.approx(kl_nat, rel=1e-5)
        assert float(out.loss.detach()) == pytest.approx(alpha * kl_adv + (1 - alpha) * kl_nat, rel=1e-5)


@pytest.mark.parametrize("alpha", [1.0, 0.25])
def test_adaad_batchmean_is_the_official_cifar100_reduction(alpha):
    """distill.adaad.kl_reduction = batchmean: each KL summed over classes and averaged over the batch,
    as the official main.py's CIFAR100 branch does ((1/B) * sum of KLDivLoss(reduce=False)); C times
    the element mean of the CIFAR10 branch, whatever distill.kl_reduction says."""
    student = FixedAffine(STUDENT_W, STUDENT_B)
    out = step_output(adaad(alpha=alpha, kl_reduction="batchmean"), student)
    kl_adv = sum(kl_sum(softmax(teacher_logits_of(X_ADV[i])), student_logits(X_ADV[i])) for i in range(B)) / B
    kl_nat = sum(kl_sum(softmax(teacher_logits_of(X[i])), student_logits(X[i])) for i in range(B)) / B
    assert float(out.stats["kl_adv"]) == pytest.approx(kl_adv, rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(alpha * kl_adv + (1 - alpha) * kl_nat, rel=1e-5)
    element = step_output(adaad(alpha=alpha), student)  # null: distill.kl_reduction (element_mean)
    assert float(out.loss.detach()) == pytest.approx(C * float(element.loss.detach()), rel=1e-5)


def test_the_cifar100_profile_reduces_adaad_as_the_official_cifar100_branch():
    assert load_profile("cifar100").distill.adaad.kl_reduction == "batchmean"
    assert load_profile("paper").distill.adaad.kl_reduction is None  # CIFAR-10: distill.kl_reduction
    assert load_profile("paper").distill.kl_reduction == "element_mean"


# ==============================================================================================
# the class-wise state follows the batch's device
def on(device: str, batch: Batch, x_adv: Tensor) -> tuple[Batch, Tensor]:
    return Batch(x=batch.x.to(device), y=batch.y.to(device), index=batch.index), x_adv.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["frl_rw", "frl_rwrm"])
def test_frl_state_follows_the_batch_to_its_device(monkeypatch, name, device):
    # max eps / 4 reads the radii's values, which a meta tensor does not have
    method = frl(name, step_rule="fixed") if name == "frl_rwrm" else frl(name)
    step_output(method)  # a CPU batch first: the cached weights must move with the next batch
    student = FixedAffine(STUDENT_W, STUDENT_B).to(device)
    batch, x_adv = on(device, *hand_batch())
    out = method.loss(student, batch, x_adv, None)
    assert out.loss.device.type == device
    calls = spy_on_pgd(monkeypatch, "frl")
    method.perturb(student, batch, None)
    if name == "frl_rwrm":
        assert calls["eps"].device.type == device
    if device != "meta":
        assert float(out.loss.detach()) == pytest.approx(hand_loss(frl(name)), rel=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_cfa_state_follows_the_batch_to_its_device(monkeypatch, device):
    method = cfa()
    student = FixedAffine(STUDENT_W, STUDENT_B).to(device)
    batch, x_adv = on(device, *hand_batch())
    calls = spy_on_pgd(monkeypatch, "cfa")
    method.perturb(student, batch, None)
    assert calls["eps"].device.type == device
    out = method.loss(student, batch, x_adv, None)
    assert out.loss.device.type == device
    assert {t.device.type for t in (method.eps, method.beta, method.correct, method.count)} == {device}


@pytest.mark.parametrize("device", DEVICES)
def test_cfa_loss_alone_moves_the_hit_counts_to_the_batchs_device(device):
    """``loss`` may come without a ``perturb`` before it (a batch of clean inputs scored again)."""
    method = cfa()
    batch, x_adv = on(device, *hand_batch())
    out = method.loss(FixedAffine(STUDENT_W, STUDENT_B).to(device), batch, x_adv, None)
    assert out.loss.device.type == device
    assert {t.device.type for t in (method.beta, method.correct, method.count)} == {device}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cfa_average_is_kept_on_the_cpu_for_a_cuda_student():
    student = nn.Linear(2, C).cuda()
    method = cfa(student=student, average="ema")
    method.on_epoch_end(1)
    average = method.output_state()
    assert {v.device.type for v in average.values()} == {"cpu"}
    assert torch.equal(average["weight"], student.weight.detach().cpu())


@pytest.mark.parametrize("device", DEVICES)
def test_fair_rslad_state_follows_the_batch_to_its_device(device):
    teacher = FixedAffine(TEACHER_W, TEACHER_B).eval().to(device)
    method = fair(teacher=teacher)
    student = FixedAffine(STUDENT_W, STUDENT_B).to(device)
    batch, x_adv = on(device, *hand_batch())
    teacher_logits = teacher(batch.x).detach()
    method.perturb(student, batch, teacher_logits)
    assert {method.kappa_sum.device.type, method.count.device.type} == {device}
    out = method.loss(student, batch, x_adv, teacher_logits)
    assert out.loss.device.type == device and method.weights.device.type == device


# ==============================================================================================
# every configured knob reaches its code
def recipe(cfg) -> dict:
    """The training recipe the distill stage gives the loop for this section."""
    return cfg.train.apply(Params().distill.train).model_dump()


def frl_scenario(name: str, cfg, monkeypatch) -> dict:
    """150 epochs of FRL's epoch ends against a fixed validation measurement, then a batch."""
    asked = []

    def validate(attack: EvalAttackConfig) -> ClassAccuracy:
        asked.append(attack.model_dump())
        return MEASURED

    method = build_method(name, cfg, MethodContext(num_classes=C, attack=AttackConfig(), student=nn.Linear(1, 1),
                                                   validate=validate))
    hot_loss = hand_loss(method)  # epoch 1: the hot start's plain TRADES
    for epoch in range(1, 151):
        method.on_epoch_end(epoch)
    calls = spy_on_pgd(monkeypatch, "frl")
    perturb_hand(method)
    return {"log": method.log, "loss": hand_loss(method), "hot_loss": hot_loss, "validation": asked[:1],
            "recipe": recipe(cfg), "attack": {"eps": calls["eps"], "step": calls["step"]}}


def cfa_scenario(cfg, monkeypatch) -> dict:
    """12 epochs of CFA: the same robust training hits each epoch, a student whose weights are the
    epoch number, a worst validation class at 0.1, 0.3, 0.5, 0.1, ...; then a batch and an attack."""
    asked, worst = [], itertools.cycle([0.1, 0.3, 0.5])

    def validate(attack: EvalAttackConfig) -> ClassAccuracy:
        asked.append(attack.model_dump())
        return accuracy([0.9] * 3, [next(worst), 0.8, 0.9])

    student = nn.Linear(2, C)
    method = build_method("cfa", cfg, MethodContext(num_classes=C, attack=AttackConfig(), student=student,
                                                    validate=validate))
    for epoch in range(1, 13):
        feed(method, LABELS, LABELS, ADV_PRED)
        with torch.no_grad():
            student.weight.fill_(float(epoch))
        method.on_epoch_end(epoch)
    calls = spy_on_pgd(monkeypatch, "cfa")
    perturb_hand(method)
    average = method.output_state()
    return {"log": method.log, "loss": hand_loss(method), "validation": asked[:1], "recipe": recipe(cfg),
            "attack": {"eps": calls["eps"], "start": calls["start"]},
            "average": None if average is None else average["weight"]}


def fair_rslad_scenario(cfg, monkeypatch) -> dict:
    """One epoch whose 4-step attacks keep classes 0, 1, 2 right for 1, 2, 4 steps; then a batch."""
    method = build_method("fair_rslad", cfg, MethodContext(num_classes=C, attack=AttackConfig(steps=4),
                                                           teacher=FixedAffine(TEACHER_W, TEACHER_B).eval()))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    x = torch.rand(6, 3, 1, 1, generator=torch.Generator().manual_seed(0))
    method.perturb(Scripted(y, [1, 2, 4]), Batch(x=x, y=y, index=torch.arange(6)), torch.zeros(6, C))
    method.on_epoch_end(1)
    return {"weights": method.weights, "loss": hand_loss(method), "recipe": recipe(cfg)}


def adaad_scenario(cfg, monkeypatch) -> dict:
    return {"loss": hand_loss(build_method("adaad", cfg, MethodContext(
        num_classes=C, attack=AttackConfig(), teacher=FixedAffine(TEACHER_W, TEACHER_B).eval()))),
        "recipe": recipe(cfg)}


SCENARIOS = {
    "frl_rw": lambda cfg, mp: frl_scenario("frl_rw", cfg, mp),
    "frl_rwrm": lambda cfg, mp: frl_scenario("frl_rwrm", cfg, mp),
    "cfa": cfa_scenario, "fair_rslad": fair_rslad_scenario, "adaad": adaad_scenario,
}
TRAIN = {"lr": 0.05}  # merged into the section's own train override
FRL_KNOBS = [
    ("beta", 3.0, "loss"), ("tau_clean", 0.0, "log"), ("tau_boundary", 0.0, "log"), ("rate_clean", 0.1, "log"),
    ("boundary_rate_scale", 1.0, "log"), ("rate_halve_every", 10, "log"), ("lim", 0.2, "log"),
    ("loss_reduction", "joint", "loss"), ("hot_start_epochs", 50, "log"), ("hot_start_beta", 1.0, "hot_loss"),
    ("validation", {"steps": 5}, "validation"), ("train", TRAIN, "recipe"),
]
KNOBS = {
    "frl_rw": FRL_KNOBS,
    "frl_rwrm": FRL_KNOBS + [("rate_margin", 0.5, "log"), ("margin_min", 0.5, "log"), ("margin_max", 1.5, "log"),
                             ("step_rule", "fixed", "attack")],
    "cfa": [
        ("base", "at", "loss"), ("beta", 3.0, "loss"), ("ccm", False, "log"), ("ccr", False, "log"),
        ("lambda_eps", 0.5, "log"), ("lambda_beta", 1.0, "log"), ("begin", 3, "log"), ("average", "ema", "average"),
        ("decay", 0.5, "average"), ("threshold", 0.4, "log"), ("validation", {"steps": 5}, "validation"),
        ("train", TRAIN, "recipe"),
    ],
    "fair_rslad": [
        ("adv_weight", 0.5, "loss"), ("nat_weight", 0.5, "loss"), ("kl_scale", 2.0, "loss"), ("beta", 1.0, "weights"),
        ("w_min", 0.5, "weights"), ("w_max", 2.0, "weights"), ("train", TRAIN, "recipe"),
    ],
    "adaad": [("alpha", 0.5, "loss"), ("kl_reduction", "batchmean", "loss"), ("train", TRAIN, "recipe")],
}


def test_the_knob_table_names_every_field_of_the_four_methods_sections():
    for name, knobs in KNOBS.items():
        assert sorted(field for field, _, _ in knobs) == sorted(type(section(name)).model_fields), name


@pytest.mark.parametrize("name, field, value, probe",
                         [(name, *knob) for name, knobs in KNOBS.items() for knob in knobs],
                         ids=[f"{name}-{knob[0]}" for name, knobs in KNOBS.items() for knob in knobs])
def test_every_configured_knob_reaches_its_code(monkeypatch, name, field, value, probe):
    base = section(name)
    if isinstance(value, dict):  # a nested section: change one key of it
        value = {**getattr(base, field).model_dump(exclude_unset=True), **value}
    changed = section(name, **{field: value})
    assert getattr(changed, field) != getattr(base, field)
    assert not same(SCENARIOS[name](changed, monkeypatch)[probe], SCENARIOS[name](base, monkeypatch)[probe])
