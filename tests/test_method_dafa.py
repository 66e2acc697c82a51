"""DAFA (absld/methods/dafa.py): the loss, the class weights and when they are measured, every knob,
the state round trip, and a short run through the real loop.

The loss reuses the 2-sample, 3-class affine case of tests/test_methods.py (labels 0 and 2), so
each expected value is written with ``math`` only. The weights are checked against Algorithm 2
worked out by hand on a 3-class similarity matrix.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from absld.data import Batch, TensorLoader
from absld.methods import MethodContext, build_method
from absld.methods.dafa import class_similarity, dafa_weights
from absld.models import build_model
from absld.params import AttackConfig, DafaConfig, Params, TrainConfig, TrixConfig
from absld.runtime import Runtime
from absld.train.loop import fit, learning_rate

from .test_methods import (
    STUDENT_B, STUDENT_W, X, X_ADV, Y, B, C, FixedAffine, cross_entropy, hand_batch, kl_sum, softmax,
    student_logits,
)

CPU = Runtime(device=torch.device("cpu"), amp=False, channels_last=False, progress=False)
ATTACK = AttackConfig(eps="8/255", step="2/255", steps=10)

# a class-wise mean prediction p_k(j) (row k) and its weights by Algorithm 2, worked out by hand:
# p_0(0) = 0.6 < p_1(1) = 0.7 < p_2(2) = 0.9, so class 0 takes from 1 and 2, class 1 from 2
SIMILARITY = [[0.6, 0.3, 0.1],
              [0.2, 0.7, 0.1],
              [0.05, 0.05, 0.9]]
W_ALGORITHM = [1 + (0.3 * 0.7 + 0.1 * 0.9),        # 0 takes p_0(1) p_1(1) and p_0(2) p_2(2)
               1 + (-0.3 * 0.7 + 0.1 * 0.9),       # 1 gives p_0(1) p_1(1) to 0, takes p_1(2) p_2(2)
               1 + (-0.1 * 0.9 - 0.1 * 0.9)]       # 2 gives p_0(2) p_2(2) and p_1(2) p_2(2)
W_FIRST_RELEASE = [1 + (0.3 * 0.7 + 0.1 * 0.9),
                   1 + (-0.2 * 0.6 + 0.1 * 0.9),   # the easier loses p_k(j) p_j(j): p_1(0) p_0(0)
                   1 + (-0.05 * 0.6 - 0.05 * 0.7)]


def dafa(name: str = "dafa", attack: AttackConfig = ATTACK, **cfg):
    config = (DafaConfig if name == "dafa" else TrixConfig)(**cfg)
    return build_method(name, config, MethodContext(num_classes=C, attack=attack))


def hand_loss(method) -> float:
    batch, x_adv = hand_batch()
    return float(method.loss(FixedAffine(STUDENT_W, STUDENT_B), batch, x_adv, None).loss.detach())


def terms() -> tuple[list[float], list[float]]:
    """Per-sample CE(S(x), y) and KL(S(x) || S(x')) of the hand case."""
    ce = [cross_entropy(student_logits(X[i]), Y[i]) for i in range(B)]
    boundary = [kl_sum(softmax(student_logits(X[i])), student_logits(X_ADV[i])) for i in range(B)]
    return ce, boundary


class LogOf(nn.Module):
    """Logits ``log x``: on inputs that are probability rows (B, 1, 1, C), softmax gives them back."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1).clamp(min=1e-12).log()


def prediction_batch(rows: list[list[float]], labels: list[int]) -> tuple[Batch, Tensor]:
    """A batch whose x' are the probability rows ``rows`` (the student LogOf predicts them)."""
    x_adv = torch.tensor(rows).reshape(len(rows), 1, 1, C)
    return Batch(x=x_adv.clone(), y=torch.tensor(labels), index=torch.arange(len(rows))), x_adv


def spy_on_pgd(monkeypatch, module: str = "dafa") -> dict:
    calls: dict = {}

    def spy(model, x, loss_fn, **kwargs):
        calls.update(kwargs, loss_fn=loss_fn)
        return x

    monkeypatch.setattr(f"absld.methods.{module}.pgd", spy)
    return calls


# ----------------------------------------------------------------------------------------------
# (a) the loss
def test_dafa_loss_is_the_class_weighted_mean_ce_plus_beta_times_the_unweighted_batchmean_kl():
    method = dafa(beta=6.0)
    method.weights = torch.tensor([1.3, 0.9, 0.8], dtype=torch.float64)
    ce, boundary = terms()
    expected = (1.3 * ce[0] + 0.8 * ce[1]) / 2 + 6.0 * (boundary[0] + boundary[1]) / 2
    assert hand_loss(method) == pytest.approx(expected, rel=1e-6)


def test_dafa_with_unit_weights_is_trades():
    ce, boundary = terms()
    assert hand_loss(dafa(beta=2.0)) == pytest.approx(sum(ce) / 2 + 2.0 * sum(boundary) / 2, rel=1e-6)


def test_dafa_without_reweight_leaves_the_ce_term_unweighted():
    method = dafa(beta=6.0, reweight=False)
    method.weights = torch.tensor([1.3, 0.9, 0.8], dtype=torch.float64)
    ce, boundary = terms()
    assert hand_loss(method) == pytest.approx(sum(ce) / 2 + 6.0 * sum(boundary) / 2, rel=1e-6)


@pytest.mark.parametrize("detach_target", [False, True])
def test_dafa_kl_is_differentiated_through_its_target_s_of_x(detach_target):
    """KL(S(x) || S(x')) with S(x) not detached, as TRADES and the official losses.py:72-73; the
    detached variant shows that the comparison tells the two apart."""
    method = dafa(beta=6.0)
    method.weights = torch.tensor([1.3, 0.9, 0.8], dtype=torch.float64)
    student = FixedAffine(STUDENT_W, STUDENT_B)
    batch, x_adv = hand_batch()
    (ours,) = torch.autograd.grad(method.loss(student, batch, x_adv, None).loss, student.linear.weight)
    logits_nat, logits_adv = student(batch.x), student(x_adv)
    target = F.softmax(logits_nat, dim=1)
    target = target.detach() if detach_target else target
    kl_i = (target * (target.log() - F.log_softmax(logits_adv, dim=1))).sum(1)
    ce_i = F.cross_entropy(logits_nat, batch.y, reduction="none")
    expected_loss = (torch.tensor([1.3, 0.8]) * ce_i).mean() + 6.0 * kl_i.mean()
    (expected,) = torch.autograd.grad(expected_loss, student.linear.weight)
    assert torch.allclose(ours, expected, atol=1e-6) is (not detach_target)


# ----------------------------------------------------------------------------------------------
# (b) the class weights and when they are measured
def test_weights_follow_algorithm_2_and_sum_to_the_number_of_classes():
    weights = dafa_weights(torch.tensor(SIMILARITY, dtype=torch.float64), 1.0)
    assert weights.tolist() == pytest.approx(W_ALGORITHM, abs=1e-9)
    assert float(weights.sum()) == pytest.approx(C, abs=1e-9)


def test_lam_scales_the_transfer():
    weights = dafa_weights(torch.tensor(SIMILARITY, dtype=torch.float64), 2.0)
    assert weights.tolist() == pytest.approx([1 + 2 * (w - 1) for w in W_ALGORITHM], abs=1e-9)


def test_the_first_release_rule_takes_the_harder_classes_term_from_the_easier():
    weights = dafa_weights(torch.tensor(SIMILARITY, dtype=torch.float64), 1.0, "first_release")
    assert weights.tolist() == pytest.approx(W_FIRST_RELEASE, abs=1e-9)


def test_a_class_seen_by_no_sample_keeps_weight_one_and_moves_no_other():
    sums = torch.tensor([[0.6, 0.4, 0.0], [0.0, 0.0, 0.0], [0.2, 0.0, 0.8]])
    similarity = class_similarity(sums, torch.tensor([1.0, 0.0, 1.0]))
    weights = dafa_weights(similarity, 1.0)
    assert weights.tolist() == pytest.approx([1 + 0.0 * 0.8, 1.0, 1 - 0.0 * 0.8], abs=1e-9)


# the warm-up epoch's adversarial predictions, two samples of class 0, one of 1, one of 2, whose class
# means are SIMILARITY; the other epochs see predictions that would give other weights
WARMUP_ROWS = [[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.05, 0.05, 0.9]]
WARMUP_LABELS = [0, 0, 1, 2]
OTHER_ROWS = [[0.1, 0.1, 0.8], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05], [0.1, 0.8, 0.1]]


def feed(method, rows: list[list[float]], labels: list[int] = WARMUP_LABELS) -> None:
    batch, x_adv = prediction_batch(rows, labels)
    method.loss(LogOf(), batch, x_adv, None)


def run_epochs(method, epochs: int, at: int | None = None) -> list[dict]:
    """Each epoch feeds the warm-up rows in epoch ``at`` (None: the warm-up epoch), the other rows
    otherwise."""
    logs = []
    for epoch in range(1, epochs + 1):
        feed(method, WARMUP_ROWS if epoch == (at or method.cfg.warmup) else OTHER_ROWS)
        logs.append(method.on_epoch_end(epoch))
    return logs


def test_the_weights_come_from_the_warm_up_epochs_adversarial_predictions_only():
    method = dafa(warmup=2)
    logs = run_epochs(method, 4)
    assert [logs[0][f"w/{k}"] for k in range(C)] == [1.0, 1.0, 1.0]  # epoch 2 still trains with W = 1
    assert method.similarity.flatten().tolist() == pytest.approx(sum(SIMILARITY, []), abs=1e-6)
    for log in logs[1:]:  # computed once after epoch 2, then fixed
        assert [log[f"w/{k}"] for k in range(C)] == pytest.approx(W_ALGORITHM, abs=1e-6)
    assert [logs[1]["dafa_w_min"], logs[1]["dafa_w_max"]] == pytest.approx([min(W_ALGORITHM), max(W_ALGORITHM)])
    assert float(method.prob_sum.abs().sum()) == 0 and float(method.count.sum()) == 0  # nothing kept after


def test_the_warm_up_is_the_epoch_that_is_measured():
    later = dafa(warmup=3)
    run_epochs(later, 2)
    assert float(later.weights.sum()) == C and later.similarity is None
    assert float(later.count.sum()) == 0  # epochs 1, 2 record nothing
    run_epochs_from(later, 3, 3)
    assert later.weights.tolist() == pytest.approx(W_ALGORITHM, abs=1e-6)


def run_epochs_from(method, first: int, last: int) -> None:
    for epoch in range(first, last + 1):
        feed(method, WARMUP_ROWS if epoch == method.cfg.warmup else OTHER_ROWS)
        method.on_epoch_end(epoch)


def test_the_records_are_the_adversarial_predictions_not_the_clean_ones():
    method = dafa(warmup=1)
    batch, x_adv = prediction_batch(WARMUP_ROWS, WARMUP_LABELS)
    clean = Batch(x=torch.tensor(OTHER_ROWS).reshape(4, 1, 1, C), y=batch.y, index=batch.index)
    method.loss(LogOf(), clean, x_adv, None)
    method.on_epoch_end(1)
    assert method.similarity.flatten().tolist() == pytest.approx(sum(SIMILARITY, []), abs=1e-6)


# ----------------------------------------------------------------------------------------------
# (c) the attack: TRADES' KL in the class radius and step
def test_dafa_attacks_each_sample_in_w_times_eps_with_step_w_times_step(monkeypatch):
    method = dafa()
    method.weights = torch.tensor([1.3, 0.9, 0.8], dtype=torch.float64)
    calls = spy_on_pgd(monkeypatch)
    batch, _ = hand_batch()
    method.perturb(FixedAffine(STUDENT_W, STUDENT_B), batch, None)
    assert calls["eps"].tolist() == pytest.approx([1.3 * 8 / 255, 0.8 * 8 / 255], rel=1e-6)
    assert calls["step"].tolist() == pytest.approx([1.3 * 2 / 255, 0.8 * 2 / 255], rel=1e-6)
    assert calls["steps"] == 10 and calls["start"] == "gaussian"
    logits = torch.tensor([[0.3, -0.2, 0.5], [1.0, 0.0, -1.0]])
    expected = [kl_sum(softmax(student_logits(X[i])), logits[i].tolist()) for i in range(B)]
    assert calls["loss_fn"](logits).tolist() == pytest.approx(expected, rel=1e-5)


def test_dafa_without_remargin_attacks_in_the_shared_radius(monkeypatch):
    method = dafa(remargin=False)
    method.weights = torch.tensor([1.3, 0.9, 0.8], dtype=torch.float64)
    calls = spy_on_pgd(monkeypatch)
    method.perturb(FixedAffine(STUDENT_W, STUDENT_B), hand_batch()[0], None)
    assert (calls["eps"], calls["step"]) == (pytest.approx(8 / 255), pytest.approx(2 / 255))


def test_a_negative_weight_gives_radius_zero_not_an_empty_box(monkeypatch):
    method = dafa()
    method.weights = torch.tensor([-0.5, 1.0, 1.0], dtype=torch.float64)
    calls = spy_on_pgd(monkeypatch)
    method.perturb(FixedAffine(STUDENT_W, STUDENT_B), hand_batch()[0], None)
    assert calls["eps"].tolist() == pytest.approx([0.0, 8 / 255])


def test_dafa_attack_stays_in_each_samples_own_radius():
    torch.manual_seed(0)
    method = dafa()
    method.weights = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, C))
    x = torch.rand(6, 3, 2, 2) * 0.5 + 0.25
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    x_adv = method.perturb(model, Batch(x=x, y=y, index=torch.arange(6)), None)
    reach = (x_adv - x).flatten(1).abs().amax(1)
    assert (reach <= torch.tensor([0.5, 1.0, 1.5])[y] * 8 / 255 + 1e-6).all()
    assert float(reach[y == 2].min()) > 8 / 255  # the hard class goes beyond the shared eps


# ----------------------------------------------------------------------------------------------
# (c) the recipe and the section's knobs
def test_the_recipe_is_the_codes_110_epochs_with_the_bag_of_tricks_schedule():
    cfg = DafaConfig().train.apply(Params().distill.train)
    assert (cfg.epochs, cfg.weight_decay, cfg.nesterov, cfg.lr, cfg.batch_size) == (110, 5e-4, True, 0.1, 128)
    # train.py:156-160: lr x 0.1 when epoch >= epochs - 10, x 0.01 when epoch >= epochs - 5
    assert [round(learning_rate(cfg, e), 6) for e in (99, 100, 104, 105, 110)] == [0.1, 0.01, 0.01, 0.001, 0.001]


def test_the_committed_config_has_the_official_defaults():
    section = Params().distill.dafa
    assert (section.beta, section.warmup, section.lam, section.weight_rule, section.reweight,
            section.remargin) == (6.0, 70, 1.0, "algorithm", True, True)


KNOBS = {  # field -> (changed value, what it must change)
    "beta": (2.0, "loss"), "warmup": (3, "weights"), "lam": (2.0, "weights"),
    "weight_rule": ("first_release", "weights"), "reweight": (False, "loss"), "remargin": (False, "attack"),
    "train": ({"epochs": 20}, "recipe"),
}


def scenario(cfg, monkeypatch, name: str = "dafa") -> dict:
    """4 epochs (the warm-up rows in epoch 2), then the hand loss and the attack's radii."""
    method = build_method(name, cfg, MethodContext(num_classes=C, attack=ATTACK))
    run_epochs(method, 4, at=2)
    calls = spy_on_pgd(monkeypatch)
    method.perturb(FixedAffine(STUDENT_W, STUDENT_B), hand_batch()[0], None)
    eps = calls["eps"]
    return {"weights": method.weights.tolist(), "loss": hand_loss(method),
            "attack": eps.tolist() if isinstance(eps, Tensor) else eps,
            "recipe": cfg.train.apply(Params().distill.train).model_dump()}


@pytest.mark.parametrize("name, config", [("dafa", DafaConfig), ("trix", TrixConfig)])
def test_the_knob_table_names_every_field(name, config):
    assert sorted(KNOBS) == sorted(config.model_fields)


@pytest.mark.parametrize("name", ["dafa", "trix"])
@pytest.mark.parametrize("field", sorted(KNOBS))
def test_every_knob_reaches_its_code(monkeypatch, name, field):
    value, probe = KNOBS[field]
    config = DafaConfig if name == "dafa" else TrixConfig
    base = config(warmup=2)
    changed = config(**{**base.model_dump(exclude_unset=True), field: value})
    assert scenario(changed, monkeypatch, name)[probe] != scenario(base, monkeypatch, name)[probe]


# ----------------------------------------------------------------------------------------------
# (d) state round trip and devices
def round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", ["dafa", "trix"])
def test_a_loaded_state_continues_exactly_in_the_middle_of_the_warm_up(name):
    straight = dafa(name, warmup=2)
    run_epochs(straight, 1)
    feed(straight, WARMUP_ROWS)  # half of the warm-up epoch
    resumed = dafa(name, warmup=2)
    resumed.load_state_dict(round_trip(straight.state_dict()))
    for method in (straight, resumed):
        feed(method, OTHER_ROWS)
    assert resumed.on_epoch_end(2) == straight.on_epoch_end(2)
    assert resumed.weights.tolist() == straight.weights.tolist() and resumed.epoch == straight.epoch == 3
    assert hand_loss(resumed) == hand_loss(straight)


def test_a_loaded_state_trains_with_the_loaded_weights():
    trained = dafa(warmup=1)
    run_epochs(trained, 1)
    fresh = dafa(warmup=1)
    hand_loss(fresh)  # caches the unit weights on the CPU
    fresh.load_state_dict(round_trip(trained.state_dict()))
    assert hand_loss(fresh) == pytest.approx(hand_loss(trained), rel=1e-7)
    assert hand_loss(fresh) != pytest.approx(hand_loss(dafa(warmup=1)), rel=1e-4)


DEVICES = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["dafa", "trix"])
def test_the_state_follows_the_batch_to_its_device(monkeypatch, name, device):
    method = dafa(name, warmup=1)
    hand_loss(method)  # a CPU batch first: the cached weights must move with the next one
    student = FixedAffine(STUDENT_W, STUDENT_B).to(device)
    batch, x_adv = hand_batch()
    batch, x_adv = Batch(x=batch.x.to(device), y=batch.y.to(device), index=batch.index), x_adv.to(device)
    out = method.loss(student, batch, x_adv, None)
    assert out.loss.device.type == device and method.prob_sum.device.type == device
    calls = spy_on_pgd(monkeypatch)
    method.perturb(student, batch, None)
    assert calls["eps"].device.type == device and calls["step"].device.type == device


# ----------------------------------------------------------------------------------------------
# artefacts
def test_the_artefacts_are_the_logged_weights_and_the_warm_up_similarity():
    method = dafa(warmup=2)
    logs = run_epochs(method, 3)
    history = [{"epoch": e + 1, **log} for e, log in enumerate(logs)]
    artefacts = method.artefacts(3, ["a", "b", "c"], history)
    rows, columns = artefacts.tables["weights.csv"]
    assert columns == ["epoch", "class", "w"] and len(rows) == 3 * C
    assert [r["w"] for r in rows if r["epoch"] == 3] == pytest.approx(W_ALGORITHM, abs=1e-6)
    similarity, _ = artefacts.tables["class_similarity.csv"]
    assert [r["p"] for r in similarity if r["class"] == 0] == pytest.approx(SIMILARITY[0], abs=1e-6)
    assert artefacts.metrics["dafa_weights"] == pytest.approx(dict(zip("abc", W_ALGORITHM)), abs=1e-6)
    assert set(artefacts.curves) == {"dafa_state"}


# ----------------------------------------------------------------------------------------------
# (e) the real loop
def tiny_run(name: str, epochs: int = 2, stop_after: int | None = None, checkpoint=None):
    rng = np.random.default_rng(0)
    labels = np.arange(32) % 4
    images = (rng.integers(0, 60, (32, 3, 16, 16)) + 40 * labels[:, None, None, None]).astype(np.uint8)
    torch.manual_seed(0)
    model = build_model("tiny_cnn", num_classes=4, in_channels=3)
    loader = TensorLoader(images, labels, batch_size=16, shuffle=True, crop_padding=2, flip=True, seed=0)
    config = (DafaConfig if name == "dafa" else TrixConfig)(warmup=1)
    method = build_method(name, config, MethodContext(num_classes=4, attack=AttackConfig(eps="8/255", step="4/255",
                                                                                          steps=2)))
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=0.05, milestones=[1], nesterov=True, weight_decay=5e-4)
    return fit(model, method, loader, cfg, CPU, checkpoint=checkpoint, fingerprint="x", stop_after=stop_after), method


@pytest.mark.parametrize("name", ["dafa", "trix"])
def test_a_short_run_trains_without_nan_and_resumed_after_the_warm_up_gives_the_same_weights(tmp_path, name):
    straight, _ = tiny_run(name, checkpoint=tmp_path / "a.pt")
    assert all(math.isfinite(row["train_loss"]) for row in straight.history)
    weights = [[row[f"w/{k}"] for k in range(4)] for row in straight.history]
    assert weights[0] != [1.0] * 4 and weights[1] == weights[0]  # measured after epoch 1, then fixed
    assert sum(weights[0]) == pytest.approx(4.0, abs=1e-5)
    tiny_run(name, stop_after=1, checkpoint=tmp_path / "b.pt")
    torch.manual_seed(12345)  # the resumed run must not depend on the RNG state it finds
    resumed, _ = tiny_run(name, checkpoint=tmp_path / "b.pt")
    assert resumed.resumed_from == 1
    for key, value in straight.final_state.items():
        assert torch.equal(value, resumed.final_state[key]), key
    assert straight.history == resumed.history
