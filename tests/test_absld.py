"""ABSLD as specified in docs/method.md §2-§4: temperatures, their update, the two modes, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from absld.data import Batch, TensorLoader
from absld.methods import MethodContext, build_method
from absld.methods.absld import update_temperatures
from absld.models import build_model
from absld.params import AbsldConfig, AttackConfig, RsladConfig, TrainConfig
from absld.runtime import Runtime
from absld.train.loop import fit

CPU = Runtime(device=torch.device("cpu"), amp=False, channels_last=False, progress=False)
C = 4


# ---------------------------------------------------------------------------------------------
# the update rule (contract)
def test_class_with_largest_gap_moves_by_exactly_beta():
    tau = torch.ones(4)
    risk = torch.tensor([1.0, 2.0, 3.0, 6.0])  # mean 3, gaps -2, -1, 0, 3
    new = update_temperatures(tau, risk, beta=0.1, tau_min=0.5, tau_max=5.0)
    assert new[3].item() == pytest.approx(1.0 - 0.1)
    assert new.tolist() == pytest.approx([1 + 0.1 * 2 / 3, 1 + 0.1 / 3, 1.0, 0.9])


def test_higher_risk_classes_get_lower_temperatures():
    risk = torch.tensor([5.0, 1.0, 3.0])
    new = update_temperatures(torch.ones(3), risk, 0.2, 0.5, 5.0)
    assert new[0] < new[2] < new[1]


def test_temperatures_are_clamped_to_their_bounds():
    tau = torch.tensor([0.55, 4.95])
    new = update_temperatures(tau, torch.tensor([10.0, 0.0]), beta=0.3, tau_min=0.5, tau_max=5.0)
    assert new.tolist() == [0.5, 5.0]


def test_equal_risks_leave_temperatures_unchanged_instead_of_nan():
    tau = torch.tensor([0.7, 1.3, 2.0])
    new = update_temperatures(tau, torch.full((3,), 2.5), 0.1, 0.5, 5.0)
    assert torch.equal(new, tau) and not torch.isnan(new).any()


# ---------------------------------------------------------------------------------------------
# soft labels
def absld_with(mode: str, tau_adv, tau_nat):
    method = build_method("absld", AbsldConfig(beta_milestones=[], temperature_mode=mode),
                          MethodContext(num_classes=3, attack=AttackConfig(), teacher=torch.nn.Identity()))
    method.tau_adv, method.tau_nat = torch.tensor(tau_adv), torch.tensor(tau_nat)
    return method


def test_separate_mode_scales_each_term_by_its_own_temperature():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    y = torch.tensor([0, 2])
    method = absld_with("separate", [2.0, 1.0, 0.5], [0.8, 1.0, 3.0])
    p_adv, p_nat = method.soft_labels(z, y)
    assert torch.allclose(p_adv, F.softmax(z / torch.tensor([[2.0], [0.5]]), dim=1))
    assert torch.allclose(p_nat, F.softmax(z / torch.tensor([[0.8], [3.0]]), dim=1))


def test_aliased_mode_uses_the_product_of_both_temperatures_everywhere():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    y = torch.tensor([0, 2])
    method = absld_with("aliased", [2.0, 1.0, 0.5], [0.8, 1.0, 3.0])
    p_adv, p_nat = method.soft_labels(z, y)
    expected = F.softmax(z / torch.tensor([[2.0 * 0.8], [0.5 * 3.0]]), dim=1)
    assert torch.allclose(p_adv, expected) and torch.allclose(p_nat, expected)
    separate = absld_with("separate", [2.0, 1.0, 0.5], [0.8, 1.0, 3.0])
    assert not torch.allclose(separate.soft_labels(z, y)[0], expected)


def test_the_student_logits_are_never_temperature_scaled():
    z = torch.tensor([[2.0, 0.0, -1.0]])
    y = torch.tensor([0])
    x = torch.zeros(1, 1, 1, 1)
    student = lambda inp: torch.tensor([[0.3, 0.2, -0.4]]).expand(len(inp), 3)  # noqa: E731
    method = absld_with("separate", [2.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    out = method.loss(student, Batch(x, y, torch.arange(1)), x, z)
    p_adv = F.softmax(z / 2.0, dim=1)
    log_s = F.log_softmax(torch.tensor([[0.3, 0.2, -0.4]]), dim=1)
    kl_adv = (p_adv * (p_adv.log() - log_s)).sum() / 3
    p_nat = F.softmax(z, dim=1)
    kl_nat = (p_nat * (p_nat.log() - log_s)).sum() / 3
    assert out.loss.item() == pytest.approx((5 / 6 * kl_adv + 1 / 6 * kl_nat).item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# training with the loop
def tiny_problem(seed: int = 0):
    rng = np.random.default_rng(0)
    labels = np.arange(64) % C
    images = (rng.integers(0, 80, (64, 3, 12, 12)) + 40 * labels[:, None, None, None]).astype(np.uint8)
    torch.manual_seed(100)
    teacher = build_model("tiny_cnn", num_classes=C).eval().requires_grad_(False)
    torch.manual_seed(seed)
    student = build_model("tiny_cnn", num_classes=C)
    loader = TensorLoader(images, labels, batch_size=16, shuffle=True, crop_padding=2, flip=True, seed=seed)
    return teacher, student, loader


def make(name, cfg, teacher):
    ctx = MethodContext(num_classes=C, attack=AttackConfig(eps="8/255", step="4/255", steps=2),
                        teacher=teacher, kl_reduction="element_mean")
    return build_method(name, cfg, ctx)


TRAIN = TrainConfig(epochs=3, batch_size=16, lr=0.05, milestones=[2])


def test_absld_with_zero_beta_equals_rslad_bit_for_bit():
    teacher, student, loader = tiny_problem()
    rslad = fit(student, make("rslad", RsladConfig(), teacher), loader, TRAIN.model_copy(update={"epochs": 2}), CPU)
    teacher, student, loader = tiny_problem()
    absld = fit(student, make("absld", AbsldConfig(beta_milestones=[], beta=0.0), teacher), loader,
                TRAIN.model_copy(update={"epochs": 2}), CPU)
    for key, value in rslad.final_state.items():
        assert torch.equal(value, absld.final_state[key]), key


def test_absld_with_positive_beta_trains_differently_from_rslad():
    teacher, student, loader = tiny_problem()
    rslad = fit(student, make("rslad", RsladConfig(), teacher), loader, TRAIN, CPU)
    teacher, student, loader = tiny_problem()
    absld = fit(student, make("absld", AbsldConfig(beta_milestones=[], beta=0.5), teacher), loader, TRAIN, CPU)
    assert any(not torch.equal(v, absld.final_state[k]) for k, v in rslad.final_state.items())


def test_logged_temperatures_follow_the_update_rule_row_by_row():
    teacher, student, loader = tiny_problem()
    cfg = AbsldConfig(beta=0.3, beta_milestones=[2], beta_gamma=0.5, tau_min=0.6, tau_max=3.0)
    method = make("absld", cfg, teacher)
    fit(student, method, loader, TRAIN, CPU)
    rows = method.log
    assert len(rows) == TRAIN.epochs * C
    by_epoch = {e: [r for r in rows if r["epoch"] == e] for e in range(1, TRAIN.epochs + 1)}
    assert [by_epoch[e][0]["beta"] for e in (1, 2, 3)] == pytest.approx([0.3, 0.15, 0.15])
    assert all(r["tau_adv"] == 1.0 and r["tau_nat"] == 1.0 for r in by_epoch[1])
    for epoch in (1, 2):
        now, after = by_epoch[epoch], by_epoch[epoch + 1]
        for key in ("adv", "nat"):
            tau = torch.tensor([r[f"tau_{key}"] for r in now])
            risk = torch.tensor([r[f"risk_{key}"] for r in now])
            expected = update_temperatures(tau, risk, now[0]["beta"], cfg.tau_min, cfg.tau_max)
            assert torch.allclose(torch.tensor([r[f"tau_{key}"] for r in after]), expected, atol=1e-6)
    final = update_temperatures(torch.tensor([r["tau_adv"] for r in by_epoch[3]]),
                                torch.tensor([r["risk_adv"] for r in by_epoch[3]]), 0.15, 0.6, 3.0)
    assert torch.allclose(method.tau_adv, final, atol=1e-6)


def test_risks_are_per_class_sums_of_the_epochs_cross_entropy():
    teacher, student, loader = tiny_problem()
    method = make("absld", AbsldConfig(beta_milestones=[]), teacher)
    fit(student, method, loader, TRAIN.model_copy(update={"epochs": 1}), CPU)
    risk = torch.tensor([r["risk_adv"] for r in method.log])
    # 16 samples per class, CE of a near-uniform 4-class student is about log 4 each
    assert risk.shape == (C,) and torch.all(risk > 0)
    assert risk.sum().item() == pytest.approx(64 * np.log(C), rel=0.5)
    assert method.risk_adv.total is None  # reset for the next epoch


def test_resume_restores_temperatures_risks_and_log_exactly(tmp_path):
    cfg = AbsldConfig(beta_milestones=[], beta=0.4)
    teacher, student, loader = tiny_problem()
    straight = make("absld", cfg, teacher)
    result = fit(student, straight, loader, TRAIN, CPU, checkpoint=tmp_path / "a.pt", fingerprint="f")

    teacher, student, loader = tiny_problem()
    fit(student, make("absld", cfg, teacher), loader, TRAIN, CPU, checkpoint=tmp_path / "b.pt",
        fingerprint="f", stop_after=2)
    teacher, student, loader = tiny_problem()
    resumed = make("absld", cfg, teacher)
    again = fit(student, resumed, loader, TRAIN, CPU, checkpoint=tmp_path / "b.pt", fingerprint="f")
    assert again.resumed_from == 2
    assert torch.equal(straight.tau_adv, resumed.tau_adv) and torch.equal(straight.tau_nat, resumed.tau_nat)
    assert straight.log == resumed.log and straight.beta == resumed.beta
    assert all(torch.equal(v, again.final_state[k]) for k, v in result.final_state.items())


def test_temperatures_used_reads_the_rows_of_the_selected_epoch():
    from absld.methods.absld import temperatures_used

    log = [{"epoch": e, "class": k, "tau_adv": 10 * e + k, "tau_nat": -(10 * e + k)}
           for e in (1, 2, 3) for k in (1, 0)]  # class order scrambled on purpose
    assert temperatures_used(log, 2) == ([20.0, 21.0], [-20.0, -21.0])
    with pytest.raises(ValueError, match="epoch 4"):
        temperatures_used(log, 4)


# ---------------------------------------------------------------------------------------------
# the attack target and the class risks, by hand
def _captured_attack_loss(mode: str, monkeypatch):
    """Run ABSLD's perturb with the PGD engine replaced by a recorder of its loss function."""
    import absld.methods.rslad as rslad_module

    captured = {}

    def fake_pgd(model, x, loss_fn, **kwargs):
        captured["loss_fn"], captured["kwargs"] = loss_fn, kwargs
        return x

    monkeypatch.setattr(rslad_module, "pgd", fake_pgd)
    method = absld_with(mode, [2.0, 1.0, 0.5], [0.8, 1.0, 3.0])
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    y = torch.tensor([0, 2])
    method.perturb(lambda inp: inp, Batch(torch.zeros(2, 1, 1, 3), y, torch.arange(2)), z)
    return captured, z


@pytest.mark.parametrize("mode", ["separate", "aliased"])
def test_the_attack_maximises_kl_to_tau_adv_labels_or_to_the_product_when_aliased(mode, monkeypatch):
    captured, z = _captured_attack_loss(mode, monkeypatch)
    scale = torch.tensor([[2.0], [0.5]]) if mode == "separate" else torch.tensor([[2.0 * 0.8], [0.5 * 3.0]])
    target = F.softmax(z / scale, dim=1)
    logits = torch.tensor([[0.1, 0.4, -0.3], [1.0, -1.0, 0.2]])
    expected = (target * (target.log() - F.log_softmax(logits, dim=1))).sum(1)  # per-sample KL
    assert torch.allclose(captured["loss_fn"](logits), expected, atol=1e-6)
    assert captured["kwargs"]["start"] == "gaussian"
    # not the natural temperatures, not the untempered teacher
    for wrong in (F.softmax(z / torch.tensor([[0.8], [3.0]]), dim=1), F.softmax(z, dim=1)):
        assert not torch.allclose(captured["loss_fn"](logits),
                                  (wrong * (wrong.log() - F.log_softmax(logits, dim=1))).sum(1), atol=1e-4)


def test_class_risks_are_the_adversarial_and_the_clean_cross_entropy_credited_to_the_true_class():
    """R_adv[k] = sum over samples of class k of CE(S(x'_i), y_i); R_nat likewise on the clean x,
    written out with math for four samples of three classes (class 1 has none)."""
    import math

    def student(inp):
        v = inp.flatten(1)  # (B, 2)
        return torch.stack([v[:, 0], v[:, 1], v[:, 0] - v[:, 1]], dim=1)

    x = torch.tensor([[0.2, 0.7], [0.9, 0.4], [0.5, 0.5], [0.1, 0.0]]).reshape(4, 1, 1, 2)
    x_adv = torch.tensor([[0.3, 0.6], [0.6, 0.9], [0.2, 0.8], [0.4, 0.3]]).reshape(4, 1, 1, 2)
    y = torch.tensor([0, 2, 0, 2])
    method = absld_with("separate", [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    method.loss(student, Batch(x, y, torch.arange(4)), x_adv, torch.zeros(4, 3))

    def ce(v, k):
        z = [v[0], v[1], v[0] - v[1]]
        return -(z[k] - math.log(sum(math.exp(t) for t in z)))

    flat_adv, flat_nat = x_adv.flatten(1).tolist(), x.flatten(1).tolist()
    r_adv = [sum(ce(flat_adv[i], k) for i in range(4) if int(y[i]) == k) for k in range(3)]
    r_nat = [sum(ce(flat_nat[i], k) for i in range(4) if int(y[i]) == k) for k in range(3)]
    assert method.risk_adv.value().tolist() == pytest.approx(r_adv, rel=1e-5)
    assert method.risk_nat.value().tolist() == pytest.approx(r_nat, rel=1e-5)
    assert r_adv[1] == 0 and r_adv != pytest.approx(r_nat, rel=1e-3)


def test_class_risk_follows_the_losses_device_and_loads_onto_the_requested_one():
    """The running sums live where the losses are (a GPU in real runs): 'meta' stands in for CUDA
    on this CPU-only machine. A first batch creates them there; a later batch on another device
    moves them; a resumed state goes to the device asked for."""
    from absld.methods.risk import ClassRisk

    meta = torch.device("meta")
    risk = ClassRisk(3)
    risk.add(torch.ones(2, device=meta), torch.tensor([0, 2], device=meta))
    assert risk.total.device == meta
    moved = ClassRisk(3)
    moved.add(torch.tensor([1.0, 2.0]), torch.tensor([0, 1]))
    assert moved.value().tolist() == [1.0, 2.0, 0.0]
    moved.add(torch.ones(2, device=meta), torch.tensor([0, 2], device=meta))
    assert moved.total.device == meta
    loaded = ClassRisk(3)
    loaded.load_state_dict({"total": torch.tensor([1.0, 2.0, 3.0])}, device=meta)
    assert loaded.total.device == meta
    kept = ClassRisk(3)
    kept.load_state_dict({"total": torch.tensor([1.0, 2.0, 3.0])})
    assert kept.total.tolist() == [1.0, 2.0, 3.0] and kept.total.device.type == "cpu"


def test_epoch_end_logs_every_column_and_returns_the_tracked_values():
    """One end-of-epoch update by hand: the log rows (temperatures.csv's columns), the clamp at both
    bounds, and the numbers streamed to W&B / train_log.csv."""
    method = build_method("absld", AbsldConfig(beta_milestones=[1], beta=1.0, beta_gamma=0.5, tau_min=0.8,
                                               tau_max=1.2),
                          MethodContext(num_classes=3, attack=AttackConfig(), teacher=torch.nn.Identity()))
    y = torch.tensor([0, 1, 2])
    method.risk_adv.add(torch.tensor([3.0, 1.0, 2.0]), y)  # gaps +1, -1, 0
    method.risk_nat.add(torch.tensor([1.0, 2.0, 3.0]), y)  # gaps -1, 0, +1
    out = method.on_epoch_end(1)
    assert [list(r) for r in method.log] == [["epoch", "class", "tau_adv", "tau_nat", "risk_adv", "risk_nat", "beta"]] * 3
    assert [(r["class"], r["risk_adv"], r["risk_nat"], r["beta"]) for r in method.log] == [
        (0, 3.0, 1.0, 0.5), (1, 1.0, 2.0, 0.5), (2, 2.0, 3.0, 0.5)]
    # beta halved at its milestone (epoch 1) before the update: 1 -/+ 0.5, clamped to [0.8, 1.2]
    assert method.tau_adv.tolist() == pytest.approx([0.8, 1.2, 1.0])
    assert method.tau_nat.tolist() == pytest.approx([1.2, 1.0, 0.8])
    # the row streamed to W&B / train_log.csv holds the temperatures used during the epoch (as its
    # temperatures.csv rows do), not the update just made
    assert out == pytest.approx({"beta": 0.5, "tau_adv_min": 1.0, "tau_adv_max": 1.0, "tau_nat_min": 1.0,
                                 "tau_nat_max": 1.0, **{f"tau_{kind}/{k}": 1.0 for kind in ("adv", "nat")
                                                        for k in range(3)}})
    second = method.on_epoch_end(2)  # no risk this epoch: the update leaves them; the row shows epoch 2's
    assert second == pytest.approx({"beta": 0.5, "tau_adv_min": 0.8, "tau_adv_max": 1.2, "tau_nat_min": 0.8,
                                    "tau_nat_max": 1.2, "tau_adv/0": 0.8, "tau_adv/1": 1.2, "tau_adv/2": 1.0,
                                    "tau_nat/0": 1.2, "tau_nat/1": 1.0, "tau_nat/2": 0.8})


def test_temperatures_move_to_the_teacher_logits_device():
    """'meta' stands in for CUDA: the temperatures follow the teacher's logits to their device."""
    meta = torch.device("meta")
    method = absld_with("separate", [2.0, 1.0, 0.5], [0.8, 1.0, 3.0])
    p_adv, p_nat = method.soft_labels(torch.zeros(2, 3, device=meta), torch.tensor([0, 2], device=meta))
    assert method.tau_adv.device == meta and method.tau_nat.device == meta
    assert p_adv.device == meta and p_nat.device == meta and p_adv.shape == (2, 3)


def test_absld_hands_the_stage_its_temperatures_through_the_artefacts_hook():
    """The distill stage writes what a method's ``artefacts`` returns, never asking which method it
    is: for ABSLD temperatures.csv (contract columns) and the temperatures of the chosen epoch."""
    from absld.methods.absld import ABSLD, TEMPERATURE_COLUMNS
    from absld.methods.base import MethodBase

    method = ABSLD.__new__(ABSLD)  # only the log matters here
    method.log = [{"epoch": e, "class": k, "tau_adv": 10 * e + k, "tau_nat": -(10 * e + k), "risk_adv": 0.0,
                   "risk_nat": 0.0, "beta": 0.1} for e in (1, 2) for k in (0, 1)]
    extra = method.artefacts(2, ["cat", "dog"])
    assert extra.tables == {"temperatures.csv": (method.log, TEMPERATURE_COLUMNS)}
    assert TEMPERATURE_COLUMNS == ["epoch", "class", "tau_adv", "tau_nat", "risk_adv", "risk_nat", "beta"]
    assert extra.metrics == {"final_tau_adv": {"cat": 20.0, "dog": 21.0}, "final_tau_nat": {"cat": -20.0, "dog": -21.0},
                             "final_tau_epoch": 2}
    assert extra.temperatures is method.log
    plain = MethodBase.artefacts(MethodBase.__new__(MethodBase), 2, ["cat", "dog"])
    assert (plain.tables, plain.metrics, plain.temperatures) == ({}, {}, None)


def test_fair_rslad_and_the_control_write_their_class_weights_per_epoch():
    """weights.csv from the per-class keys of the training log (``w/<k>``; ``w_adv/<k>``)."""
    from absld.methods.base import per_class_rows
    from absld.methods.fair_rslad import FairRSLAD
    from absld.methods.reweighted_rslad import ReweightedRSLAD

    history = [{"epoch": e, "train_loss": 1.0, **{f"w/{k}": e + k / 10 for k in range(3)},
                **{f"w_adv/{k}": -(e + k) for k in range(3)}} for e in (1, 2)]
    assert per_class_rows(history, ["w"])[4] == {"epoch": 2, "class": 1, "w": 2.1}
    fair = FairRSLAD.artefacts(FairRSLAD.__new__(FairRSLAD), 2, ["a", "b", "c"], history)
    rows, columns = fair.tables["weights.csv"]
    assert columns == ["epoch", "class", "w"] and len(rows) == 6 and rows[2] == {"epoch": 1, "class": 2, "w": 1.2}
    control = ReweightedRSLAD.artefacts(ReweightedRSLAD.__new__(ReweightedRSLAD), 2, ["a", "b", "c"], history)
    rows, columns = control.tables["weights.csv"]
    assert columns == ["epoch", "class", "w_adv"] and rows[-1] == {"epoch": 2, "class": 2, "w_adv": -4}
