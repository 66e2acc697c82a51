"""WAT (Li & Liu, AAAI 2023; absld/methods/wat.py): hand-computed loss, validation cost and Hedge
weights, every knob, exact resume, and short runs through the real loop and the distill stage.

The loss reuses the 2-sample, 3-class affine case of tests/test_methods.py. The validation tests
measure the same affine student on a 4-image split (two images of class 0, so that the average
expert's image mean differs from the mean of the class means), with the attack replaced by a fixed
shift x' = x + DELTA: every expected number below is written with ``math`` from the formulas of the
module docstring (worst_class_adversarial_train.py:94-105, :140-157, :244-248), none read back from
the code under test.
"""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from absld.data import Batch, TensorLoader
from absld.methods import MethodContext, build_method
from absld.methods.wat import STATE_COLUMNS, hedge_weights
from absld.models import build_model
from absld.params import AttackConfig, EvalAttackConfig, Params, TrainConfig, WatConfig
from absld.runtime import Runtime
from absld.train.loop import fit, learning_rate

from .test_methods import (
    STUDENT_B, STUDENT_W, X, X_ADV, Y, B, C, FixedAffine, cross_entropy, hand_batch, kl_sum, softmax,
    student_logits,
)

CPU = Runtime(device=torch.device("cpu"), amp=False, channels_last=False, progress=False)
DEVICES = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])

VAL_X = [[0.2, 0.7], [0.9, 0.4], [0.5, 0.5], [0.1, 0.3]]
VAL_Y = [0, 2, 1, 0]
DELTA = [0.05, -0.05]  # the stand-in attack: x' = x + DELTA


def section(**changes) -> WatConfig:
    """``Params().distill.wat`` with ``changes`` (validated like params.yaml)."""
    cfg = Params().distill.method_config("wat")
    return WatConfig.model_validate({**cfg.model_dump(exclude_unset=True), **changes}) if changes else cfg


def fake_pass(asked: list | None = None, student: nn.Module | None = None):
    """A ValidationPass over VAL_X in ``attack.batch_size`` batches (first ``n_samples``), generator seed 0."""
    student = student or FixedAffine(STUDENT_W, STUDENT_B)
    x_all = torch.tensor(VAL_X).reshape(-1, 1, 1, 2)
    y_all = torch.tensor(VAL_Y)

    def validation_pass(attack: EvalAttackConfig, measure) -> torch.Tensor | None:
        if asked is not None:
            asked.append(attack.model_dump())
        n = attack.n_samples or len(VAL_Y)
        generator = torch.Generator().manual_seed(0)
        sums = [measure(student, Batch(x=x_all[part], y=y_all[part], index=torch.arange(n)[part]), generator)
                for part in (slice(start, min(n, start + attack.batch_size)) for start in range(0, n, attack.batch_size))]
        return sum(sums[1:], sums[0]) if sums else None

    return validation_pass


def wat(cfg: WatConfig | None = None, validation_pass=None, **changes):
    return build_method("wat", cfg or section(**changes), MethodContext(
        num_classes=C, attack=AttackConfig(), student=nn.Linear(1, 1),
        validation_pass=validation_pass if validation_pass is not None else fake_pass()))


@pytest.fixture
def shifted(monkeypatch) -> list[dict]:
    """The validation attack replaced by x' = x + DELTA; returns the recorded calls."""
    calls: list[dict] = []

    def attack(model, x, loss_fn, **kwargs):
        calls.append({"x": x, "loss_fn": loss_fn, **kwargs})
        return x + torch.tensor(DELTA).reshape(1, 1, 1, 2)

    monkeypatch.setattr("absld.methods.wat.pgd", attack)
    return calls


def hand_loss(method) -> float:
    batch, x_adv = hand_batch()
    return float(method.loss(FixedAffine(STUDENT_W, STUDENT_B), batch, x_adv, None).loss.detach())


def trades_terms(x: list[list[float]], x_adv: list[list[float]], y: list[int]) -> tuple[list[float], list[float]]:
    ce = [cross_entropy(student_logits(x[i]), y[i]) for i in range(len(y))]
    boundary = [kl_sum(softmax(student_logits(x[i])), student_logits(x_adv[i])) for i in range(len(y))]
    return ce, boundary


def val_costs(beta: float, n: int = len(VAL_Y)) -> list[float]:
    """[class 0, class 1, class 2, average] of the validation TRADES loss on the first n images."""
    x_adv = [[v[0] + DELTA[0], v[1] + DELTA[1]] for v in VAL_X]
    ce, boundary = trades_terms(VAL_X[:n], x_adv[:n], VAL_Y[:n])
    cost = [ce[i] + beta * boundary[i] for i in range(n)]
    per_class = []
    for k in range(C):
        mine = [cost[i] for i in range(n) if VAL_Y[i] == k]
        per_class.append(sum(mine) / len(mine))
    return per_class + [sum(cost) / n]


def hedge(summed: list[float], eta: float) -> list[float]:
    exps = [math.exp(eta * s) for s in summed]
    return [C * e / sum(exps) for e in exps]


# ----------------------------------------------------------------------------------------------
# the loss
def test_wat_loss_weighs_each_samples_trades_loss_by_its_class_weight_plus_the_average_weight():
    method = wat(beta=2.5)
    method.weights = torch.tensor([0.5, 1.2, 0.9, 0.4], dtype=torch.float64)
    ce, boundary = trades_terms(X, X_ADV, Y)  # labels 0 and 2
    expected = ((0.5 + 0.4) * (ce[0] + 2.5 * boundary[0]) + (0.9 + 0.4) * (ce[1] + 2.5 * boundary[1])) / B
    assert hand_loss(method) == pytest.approx(expected, rel=1e-6)


def test_wat_first_epoch_trains_with_every_weight_one_twice_the_trades_loss():
    ce, boundary = trades_terms(X, X_ADV, Y)
    trades = sum(ce) / B + 6.0 * sum(boundary) / B
    assert hand_loss(wat()) == pytest.approx(2 * trades, rel=1e-6)


def test_wat_robust_term_keeps_the_gradient_through_its_target_s_of_x():
    """TRADES' KL(S(x) || S(x')) with S(x) not detached (:63-68): the gradient differs from a detached target."""
    method = wat()
    batch, x_adv = hand_batch()
    student = FixedAffine(STUDENT_W, STUDENT_B)
    method.loss(student, batch, x_adv, None).loss.backward()
    got = student.linear.weight.grad.clone()
    ce, _ = trades_terms(X, X_ADV, Y)
    reference = FixedAffine(STUDENT_W, STUDENT_B)
    logits_nat, logits_adv = reference(batch.x), reference(x_adv)
    p = torch.softmax(logits_nat, 1)
    kl_i = (p * (p.log() - torch.log_softmax(logits_adv, 1))).sum(1)
    ce_i = torch.nn.functional.cross_entropy(logits_nat, batch.y, reduction="none")
    (2.0 * (ce_i + 6.0 * kl_i)).mean().backward()
    assert torch.allclose(got, reference.linear.weight.grad, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# the validation cost and the Hedge step
def test_hedge_weights_are_c_times_the_softmax_of_eta_times_the_summed_cost():
    got = hedge_weights(torch.tensor([1.0, 2.0, 3.0, 0.5], dtype=torch.float64), 0.5, C)
    assert got.tolist() == pytest.approx(hedge([1.0, 2.0, 3.0, 0.5], 0.5))
    assert float(got.sum()) == pytest.approx(C)


def test_wat_validation_cost_is_each_classs_mean_trades_loss_and_the_image_mean_for_the_average(shifted):
    method = wat(validation={"batch_size": 3})  # two batches: 3 images, then 1
    measured = method.measure()
    assert measured.cost.tolist() == pytest.approx(val_costs(6.0), rel=1e-6)
    assert len(shifted) == 2
    # the affine student's clean predictions, by hand: argmax of student_logits
    clean = [float(max(range(C), key=lambda k: student_logits(v)[k]) == y) for v, y in zip(VAL_X, VAL_Y)]
    assert measured.clean_acc.tolist() == pytest.approx([(clean[0] + clean[3]) / 2, clean[2], clean[1]])
    assert measured.clean_total == pytest.approx(sum(clean) / 4)


def test_wat_weights_are_hedge_on_the_costs_summed_over_every_epoch_so_far(shifted):
    method = wat(eta=0.1)
    hand_loss(method)  # a batch of epoch 1, with the first weights
    method.on_epoch_end(1)
    cost = val_costs(6.0)
    assert method.weights.tolist() == pytest.approx(hedge(cost, 0.1), rel=1e-6)
    method.on_epoch_end(2)  # the same student: the same cost again, summed
    assert method.weights.tolist() == pytest.approx(hedge([2 * c for c in cost], 0.1), rel=1e-6)
    assert method.cumulative_cost.tolist() == pytest.approx([2 * c for c in cost], rel=1e-6)
    assert float(method.weights.sum()) == pytest.approx(C)
    # the next batch trains with them: w_{y_i} + w_avg
    w = hedge([2 * c for c in cost], 0.1)
    ce, boundary = trades_terms(X, X_ADV, Y)
    expected = ((w[0] + w[3]) * (ce[0] + 6 * boundary[0]) + (w[2] + w[3]) * (ce[1] + 6 * boundary[1])) / B
    assert hand_loss(method) == pytest.approx(expected, rel=1e-5)


def test_wat_the_costliest_class_gets_the_largest_weight(shifted):
    method = wat()
    method.on_epoch_end(1)
    cost = val_costs(6.0)[:C]
    assert int(method.weights[:C].argmax()) == cost.index(max(cost))


def test_wat_validation_attack_is_trades_kl_from_the_passs_generator_with_the_validation_budget(shifted):
    method = wat(validation={"eps": "4/255", "step": "1/255", "steps": 7, "batch_size": 4})
    method.measure()
    (call,) = shifted
    assert (call["eps"], call["step"], call["steps"], call["start"]) == pytest.approx((4 / 255, 1 / 255, 7, "gaussian"))
    assert torch.equal(call["noise"], torch.randn((4, 1, 1, 2), generator=torch.Generator().manual_seed(0)))
    # the objective: KL(S(x) || softmax(z)) per sample, 0 at S(x)'s own logits
    logits_nat = torch.tensor([student_logits(v) for v in VAL_X])
    assert call["loss_fn"](logits_nat).abs().max() < 1e-6
    other = torch.tensor([student_logits(v) for v in reversed(VAL_X)])
    assert call["loss_fn"](other).tolist() == pytest.approx(
        [kl_sum(softmax(student_logits(VAL_X[i])), other[i].tolist()) for i in range(4)], rel=1e-5)


def test_wat_logs_each_epochs_class_wise_state_and_returns_its_weights(shifted):
    method = wat()
    row = method.on_epoch_end(1)
    w = hedge(val_costs(6.0), 0.1)
    assert [row[f"w/{k}"] for k in range(C)] == pytest.approx(w[:C]) and row["w_average"] == pytest.approx(w[C])
    assert row["val_cost_worst"] == pytest.approx(max(val_costs(6.0)[:C]))
    assert [r["class"] for r in method.log] == list(range(C)) and all(set(r) == set(STATE_COLUMNS) for r in method.log)
    assert [r["weight"] for r in method.log] == pytest.approx(w[:C])
    artefacts = method.artefacts(1, ["a", "b", "c"], [])
    assert artefacts.tables["wat_state.csv"] == (method.log, STATE_COLUMNS) and "wat_state" in artefacts.curves


def test_wat_refuses_a_validation_split_without_every_class(shifted):
    with pytest.raises(ValueError, match=r"no image of classes \[1\]"):
        wat(validation={"n_samples": 2}).measure()  # images of classes 0 and 2


def test_wat_without_a_validation_pass_says_what_it_needs():
    method = build_method("wat", section(), MethodContext(num_classes=C, attack=AttackConfig()))
    with pytest.raises(ValueError, match="validation_pass"):
        method.on_epoch_end(1)


def test_params_refuse_wat_without_a_validation_split():
    with pytest.raises(ValueError, match="wat .*val_per_class"):
        Params.model_validate({"data": {"val_per_class": 0}, "distill": {"methods": ["sat", "wat"]}})


# ----------------------------------------------------------------------------------------------
# every knob reaches its code; the recipe is the code's
def recipe(cfg: WatConfig) -> TrainConfig:
    return cfg.train.apply(Params().distill.train)


def scenario(cfg: WatConfig, monkeypatch) -> dict:
    """Two epoch ends on the shifted validation split, then a batch."""
    asked: list = []
    calls: list = []

    def attack(model, x, loss_fn, **kwargs):
        calls.append(kwargs)
        return x + torch.tensor(DELTA).reshape(1, 1, 1, 2)

    monkeypatch.setattr("absld.methods.wat.pgd", attack)
    method = wat(cfg, validation_pass=fake_pass(asked))
    method.on_epoch_end(1)
    method.on_epoch_end(2)
    return {"loss": hand_loss(method), "weights": method.weights.tolist(), "log": method.log,
            "validation": (asked[:1], [{k: v for k, v in c.items() if k != "noise"} for c in calls]),
            "recipe": recipe(cfg).model_dump()}


KNOBS = [("beta", 3.0, "loss"), ("beta", 3.0, "weights"), ("eta", 0.5, "weights"),
         ("validation", {"steps": 5}, "validation"), ("validation", {"n_samples": 3}, "weights"),
         ("train", {"lr": 0.05}, "recipe")]


def test_the_knob_table_names_every_field_of_the_wat_section():
    assert sorted({field for field, _, _ in KNOBS}) == sorted(WatConfig.model_fields)


@pytest.mark.parametrize("field, value, probe", KNOBS, ids=[f"{f}-{p}" for f, _, p in KNOBS])
def test_every_wat_knob_reaches_its_code(monkeypatch, field, value, probe):
    base = section()
    if isinstance(value, dict):  # a nested section: change one key of it
        value = {**getattr(base, field).model_dump(exclude_unset=True), **value}
    changed = section(**{field: value})
    assert getattr(changed, field) != getattr(base, field)
    assert scenario(changed, monkeypatch)[probe] != scenario(base, monkeypatch)[probe]


def test_wat_recipe_is_the_codes_100_epochs_with_the_rate_divided_by_10_from_epochs_75_90_and_100():
    cfg = recipe(section())
    assert (cfg.epochs, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov, cfg.batch_size) == (100, 0.1, 0.9, 2e-4, False, 128)
    rates = {e: learning_rate(cfg, e) for e in (1, 74, 75, 89, 90, 99, 100)}
    assert rates == pytest.approx({1: 0.1, 74: 0.1, 75: 0.01, 89: 0.01, 90: 0.001, 99: 0.001, 100: 1e-4})


def test_wat_defaults_are_the_codes():
    cfg = section()
    assert (cfg.beta, cfg.eta, cfg.validation.steps, cfg.validation.eps, cfg.validation.step) == \
        pytest.approx((6.0, 0.1, 10, 8 / 255, 2 / 255))
    assert cfg.validates


# ----------------------------------------------------------------------------------------------
# exact resume; devices
def _save_and_load(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_fresh_wat_loaded_from_the_state_gives_the_same_loss_and_the_same_next_update(shifted):
    original = wat()
    original.on_epoch_end(1)
    restored = wat()
    assert hand_loss(restored) != pytest.approx(hand_loss(original), rel=1e-4)  # the state matters
    restored.load_state_dict(_save_and_load(original.state_dict()))
    assert hand_loss(restored) == hand_loss(original)
    assert restored.on_epoch_end(2) == original.on_epoch_end(2)  # the sum continues, not restarts
    assert torch.equal(restored.weights, original.weights) and restored.log == original.log


@pytest.mark.parametrize("device", DEVICES)
def test_wat_weights_follow_the_batch_to_its_device(shifted, device):
    method = wat()
    hand_loss(method)  # a CPU batch first: the cached weights must move with the next batch
    method.on_epoch_end(1)
    batch, x_adv = hand_batch()
    batch = Batch(x=batch.x.to(device), y=batch.y.to(device), index=batch.index)
    out = method.loss(FixedAffine(STUDENT_W, STUDENT_B).to(device), batch, x_adv.to(device), None)
    assert out.loss.device.type == device
    if device != "meta":
        assert float(out.loss.detach()) == pytest.approx(hand_loss(method), rel=1e-5)


# ----------------------------------------------------------------------------------------------
# the real validation pass and the real loop
def tiny_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % C
    images = (rng.integers(0, 60, (n, 3, 16, 16)) + 60 * labels[:, None, None, None]).astype(np.uint8)
    return images, labels


def real_setup():
    from absld.train.distill import _validation_pass

    val_images, val_labels = tiny_data(12, 1)
    torch.manual_seed(0)
    student = build_model("tiny_cnn", num_classes=C, in_channels=3)
    prepared = SimpleNamespace(val_images=val_images, val_labels=val_labels)
    cfg = section(validation={"batch_size": 5, "step": "4/255", "steps": 2}, train={"epochs": 2, "milestones": []})
    method = build_method("wat", cfg, MethodContext(
        num_classes=C, attack=AttackConfig(eps="8/255", step="4/255", steps=2), student=student,
        validation_pass=_validation_pass(student, prepared, CPU, seed=0, bf16=False)))
    return student, method


def test_the_validation_pass_gives_the_first_n_images_in_order_in_batches_to_the_eval_mode_student():
    from absld.train.distill import _validation_pass

    images, labels = tiny_data(12, 1)
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, C)).train()
    seen: list = []

    def measure(model, batch, generator):
        seen.append((model is student, model.training, batch.y.tolist(), float(batch.x.max()) <= 1.0,
                     torch.rand(1, generator=generator).item()))

    validation_pass = _validation_pass(student, SimpleNamespace(val_images=images, val_labels=labels), CPU, seed=0, bf16=False)
    validation_pass(EvalAttackConfig(n_samples=7, batch_size=5), measure)
    assert [s[2] for s in seen] == [labels[:5].tolist(), labels[5:7].tolist()]
    assert all(s[0] and not s[1] and s[3] for s in seen) and student.training
    first = seen[0][4]
    seen.clear()
    validation_pass(EvalAttackConfig(n_samples=None, batch_size=20), measure)
    assert [s[2] for s in seen] == [labels.tolist()] and seen[0][4] == first  # afresh at every pass


def test_the_real_validation_pass_is_the_same_every_epoch_leaves_the_rng_and_restores_the_mode():
    student, method = real_setup()
    student.train()
    rng = torch.get_rng_state()
    first, second = method.measure(), method.measure()
    assert torch.equal(torch.get_rng_state(), rng) and student.training
    assert torch.equal(first.cost, second.cost) and bool(torch.isfinite(first.cost).all())


def test_wat_trains_through_the_loop_without_nan_and_moves_its_weights():
    student, method = real_setup()
    images, labels = tiny_data(48, 0)
    loader = TensorLoader(images, labels, batch_size=16, shuffle=True, crop_padding=2, flip=True, seed=0)
    history = fit(student, method, loader, TrainConfig(epochs=2, batch_size=16, lr=0.05, milestones=[]), CPU).history
    assert len(history) == 2 and all(math.isfinite(row["train_loss"]) for row in history)
    assert float(method.weights.sum()) == pytest.approx(C) and not torch.equal(method.weights, torch.ones(C + 1))
    assert [r["epoch"] for r in method.log] == [1] * C + [2] * C
    assert {f"w/{k}" for k in range(C)} <= set(history[-1])


def test_distill_stage_trains_wat_and_writes_its_state_and_figure(tmp_path, monkeypatch):
    import yaml
    from click.testing import CliRunner

    from pipeline.cli import main
    from tests.conftest import profile_params_text

    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load(profile_params_text("tiny"))
    params["distill"]["methods"] = ["wat"]  # in the matrix: its outputs go to results/, not scratch/
    params["distill"]["wat"].update(validation={"batch_size": 20, "step": "4/255", "steps": 2},
                                    train={"epochs": None, "milestones": None})  # the shared tiny recipe
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert CliRunner().invoke(main, ["prepare"]).exit_code == 0
    result = CliRunner().invoke(main, ["distill", "--method", "wat", "--seed", "0"])
    assert result.exit_code == 0, result.output
    state = (tmp_path / "results" / "distill" / "wat" / "seed0" / "wat_state.csv").read_text().splitlines()
    assert state[0].split(",") == STATE_COLUMNS and len(state) == 1 + 3 * 10  # 3 epochs x 10 classes
    assert (tmp_path / "plots" / "distill" / "wat" / "seed0" / "wat_state.png").is_file()
    assert (tmp_path / "models" / "students" / "wat" / "seed0.pt").is_file()
