"""Fair-ARD and Fair-IAD (absld/methods/fair_ard.py, fair_iad.py; the shared kappa re-weighting of
absld/methods/kappa.py): hand-computed losses, kappa and class weights, every knob, state, training.

Every expected value is written out here from the formulas of the modules' docstrings (the official
``Fair-ARD.py`` / ``Fair-IAD.py``), with ``math`` on the 2-sample, 3-class affine case of
tests/test_methods.py or on kappa counts fixed by a scripted student; none is read back from the
code under test.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from absld.data import Batch, TensorLoader
from absld.methods import METHODS, MethodContext, build_method
from absld.models import build_model
from absld.params import AttackConfig, FairArdConfig, FairIadConfig, IadConfig, Params
from absld.runtime import Runtime
from absld.train.loop import fit

from .test_method_mutants import Scripted, same
from .test_methods import (
    STUDENT_B, STUDENT_W, TEACHER_B, TEACHER_W, X, X_ADV, Y, B, C, FixedAffine, cross_entropy, hand_batch, kl_sum,
    scaled, softmax, student_logits, teacher_logits_of,
)

WEIGHTS = [2.0, 0.9, 0.5]  # class weights set by hand; the samples' labels are 0 and 2
W = [WEIGHTS[y] for y in Y]  # w[y_i]
CONFIGS = {"fair_ard": FairArdConfig, "fair_iad": FairIadConfig}


def build(name: str, cfg=None, *, attack: AttackConfig | None = None, kl_reduction: str = "element_mean", teacher=None):
    teacher = FixedAffine(TEACHER_W, TEACHER_B).eval() if teacher is None else teacher
    return build_method(name, cfg if cfg is not None else CONFIGS[name](), MethodContext(
        num_classes=C, attack=attack or AttackConfig(), teacher=teacher, kl_reduction=kl_reduction))


def with_weights(method, weights=WEIGHTS):
    method.weights = torch.tensor(weights)
    return method


def loss_of(method) -> float:
    batch, x_adv = hand_batch()
    with torch.no_grad():
        teacher_logits = method.teacher(batch.x).float()
    return float(method.loss(FixedAffine(STUDENT_W, STUDENT_B), batch, x_adv, teacher_logits).loss.detach())


def tempered_kl(i: int, t: float) -> float:
    """KL(softmax(T(x_i)/t) ‖ softmax(S(x'_i)/t)), summed over the classes."""
    return kl_sum(softmax(scaled(teacher_logits_of(X[i]), t)), scaled(student_logits(X_ADV[i]), t))


def introspection_kl(i: int) -> float:
    """KL(S(x_i) ‖ S(x'_i)), summed over the classes."""
    return kl_sum(softmax(student_logits(X[i])), student_logits(X_ADV[i]))


def trust(i: int, beta_iad: float) -> float:
    """a_i = P_T(y_i | x'_i) ** beta_iad."""
    return softmax(teacher_logits_of(X_ADV[i]))[Y[i]] ** beta_iad


# ----------------------------------------------------------------------------------------------
# (a) the losses, by hand
def test_fair_ard_loss_is_t_squared_times_the_class_weighted_kl_averaged_over_b_times_c():
    t = 2.0
    expected = t * t * sum(W[i] * tempered_kl(i, t) for i in range(B)) / (B * C)  # Fair-ARD.py:141,144,146,148
    assert loss_of(with_weights(build("fair_ard", FairArdConfig(temperature=t)))) == pytest.approx(expected, rel=1e-5)


def test_fair_ard_weights_the_natural_cross_entropy_term_too_divided_by_b_not_by_the_weights():
    t, alpha = 2.0, 0.25
    distill = t * t * sum(W[i] * tempered_kl(i, t) for i in range(B)) / (B * C)
    natural = sum(W[i] * cross_entropy(student_logits(X[i]), Y[i]) for i in range(B)) / B  # Fair-ARD.py:142,145,147
    method = with_weights(build("fair_ard", FairArdConfig(temperature=t, alpha=alpha)))
    assert loss_of(method) == pytest.approx(alpha * distill + (1 - alpha) * natural, rel=1e-5)


def test_fair_ard_takes_distill_kl_reduction_as_ard_does():
    t = 2.0
    expected = t * t * sum(W[i] * tempered_kl(i, t) for i in range(B)) / B
    method = with_weights(build("fair_ard", FairArdConfig(temperature=t), kl_reduction="batchmean"))
    assert loss_of(method) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_fair_ard_with_unit_weights_is_ard(alpha):
    from absld.params import ArdConfig

    ard = build_method("ard", ArdConfig(temperature=3.0, alpha=alpha), MethodContext(
        num_classes=C, attack=AttackConfig(), teacher=FixedAffine(TEACHER_W, TEACHER_B).eval()))
    assert loss_of(build("fair_ard", FairArdConfig(temperature=3.0, alpha=alpha))) == loss_of(ard)


def test_fair_iad_loss_up_to_begin_is_the_class_weighted_tempered_kl_averaged_over_b():
    t = 2.0
    cfg = FairIadConfig(temperature=t, beta_iad=0.5, begin=3)
    method = with_weights(build("fair_iad", cfg))
    method.on_epoch_end(cfg.begin - 1)  # now training epoch `begin`: no introspection yet
    method.weights = torch.tensor(WEIGHTS)  # (the epoch end recomputed them from no kappa)
    expected = t * t * sum(W[i] * tempered_kl(i, t) for i in range(B)) / B  # Fair-IAD.py:196-199
    assert loss_of(method) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kl_reduction", ["element_mean", "batchmean"])
def test_fair_iad_loss_after_begin_weights_both_terms_the_introspection_by_one_minus_a_times_w(kl_reduction):
    t, beta_iad = 2.0, 0.5
    cfg = FairIadConfig(temperature=t, beta_iad=beta_iad, begin=3, beta=2.0)
    method = build("fair_iad", cfg, kl_reduction=kl_reduction)
    method.on_epoch_end(cfg.begin)  # now training epoch begin + 1
    with_weights(method)
    distill = t * t * sum(W[i] * tempered_kl(i, t) for i in range(B)) / B  # Fair-IAD.py:183,186,189
    introspection = sum(W[i] * (1 - trust(i, beta_iad)) * introspection_kl(i) for i in range(B)) / B  # :184,187,190
    assert loss_of(method) == pytest.approx(distill + introspection, rel=1e-5)


def test_fair_iad_reliability_uses_beta_iad_not_the_reweighting_beta():
    method = build("fair_iad", FairIadConfig(beta_iad=0.3, beta=2.0, begin=0))
    batch, x_adv = hand_batch()
    expected = [trust(i, 0.3) for i in range(B)]
    assert method.reliability(x_adv, batch.y).tolist() == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx([trust(i, 2.0) for i in range(B)], rel=1e-2)


def test_fair_iad_with_unit_weights_is_iad():
    cfg = FairIadConfig(temperature=2.0, beta_iad=0.5, begin=0)
    iad = build_method("iad", IadConfig(temperature=2.0, beta=0.5, begin=0), MethodContext(
        num_classes=C, attack=AttackConfig(), teacher=FixedAffine(TEACHER_W, TEACHER_B).eval()))
    assert loss_of(build("fair_iad", cfg)) == loss_of(iad)


# ----------------------------------------------------------------------------------------------
# (b) kappa and the class weights, by hand
STEPS = 4
RIGHT = [1, 2, 4]  # the scripted student is right on class k's samples at its first RIGHT[k] steps


def scripted_epoch(method, labels=(0, 1, 2, 0, 1, 2), right=RIGHT):
    y = torch.tensor(labels)
    x = torch.rand(len(y), 3, 1, 1, generator=torch.Generator().manual_seed(0))
    method.perturb(Scripted(y, list(right)), Batch(x=x, y=y, index=torch.arange(len(y))), None)
    return method


def hand_weights(mean_kappa: list[float], beta: float, w_min: float, w_max: float) -> list[float]:
    raw = [(1 / (k + 1e-5)) ** beta for k in mean_kappa]  # Fair-ARD.py:120, Fair-IAD.py:148
    return [min(max(r * C / sum(raw), w_min), w_max) for r in raw]  # :121-124, :149-152


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_kappa_counts_the_steps_at_which_the_student_is_right_before_each_update(name):
    method = scripted_epoch(build(name, attack=AttackConfig(steps=STEPS)))
    assert method.count.tolist() == [2.0, 2.0, 2.0]
    assert (method.kappa_sum / method.count).tolist() == [1.0, 2.0, 4.0]  # not 2, 3, 5: x'_K is not counted


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_class_weights_are_inverse_mean_kappa_plus_1e5_to_the_beta_normalised_to_c_and_clamped(name):
    cfg = CONFIGS[name](beta=2.0)
    method = scripted_epoch(build(name, cfg, attack=AttackConfig(steps=STEPS)))
    row = method.on_epoch_end(1)
    expected = hand_weights([1.0, 2.0, 4.0], 2.0, 5 / 6, 5 / 2)  # 16/7 and two clamped to 5/6
    assert method.weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert {k: v for k, v in row.items() if k.startswith("w/")} == pytest.approx(
        {f"w/{k}": w for k, w in enumerate(expected)}, rel=1e-6)
    assert method.kappa_sum.tolist() == [0.0] * C and method.count.tolist() == [0.0] * C  # reset


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_class_broken_at_the_first_step_weighs_one_over_1e5_to_the_beta(name):
    """The official 1e-5 (not Fair-RSLAD's bare 1/kappa): visible with bounds that do not clamp."""
    cfg = CONFIGS[name](beta=2.0, w_min=1e-12, w_max=1e12)
    method = scripted_epoch(build(name, cfg, attack=AttackConfig(steps=STEPS)), right=[0, 1, 1])
    method.on_epoch_end(1)
    raw = [1e10, (1 / (1 + 1e-5)) ** 2, (1 / (1 + 1e-5)) ** 2]
    assert method.weights.tolist() == pytest.approx([r * C / sum(raw) for r in raw], rel=1e-5)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_an_unseen_class_keeps_raw_weight_one(name):
    cfg = CONFIGS[name](beta=1.0, w_min=0.01, w_max=10.0)
    method = scripted_epoch(build(name, cfg, attack=AttackConfig(steps=STEPS)), labels=(0, 1, 0, 1))
    method.on_epoch_end(1)
    raw = [1 / (1 + 1e-5), 1 / (2 + 1e-5), 1.0]
    assert method.weights.tolist() == pytest.approx([r * C / sum(raw) for r in raw], rel=1e-6)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_weights_of_an_epoch_weight_the_next_epochs_loss(name):
    cfg = CONFIGS[name](beta=2.0, temperature=2.0)
    method = scripted_epoch(build(name, cfg, attack=AttackConfig(steps=STEPS)))
    before = loss_of(method)  # weights 1 during the first epoch (Fair-ARD.py:161)
    assert before == loss_of(build(name, cfg))
    method.on_epoch_end(1)
    w = hand_weights([1.0, 2.0, 4.0], 2.0, 5 / 6, 5 / 2)
    t = 2.0
    kl_terms = [tempered_kl(i, t) for i in range(B)]
    divisor = B * C if name == "fair_ard" else B
    assert loss_of(method) == pytest.approx(t * t * sum(w[Y[i]] * kl_terms[i] for i in range(B)) / divisor, rel=1e-5)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_kappa_sums_of_all_data_parallel_shares_make_the_weights(name, monkeypatch):
    """Another process saw class 0 right at 4 steps and class 2 at 0 (all_reduce_sum faked)."""
    other = iter([torch.tensor([8.0, 0.0, 0.0]), torch.tensor([2.0, 0.0, 2.0])])  # its kappa sums, counts
    monkeypatch.setattr("absld.methods.kappa.all_reduce_sum", lambda t: t + next(other))
    cfg = CONFIGS[name](beta=1.0, w_min=0.01, w_max=10.0)
    method = scripted_epoch(build(name, cfg, attack=AttackConfig(steps=STEPS)))
    method.on_epoch_end(1)
    mean = [(2 * 1 + 8) / 4, 2.0, (2 * 4 + 0) / 4]  # (ours + theirs) / (our count + theirs)
    assert method.weights.tolist() == pytest.approx(hand_weights(mean, 1.0, 0.01, 10.0), rel=1e-6)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_attack_is_ards_ce_pgd_with_a_uniform_start_in_train_mode(name, monkeypatch):
    calls = {}

    def spy(model, x, loss_fn, **kwargs):
        calls.update(model=model, x=x, loss_fn=loss_fn, **kwargs)
        return x.clone()

    monkeypatch.setattr("absld.methods.kappa.pgd", spy)
    method = build(name, attack=AttackConfig(eps="4/255", step="1/255", steps=7))
    batch, _ = hand_batch()
    student = FixedAffine(STUDENT_W, STUDENT_B)
    method.perturb(student, batch, None)
    assert (calls["eps"], calls["step"], calls["steps"], calls["start"]) == pytest.approx((4 / 255, 1 / 255, 7, "uniform"))
    assert calls["on_logits"] is not None and calls["model"] is student
    with torch.no_grad():
        values = calls["loss_fn"](student(batch.x)).tolist()
    assert values == pytest.approx([cross_entropy(student_logits(X[i]), Y[i]) for i in range(B)], rel=1e-5)
    assert METHODS[name].attack_mode == "train" and METHODS[name].uses_teacher


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_class_weights_are_written_as_weights_csv(name):
    history = [{"epoch": 1, "w/0": 1.5, "w/1": 0.5, "train_loss": 2.0}]
    tables = build(name).artefacts(1, ["a", "b"], history).tables
    assert tables == {"weights.csv": ([{"epoch": 1, "class": 0, "w": 1.5}, {"epoch": 1, "class": 1, "w": 0.5}],
                                      ["epoch", "class", "w"])}


def test_fair_iads_epoch_end_still_moves_iads_epoch():
    method = build("fair_iad", FairIadConfig(begin=2))
    for epoch in (1, 2):
        method.on_epoch_end(epoch)
    assert method.epoch == 3
    batch, x_adv = hand_batch()
    assert float(method.reliability(x_adv, batch.y).max()) < 1.0  # introspection from epoch 3 on


def test_weight_bounds_must_be_ordered():
    for config in CONFIGS.values():
        with pytest.raises(ValueError, match="w_min <= w_max"):
            config(w_min=2.0, w_max=1.0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("device", ["meta"] + (["cuda"] if torch.cuda.is_available() else []))
def test_the_class_state_follows_the_batch_to_its_device(name, device):
    teacher = FixedAffine(TEACHER_W, TEACHER_B).eval().to(device)
    method = build(name, teacher=teacher)
    student = FixedAffine(STUDENT_W, STUDENT_B).to(device)
    batch, x_adv = hand_batch()
    batch = Batch(x=batch.x.to(device), y=batch.y.to(device), index=batch.index)
    method.perturb(student, batch, None)
    assert {method.kappa_sum.device.type, method.count.device.type} == {device}
    assert method.sample_weights(batch.y).device.type == method.weights.device.type == device
    if name == "fair_iad" and device == "meta":
        return  # IAD's loss asks whether any a_i < 1: a value a meta tensor does not have
    out = method.loss(student, batch, x_adv.to(device), teacher(batch.x).detach())
    assert out.loss.device.type == device


# ----------------------------------------------------------------------------------------------
# (c) every knob of the two sections reaches the code
def section(name: str, **changes):
    cfg = Params().distill.method_config(name)
    return type(cfg).model_validate({**cfg.model_dump(exclude_unset=True), **changes}) if changes else cfg


def scenario(name: str, cfg) -> dict:
    """Epoch ends 1..59 with nothing seen, then epoch 60 whose 4-step attacks keep classes 0, 1, 2
    right for 1, 2, 4 steps; then a batch (Fair-IAD introspects from epoch 61 with begin 60)."""
    method = build(name, cfg, attack=AttackConfig(steps=STEPS))
    for epoch in range(1, 60):
        method.on_epoch_end(epoch)
    scripted_epoch(method)
    method.on_epoch_end(60)
    return {"weights": method.weights, "loss": loss_of(method),
            "recipe": cfg.train.apply(Params().distill.train).model_dump()}


TRAIN = {"lr": 0.05}
KNOBS = {
    "fair_ard": [("temperature", 4.0, "loss"), ("alpha", 0.5, "loss"), ("beta", 1.0, "weights"),
                 ("w_min", 0.5, "weights"), ("w_max", 2.0, "weights"), ("train", TRAIN, "recipe")],
    "fair_iad": [("temperature", 4.0, "loss"), ("beta_iad", 0.5, "loss"), ("begin", 100, "loss"),
                 ("beta", 1.0, "weights"), ("w_min", 0.5, "weights"), ("w_max", 2.0, "weights"),
                 ("train", TRAIN, "recipe")],
}


def test_the_knob_table_names_every_field_of_both_sections():
    for name, knobs in KNOBS.items():
        assert sorted(field for field, _, _ in knobs) == sorted(type(section(name)).model_fields), name


@pytest.mark.parametrize("name, field, value, probe", [(n, *k) for n, ks in KNOBS.items() for k in ks],
                         ids=[f"{n}-{k[0]}" for n, ks in KNOBS.items() for k in ks])
def test_every_configured_knob_reaches_its_code(name, field, value, probe):
    base = section(name)
    if isinstance(value, dict):
        value = {**getattr(base, field).model_dump(exclude_unset=True), **value}
    changed = section(name, **{field: value})
    assert getattr(changed, field) != getattr(base, field)
    assert not same(scenario(name, changed)[probe], scenario(name, base)[probe])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_paper_recipe_is_ards_released_schedule_with_nesterov(name):
    recipe = section(name).train.apply(Params().distill.train)
    assert (recipe.epochs, recipe.milestones, recipe.lr_decay, recipe.nesterov) == (200, [100, 150], "from_base", True)
    assert (recipe.lr, recipe.momentum, recipe.weight_decay, recipe.batch_size) == (0.1, 0.9, 2e-4, 128)


# ----------------------------------------------------------------------------------------------
# (d) state round trip
def _save_and_load(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_method_restored_from_its_state_continues_exactly(name):
    cfg = CONFIGS[name](begin=1) if name == "fair_iad" else CONFIGS[name]()
    original = build(name, cfg, attack=AttackConfig(steps=STEPS))
    scripted_epoch(original)
    original.on_epoch_end(1)
    scripted_epoch(original, right=[4, 1, 0])  # kappa sums of a half-done epoch
    restored = build(name, cfg, attack=AttackConfig(steps=STEPS))
    restored.load_state_dict(_save_and_load(original.state_dict()))
    for key in ("weights", "kappa_sum", "count"):
        assert torch.equal(getattr(restored, key), getattr(original, key)), key
    assert loss_of(restored) == loss_of(original) != loss_of(build(name, cfg))
    assert restored.on_epoch_end(2) == original.on_epoch_end(2)
    assert loss_of(restored) == loss_of(original)
    if name == "fair_iad":
        assert restored.epoch == original.epoch == 3


# ----------------------------------------------------------------------------------------------
# (e) a short training run through the real loop
CPU = Runtime(device=torch.device("cpu"), amp=False, channels_last=False, progress=False)


def tiny_run(name: str):
    rng = np.random.default_rng(0)
    labels = np.arange(48) % 4
    images = (rng.integers(0, 60, (48, 3, 16, 16)) + 40 * labels[:, None, None, None]).astype(np.uint8)
    torch.manual_seed(0)
    teacher = build_model("tiny_cnn", num_classes=4, in_channels=3).eval()
    model = build_model("tiny_cnn", num_classes=4, in_channels=3)
    loader = TensorLoader(images, labels, batch_size=16, shuffle=True, crop_padding=2, flip=True, seed=0)
    cfg = CONFIGS[name](begin=1) if name == "fair_iad" else CONFIGS[name](alpha=0.5)
    method = build_method(name, cfg, MethodContext(num_classes=4, attack=AttackConfig(eps="8/255", step="4/255", steps=2),
                                                   teacher=teacher))
    return model, method, loader, cfg.train.apply(Params().distill.train).model_copy(
        update={"epochs": 3, "batch_size": 16, "lr": 0.05, "milestones": [2]})


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_training_runs_without_nan_and_resumes_exactly(name, tmp_path):
    model, method, loader, cfg = tiny_run(name)
    straight = fit(model, method, loader, cfg, CPU, checkpoint=tmp_path / "a.pt", fingerprint="x")
    losses = [row["train_loss"] for row in straight.history]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    weights = [[row[f"w/{k}"] for k in range(4)] for row in straight.history]
    assert all(5 / 6 - 1e-6 <= v <= 5 / 2 + 1e-6 for w in weights for v in w)
    assert cfg.nesterov is True

    model, method, loader, cfg = tiny_run(name)
    fit(model, method, loader, cfg, CPU, checkpoint=tmp_path / "b.pt", fingerprint="x", stop_after=1)
    torch.manual_seed(12345)
    model, method, loader, cfg = tiny_run(name)
    resumed = fit(model, method, loader, cfg, CPU, checkpoint=tmp_path / "b.pt", fingerprint="x")
    assert resumed.resumed_from == 1
    for key, value in straight.final_state.items():
        assert torch.equal(value, resumed.final_state[key]), key
    assert [r["train_loss"] for r in resumed.history] == losses
