"""FRL and CFA (the robust-fairness baselines): hand-computed losses, and their class-wise state
moved in the documented direction by hand-made statistics.

The losses reuse the 2-sample, 3-class affine case of tests/test_methods.py, so each expected value
is written with ``math`` only. The state tests feed made-up validation accuracies (FRL) or
training predictions (CFA) and check the numbers the official code's rules give.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import Tensor, nn

from absld.attacks import pgd
from absld.attacks.errors import AttackError
from absld.attacks.losses import ce_loss
from absld.data import Batch
from absld.methods import ClassAccuracy, MethodContext, build_method
from absld.methods.cfa import average_into
from absld.methods.frl import class_weights, project_multipliers
from absld.params import AttackConfig, CfaConfig, EvalAttackConfig, FrlRwConfig, FrlRwrmConfig, Params

from .test_methods import (
    STUDENT_B, STUDENT_W, X, X_ADV, Y, B, C, FixedAffine, cross_entropy, hand_batch, kl_sum, softmax,
    student_logits,
)


def frl(name: str = "frl_rw", validate=None, student=None, **cfg):
    config = (FrlRwConfig if name == "frl_rw" else FrlRwrmConfig)(**cfg)
    return build_method(name, config, MethodContext(num_classes=C, attack=AttackConfig(), student=student,
                                                    validate=validate))


def accuracy(clean: list[float], robust: list[float]) -> ClassAccuracy:
    """A made-up validation measurement of a balanced split (totals = class means)."""
    return ClassAccuracy(clean=torch.tensor(clean, dtype=torch.float64), robust=torch.tensor(robust, dtype=torch.float64), clean_total=sum(clean) / len(clean),
                         robust_total=sum(robust) / len(robust), n=300 * len(clean))


def hand_frl_loss(method) -> float:
    student = FixedAffine(STUDENT_W, STUDENT_B)
    batch, x_adv = hand_batch()
    return float(method.loss(student, batch, x_adv, None).loss.detach())


# ----------------------------------------------------------------------------------------------
# FRL: the loss
def _frl_terms() -> tuple[list[float], list[float]]:
    ce = [cross_entropy(student_logits(X[i]), Y[i]) for i in range(B)]
    boundary = [kl_sum(softmax(student_logits(X[i])), student_logits(X_ADV[i])) for i in range(B)]
    return ce, boundary


def test_frl_loss_is_two_class_weighted_means_natural_plus_beta_boundary():
    method = frl(beta=1.5, hot_start_epochs=0)  # a fair epoch
    method.lambda_nat = torch.tensor([0.3, 0.0, 0.1], dtype=torch.float64)
    method.lambda_boundary = torch.tensor([0.0, 0.2, 0.25], dtype=torch.float64)
    # w_k = 1/3 + lambda_k - sum(lambda)/3; the samples' labels are 0 and 2
    w0 = [1 / 3 + 0.3 - 0.4 / 3, 1 / 3 + 0.1 - 0.4 / 3]
    w1 = [1 / 3 + 0.0 - 0.45 / 3, 1 / 3 + 0.25 - 0.45 / 3]
    ce, boundary = _frl_terms()
    expected = ((w0[0] * ce[0] + w0[1] * ce[1]) / (w0[0] + w0[1])
                + 1.5 * (w1[0] * boundary[0] + w1[1] * boundary[1]) / (w1[0] + w1[1]))
    assert hand_frl_loss(method) == pytest.approx(expected, rel=1e-6)


def test_frl_joint_reduction_shares_one_denominator():
    method = frl(beta=1.0, loss_reduction="joint", hot_start_epochs=0)
    method.lambda_nat = torch.tensor([0.3, 0.0, 0.1], dtype=torch.float64)
    w0 = [1 / 3 + 0.3 - 0.4 / 3, 1 / 3 + 0.1 - 0.4 / 3]
    w1 = [1 / 3, 1 / 3]  # lambda_boundary = 0
    ce, boundary = _frl_terms()
    expected = sum(w0[i] * ce[i] + w1[i] * boundary[i] for i in range(B)) / (sum(w0) + sum(w1))
    assert hand_frl_loss(method) == pytest.approx(expected, rel=1e-6)


def test_frl_with_zero_multipliers_is_trades_with_batchmean_kl():
    ce, boundary = _frl_terms()
    assert hand_frl_loss(frl(beta=6.0)) == pytest.approx(sum(ce) / B + 6.0 * sum(boundary) / B, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# FRL: the multipliers
def test_class_weights_sum_to_one_and_follow_the_multipliers():
    w = class_weights(torch.tensor([0.0, 0.3, 0.1], dtype=torch.float64))
    assert w.tolist() == pytest.approx([1 / 3 - 0.4 / 3, 1 / 3 + 0.3 - 0.4 / 3, 1 / 3 + 0.1 - 0.4 / 3])
    assert float(w.sum()) == pytest.approx(1.0)


def test_projection_clamps_negatives_then_scales_a_sum_above_lim_down_to_lim():
    assert project_multipliers(torch.tensor([-0.2, 0.1, 0.05]), 0.5).tolist() == pytest.approx([0.0, 0.1, 0.05])
    assert project_multipliers(torch.tensor([-0.2, 0.6, 0.4]), 0.5).tolist() == pytest.approx([0.0, 0.3, 0.2])


def test_frl_update_raises_the_weight_of_a_class_whose_clean_error_exceeds_the_average_by_more_than_tau():
    method = frl(tau_clean=0.1, tau_boundary=0.1, rate_clean=0.05)
    # clean errors 0.1 / 0.5 / 0.3 (average 0.3): only class 1 exceeds it by more than 0.1
    # boundary errors 0.1 / 0.1 / 0.4 (average 0.2): only class 2 exceeds it by more than 0.1
    method.update(accuracy([0.9, 0.5, 0.7], [0.8, 0.4, 0.3]), fair_epoch=1)
    # g0 = err - 0.3 - 0.1 = [-0.3, 0.1, -0.1]: lambda_0 = max(0.05 g0, 0)
    assert method.lambda_nat.tolist() == pytest.approx([0.0, 0.005, 0.0])
    # g1 = [0.1, 0.1, 0.4] - 0.2 - 0.1 = [-0.2, -0.2, 0.1]: lambda_1 moves by 2 x 0.05
    assert method.lambda_boundary.tolist() == pytest.approx([0.0, 0.0, 0.01])
    w_nat, w_boundary = method.weights()
    assert int(w_nat.argmax()) == 1 and int(w_boundary.argmax()) == 2
    assert w_boundary.tolist() == pytest.approx([1 / 3 - 0.01 / 3, 1 / 3 - 0.01 / 3, 1 / 3 + 0.01 - 0.01 / 3])
    # the radius stays eps without remargin
    assert method.class_eps().tolist() == pytest.approx([8 / 255] * 3)


def test_frl_multipliers_accumulate_over_epochs_and_are_capped_at_lim():
    method = frl(tau_clean=0.0, tau_boundary=0.0, rate_clean=1.0, lim=0.3)
    for epoch in range(1, 4):
        method.update(accuracy([0.9, 0.5, 0.7], [0.8, 0.4, 0.3]), fair_epoch=epoch)
    # g0 = [-0.2, 0.2, 0.0] each time: lambda_0 = [0, 0.2], then [0, 0.4] -> projected to sum 0.3
    assert method.lambda_nat.tolist() == pytest.approx([0.0, 0.3, 0.0], abs=1e-6)


def test_frl_halves_its_rate_before_every_rate_halve_every_th_fair_epoch():
    method = frl(rate_clean=0.05, rate_halve_every=2)
    rates = []
    for epoch in range(1, 6):
        method.update(accuracy([0.9, 0.5, 0.7], [0.8, 0.4, 0.3]), fair_epoch=epoch)
        rates.append(method.rate)
    assert rates == pytest.approx([0.05, 0.025, 0.025, 0.0125, 0.0125])


def test_frl_remargin_widens_the_radius_of_a_class_with_high_boundary_error_and_clamps_the_others():
    method = frl("frl_rwrm", tau_clean=0.07, tau_boundary=0.07, rate_margin=0.2)
    method.update(accuracy([0.9, 0.5, 0.7], [0.8, 0.4, 0.3]), fair_epoch=1)
    # g1 = [0.1, 0.1, 0.4] - 0.2 - 0.07 = [-0.17, -0.17, 0.13]; lambda_2 = 0.2 g1 (not projected)
    assert method.lambda_margin.tolist() == pytest.approx([-0.034, -0.034, 0.026])
    eps = method.class_eps()
    assert eps[2] == pytest.approx(8 / 255 * math.exp(2 * 0.026))
    assert eps[:2].tolist() == pytest.approx([8 / 255 * 0.98] * 2)  # exp(-0.068) < 0.98: clamped
    method.lambda_margin = torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64)
    assert float(method.class_eps()[2]) == pytest.approx(3 * 8 / 255)  # the upper clamp


def attack_arguments(monkeypatch, module: str, method) -> dict:
    """The keyword arguments ``method.perturb`` gives the PGD engine on the hand batch (labels 0 and 2)."""
    calls = {}

    def spy(model, x, loss_fn, **kwargs):
        calls.update(kwargs)
        return x

    monkeypatch.setattr(f"absld.methods.{module}.pgd", spy)
    batch, _ = hand_batch()
    method.perturb(FixedAffine(STUDENT_W, STUDENT_B), batch, None)
    return calls


def test_frl_remargin_attacks_each_sample_in_its_class_radius_with_step_max_eps_over_4(monkeypatch):
    method = frl("frl_rwrm")
    method.lambda_margin = torch.tensor([0.0, 0.1, 0.3], dtype=torch.float64)
    calls = attack_arguments(monkeypatch, "frl", method)
    radii = [8 / 255 * max(0.98, math.exp(0.0)), 8 / 255 * math.exp(0.6)]
    assert calls["eps"].tolist() == pytest.approx(radii, rel=1e-6)
    assert calls["step"] == pytest.approx(max(radii) / 4, rel=1e-6)
    assert calls["start"] == "gaussian"


def test_frl_measures_after_the_hot_start_only_and_logs_the_class_wise_state():
    seen = []

    def validate(attack: EvalAttackConfig) -> ClassAccuracy:
        seen.append(attack.steps)
        return accuracy([0.9, 0.5, 0.7], [0.8, 0.4, 0.3])

    method = frl(validate=validate, student=nn.Linear(1, 1), hot_start_epochs=2)
    assert method.on_epoch_end(1) == {} and seen == []  # epoch 1 of 2 hot-start epochs: plain TRADES
    row = method.on_epoch_end(2)  # the last hot-start epoch: the first fair epoch's weights
    assert seen == [20]  # the code's PGD-20
    assert row["val_clean_acc"] == pytest.approx(0.7)
    assert [r["class"] for r in method.log] == [0, 1, 2] and method.log[0]["epoch"] == 2
    assert method.log[1]["clean_err"] == pytest.approx(0.5)
    assert method.log[2]["boundary_err"] == pytest.approx(0.4)


def test_frl_without_a_validation_function_says_what_it_needs():
    with pytest.raises(ValueError, match="validation split"):
        frl(hot_start_epochs=0).on_epoch_end(1)  # no hot start: epoch 1 already measures


# ----------------------------------------------------------------------------------------------
# CFA
def cfa(student=None, validate=None, **cfg):
    return build_method("cfa", CfaConfig(**cfg), MethodContext(num_classes=C, attack=AttackConfig(),
                                                               student=student, validate=validate))


def test_cfa_trades_loss_weighs_each_sample_by_its_class_b_and_averages():
    method = cfa(beta=6.0)
    method.beta = torch.tensor([2.0, 9.0, 4.0])
    ce = [cross_entropy(student_logits(X[i]), Y[i]) for i in range(B)]
    boundary = [kl_sum(softmax(student_logits(X[i])), student_logits(X_ADV[i])) for i in range(B)]
    b = [2.0 / 3.0, 4.0 / 5.0]  # beta_y / (1 + beta_y) for labels 0 and 2
    expected = sum((1 - b[i]) * ce[i] + b[i] * boundary[i] for i in range(B)) / B
    assert hand_frl_loss(method) == pytest.approx(expected, rel=1e-6)


def test_cfa_uncalibrated_trades_is_normalised_by_one_plus_beta_as_the_code():
    ce = [cross_entropy(student_logits(X[i]), Y[i]) for i in range(B)]
    boundary = [kl_sum(softmax(student_logits(X[i])), student_logits(X_ADV[i])) for i in range(B)]
    expected = (sum(ce) / B + 6.0 * sum(boundary) / B) / 7.0
    assert hand_frl_loss(cfa(beta=6.0)) == pytest.approx(expected, rel=1e-6)


def test_cfa_at_base_attacks_in_train_mode_and_trains_on_adversarial_cross_entropy():
    method = cfa(base="at")
    assert method.attack_mode == "train" and cfa().attack_mode == "eval"
    expected = sum(cross_entropy(student_logits(X_ADV[i]), Y[i]) for i in range(B)) / B
    assert hand_frl_loss(method) == pytest.approx(expected, rel=1e-6)


def _feed(method, predictions: list[int], labels: list[int]) -> None:
    """One loss call whose adversarial logits predict ``predictions`` (the robust training hits)."""

    class Predicts(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.nn.functional.one_hot(x.flatten(1)[:, 0].long(), C).float() * 10

    x = torch.tensor(predictions, dtype=torch.float32).reshape(-1, 1, 1, 1)
    method.loss(Predicts(), Batch(x=x, y=torch.tensor(labels), index=torch.arange(len(labels))), x, None)


def test_cfa_calibrates_radius_and_beta_from_last_epochs_robust_training_accuracy_from_begin_on():
    method = cfa(lambda_eps=0.3, lambda_beta=0.5, beta=6.0, begin=2, average="none")
    # class 0: 1 of 4 right, class 1: 3 of 3, class 2: 0 of 2
    _feed(method, [0, 1, 1, 2, 1, 1, 1, 0, 1], [0, 0, 0, 0, 1, 1, 1, 2, 2])
    method.on_epoch_end(1)  # before begin: unchanged
    assert method.eps.tolist() == pytest.approx([8 / 255] * 3) and method.beta.tolist() == pytest.approx([6.0] * 3)
    _feed(method, [0, 1, 1, 2, 1, 1, 1, 0, 1], [0, 0, 0, 0, 1, 1, 1, 2, 2])
    method.on_epoch_end(2)
    t = [0.25, 1.0, 0.0]
    assert method.eps.tolist() == pytest.approx([(0.3 + tk) * 8 / 255 for tk in t])
    assert method.beta.tolist() == pytest.approx([(0.5 + tk) * 6.0 for tk in t])
    # the hard class (2) gets the smallest radius and the smallest beta; the counts restart
    assert int(method.eps.argmin()) == 2 and int(method.beta.argmin()) == 2
    assert float(method.count.sum()) == 0.0
    assert [r["train_robust_acc"] for r in method.log if r["epoch"] == 2] == pytest.approx(t)


def test_cfa_attacks_each_sample_in_its_class_radius(monkeypatch):
    method = cfa()
    method.eps = torch.tensor([1 / 255, 2 / 255, 3 / 255])
    calls = attack_arguments(monkeypatch, "cfa", method)
    assert calls["eps"].tolist() == pytest.approx([1 / 255, 3 / 255]) and calls["step"] == pytest.approx(2 / 255)


def test_cfa_fawa_averages_only_epochs_whose_worst_validation_class_passes_the_threshold():
    student = nn.Linear(2, C)
    worst = iter([0.1, 0.3, 0.5, 0.2])

    def validate(attack: EvalAttackConfig) -> ClassAccuracy:
        low = next(worst)
        return accuracy([0.9, 0.9, 0.9], [low, 0.8, 0.9])

    method = cfa(student=student, validate=validate, threshold=0.24, decay=0.88, begin=100)
    weights = []
    for epoch in range(1, 5):
        with torch.no_grad():
            student.weight.fill_(float(epoch))
        weights.append(student.weight.detach().clone())
        method.on_epoch_end(epoch)
    # epoch 1 fails (0.1), epoch 2 passes first (a copy), epoch 3 passes (0.88 avg + 0.12 model), epoch 4 fails
    assert method.updates == 2
    expected = 0.88 * weights[1] + 0.12 * weights[2]
    assert torch.allclose(method.output_state()["weight"], expected)
    assert [r["fawa_update"] for r in method.log if r["class"] == 0] == [0, 1, 1, 0]


def test_cfa_average_is_every_float_entry_and_integer_counters_take_the_model():
    average = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    model = {"w": torch.tensor([3.0, 0.0]), "n": torch.tensor(7)}
    out = average_into(average, model, 0.75)
    assert out["w"].tolist() == pytest.approx([1.5, 1.5]) and int(out["n"]) == 7


def test_cfa_ema_averages_every_epoch_without_validation():
    student = nn.Linear(2, C)
    method = cfa(student=student, average="ema", decay=0.5)
    for epoch in (1, 2):
        with torch.no_grad():
            student.weight.fill_(float(epoch))
        method.on_epoch_end(epoch)
    assert torch.allclose(method.output_state()["weight"], torch.full((C, 2), 1.5))
    assert cfa(average="none").output_state() is None


def test_fair_method_state_survives_a_weights_only_round_trip():
    from .test_methods import _assert_same_state, _save_and_load

    moved_frl = frl("frl_rwrm", rate_halve_every=1)
    moved_frl.update(accuracy([0.9, 0.5, 0.7], [0.8, 0.4, 0.3]), fair_epoch=1)  # multipliers, margin, rate
    moved_frl.log = [{"epoch": 1, "class": 0, "w_nat": 0.3}]
    moved_cfa = cfa(student=nn.Linear(2, C), average="ema", begin=0)
    _feed(moved_cfa, [0, 1, 1], [0, 1, 2])
    moved_cfa.on_epoch_end(1)  # radii, betas, the average, the log
    _feed(moved_cfa, [0, 1, 1], [0, 1, 2])  # counts of an unfinished epoch
    for moved, fresh in ((moved_frl, frl("frl_rwrm")), (moved_cfa, cfa(student=nn.Linear(2, C), average="ema"))):
        fresh.load_state_dict(_save_and_load(moved.state_dict()))
        _assert_same_state(fresh.state_dict(), moved.state_dict())
        assert fresh.state_dict() != {} and fresh.log == moved.log


# ----------------------------------------------------------------------------------------------
# the per-sample radius of the attack engine, and the params checks
def test_pgd_with_per_sample_radius_keeps_each_sample_in_its_own_ball():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, C))
    x = torch.rand(4, 3, 2, 2) * 0.5 + 0.25
    eps = torch.tensor([1 / 255, 2 / 255, 4 / 255, 8 / 255])
    x_adv = pgd(model, x, ce_loss(torch.tensor([0, 1, 2, 0])), eps=eps, step=8 / 255, steps=3, start="uniform")
    reach = (x_adv - x).abs().flatten(1).max(1).values
    assert reach.tolist() == pytest.approx(eps.tolist(), abs=1e-6)  # a step of 8/255 saturates every radius


def test_pgd_refuses_a_per_sample_radius_of_the_wrong_shape_or_range():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, C))
    x = torch.rand(4, 3, 2, 2)
    with pytest.raises(AttackError, match="one radius per sample"):
        pgd(model, x, ce_loss(torch.zeros(4, dtype=torch.long)), eps=torch.full((3,), 0.01), step=0.01, steps=1,
            start="none")
    with pytest.raises(AttackError, match="fraction of 255"):
        pgd(model, x, ce_loss(torch.zeros(4, dtype=torch.long)), eps=torch.full((4,), 8.0), step=0.01, steps=1,
            start="none")


def test_params_refuse_fair_methods_without_a_validation_split():
    with pytest.raises(ValueError, match="frl_rw, cfa .*val_per_class"):
        Params.model_validate({"data": {"val_per_class": 0}, "distill": {"methods": ["sat", "frl_rw", "cfa"]}})
    Params.model_validate({"data": {"val_per_class": 0}, "distill": {"methods": ["sat"]}})


# ----------------------------------------------------------------------------------------------
# the distill stage: what CFA writes
@pytest.mark.parametrize("threshold, select", [(0.0, "weight_average"), (1.0, "last")])
def test_distill_writes_cfas_average_or_says_that_no_epoch_was_averaged(tmp_path, monkeypatch, threshold, select):
    import yaml
    from click.testing import CliRunner

    from absld.models import checkpoint_meta, load_checkpoint
    from pipeline.cli import main
    from tests.conftest import profile_params_text

    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load(profile_params_text("tiny"))
    params["distill"]["cfa"]["threshold"] = threshold  # 0: every epoch passes; 1: none (a tiny model's worst class)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert CliRunner().invoke(main, ["prepare"]).exit_code == 0
    result = CliRunner().invoke(main, ["distill", "--method", "cfa", "--seed", "0"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "models" / "students" / "cfa" / "seed0.pt"
    assert checkpoint_meta(path)["select"] == select
    assert ("averaged no epoch" in result.output) == (select == "last")
    state = (tmp_path / "results" / "distill" / "cfa" / "seed0" / "cfa_state.csv").read_text().splitlines()
    updates = [line.split(",")[-1] for line in state[1:]]
    assert set(updates) == ({"1"} if select == "weight_average" else {"0"})
    assert load_checkpoint(path).num_classes == 10
