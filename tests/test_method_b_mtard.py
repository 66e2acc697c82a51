"""Specification of B-MTARD (absld/methods/b_mtard.py) and of its clean teacher (params teacher_clean,
stage teacher-clean).

The loss cases use a 2-sample, 3-class batch whose student, robust teacher and clean teacher are fixed
affine maps of a (B, 1, 1, 2) input; every expected number is computed below with ``math`` only from
the official ``resnet18_mtard_cifar10.py`` rule (KL averaged over B x C; weights moved towards the
normalised loss ratios; temperatures against the sign of the entropy gap).
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import yaml
import torch
from torch import Tensor, nn

from absld.data import Batch, TensorLoader
from absld.io import sha256_file
from absld.methods import METHODS, MethodContext, Natural, build_method
from absld.methods.b_mtard import balance_temperatures, balance_weights
from absld.models import build_model, checkpoint_meta, load_checkpoint, save_checkpoint
from absld.params import AttackConfig, BMtardConfig, CleanTeacherConfig, ConfigError, Params, TrainConfig, parse_params
from absld.runtime import Runtime
from absld.train.loop import fit
from absld.vocab import CLEAN_TEACHER_METHODS
from tests.conftest import profile_params_text
from tests.test_stages import invoke, set_params

C = 3
CPU = Runtime(device=torch.device("cpu"), amp=False, channels_last=False, progress=False)

STUDENT_W, STUDENT_B = [[2.0, -1.0], [-1.0, 3.0], [0.5, 0.5]], [0.1, -0.2, 0.0]
ROBUST_W, ROBUST_B = [[3.0, 0.0], [0.0, 2.0], [-1.0, 1.0]], [0.0, 0.3, -0.1]
CLEAN_W, CLEAN_B = [[6.0, -2.0], [-1.0, 5.0], [1.0, 1.0]], [0.5, 0.0, -0.5]
X1, X1_ADV, Y1 = [[0.2, 0.7], [0.9, 0.4]], [[0.25, 0.65], [0.85, 0.45]], [0, 2]
X2, X2_ADV, Y2 = [[0.6, 0.1], [0.3, 0.3]], [[0.55, 0.15], [0.35, 0.25]], [1, 0]


class Affine(nn.Module):
    """(B, 1, 1, 2) -> (B, 3) logits ``W x + b``."""

    def __init__(self, weight, bias) -> None:
        super().__init__()
        self.linear = nn.Linear(2, C)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor(weight))
            self.linear.bias.copy_(torch.tensor(bias))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))


# -- the hand side: math only ---------------------------------------------------------------------
def affine(w, b, x):
    return [sum(w[k][j] * x[j] for j in range(2)) + b[k] for k in range(C)]


def softmax(z, t=1.0):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def log_softmax(z):
    m = math.log(sum(math.exp(v) for v in z))
    return [v - m for v in z]


def kl(p, z):  # KL(p || softmax(z)), summed over classes
    q = log_softmax(z)
    return sum(p[c] * (math.log(p[c]) - q[c]) for c in range(C))


def entropy(p):
    return -sum(v * math.log(v) for v in p)


def hand_terms(x, x_adv, tau_adv, tau_nat):
    """(L_adv, L_nat, H_adv, H_nat): KLs averaged over B x C, teacher entropies averaged over B."""
    l_adv = l_nat = h_adv = h_nat = 0.0
    for xi, ai in zip(x, x_adv):
        p_adv = softmax(affine(ROBUST_W, ROBUST_B, ai), tau_adv)
        p_nat = softmax(affine(CLEAN_W, CLEAN_B, xi), tau_nat)
        l_adv += kl(p_adv, affine(STUDENT_W, STUDENT_B, ai)) / (len(x) * C)
        l_nat += kl(p_nat, affine(STUDENT_W, STUDENT_B, xi)) / (len(x) * C)
        h_adv += entropy(p_adv) / len(x)
        h_nat += entropy(p_nat) / len(x)
    return l_adv, l_nat, h_adv, h_nat


def sign(v):
    return (v > 0) - (v < 0)


# -- the code side ----------------------------------------------------------------------------------
def build(cfg: BMtardConfig | None = None, kl_reduction: str = "element_mean"):
    ctx = MethodContext(num_classes=C, attack=AttackConfig(), teacher=Affine(ROBUST_W, ROBUST_B).eval(),
                        clean_teacher=Affine(CLEAN_W, CLEAN_B).eval(), kl_reduction=kl_reduction)
    return build_method("b_mtard", cfg or BMtardConfig(rate_milestones=[]), ctx)


def step(method, x, x_adv, y) -> float:
    """One ``loss`` call as the loop makes it (the clean teacher's logits on x as teacher_logits)."""
    batch = Batch(x=torch.tensor(x).reshape(-1, 1, 1, 2), y=torch.tensor(y), index=torch.arange(len(y)))
    with torch.no_grad():
        teacher_logits = method.logits_teacher(batch.x).float()
    return float(method.loss(Affine(STUDENT_W, STUDENT_B), batch, torch.tensor(x_adv).reshape(-1, 1, 1, 2),
                             teacher_logits).loss.detach())


# ---------------------------------------------------------------------------------------------------
# (a) the loss by hand
def test_the_first_step_is_half_each_kl_averaged_over_batch_and_classes_at_temperature_one():
    l_adv, l_nat, _, _ = hand_terms(X1, X1_ADV, 1.0, 1.0)
    assert step(build(), X1, X1_ADV, Y1) == pytest.approx(0.5 * l_adv + 0.5 * l_nat, rel=1e-6)


def test_the_second_step_uses_the_weights_and_temperatures_moved_by_the_first_and_its_own_losses():
    method = build()
    step(method, X1, X1_ADV, Y1)
    l0_adv, l0_nat, h_adv, h_nat = hand_terms(X1, X1_ADV, 1.0, 1.0)
    tau_adv = min(max(1.0 - 0.001 * sign(h_adv - h_nat), 1.0), 10.0)  # clamped at temp_min = 1
    tau_nat = min(max(1.0 - 0.001 * sign(h_nat - h_adv), 1.0), 10.0)
    assert {tau_adv, tau_nat} == {1.0, 1.001}
    l_adv, l_nat, _, _ = hand_terms(X2, X2_ADV, tau_adv, tau_nat)
    lhat_adv, lhat_nat = l_adv / l0_adv, l_nat / l0_nat
    w_adv = 0.5 - 0.025 * (0.5 - lhat_adv / (lhat_adv + lhat_nat))
    w_nat = 0.5 - 0.025 * (0.5 - lhat_nat / (lhat_adv + lhat_nat))
    assert step(method, X2, X2_ADV, Y2) == pytest.approx(w_adv * l_adv + w_nat * l_nat, rel=1e-6)
    assert method.weights.tolist() == pytest.approx([w_adv, w_nat], rel=1e-6)


def test_batchmean_multiplies_the_loss_by_the_number_of_classes_and_changes_no_state():
    a, b = build(), build(kl_reduction="batchmean")
    for x, x_adv, y in ((X1, X1_ADV, Y1), (X2, X2_ADV, Y2)):
        assert step(b, x, x_adv, y) == pytest.approx(C * step(a, x, x_adv, y), rel=1e-6)
    assert torch.allclose(a.weights, b.weights) and torch.equal(a.tau, b.tau)


def test_the_robust_teacher_sees_the_adversarial_input_and_the_clean_teacher_the_clean_one():
    method = build()
    assert method.logits_teacher is method.clean_teacher  # the loop's clean-input logits are the clean teacher's
    seen = []
    method.teacher.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    step(method, X1, X1_ADV, Y1)
    (x_seen,) = seen
    assert torch.equal(x_seen, torch.tensor(X1_ADV).reshape(-1, 1, 1, 2))


def test_the_attack_maximises_the_students_cross_entropy_from_a_gaussian_start(monkeypatch):
    calls = {}

    def spy(model, x, loss_fn, **kwargs):
        calls.update(model=model, loss_fn=loss_fn, **kwargs)
        return x

    monkeypatch.setattr("absld.methods.b_mtard.pgd", spy)
    method = build()
    student = Affine(STUDENT_W, STUDENT_B)
    batch = Batch(x=torch.tensor(X1).reshape(-1, 1, 1, 2), y=torch.tensor(Y1), index=torch.arange(2))
    method.perturb(student, batch, None)
    assert calls["model"] is student and calls["start"] == "gaussian" and method.attack_mode == "eval"
    assert (calls["eps"], calls["step"], calls["steps"]) == (8 / 255, 2 / 255, 10)
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    expected = [-log_softmax(logits[0].tolist())[0], -log_softmax(logits[1].tolist())[2]]
    assert calls["loss_fn"](logits).tolist() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------------------------
# (b) the state updates by hand
def test_the_weights_move_a_rate_towards_the_normalised_loss_ratios():
    new = balance_weights(torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([0.8, 0.4], dtype=torch.float64),
                          torch.tensor([1.0, 2.0], dtype=torch.float64), 0.1)
    r_adv, r_nat = 0.8 / (0.8 + 0.2), 0.2 / (0.8 + 0.2)  # lhat = (0.8, 0.2)
    assert new.tolist() == pytest.approx([0.5 - 0.1 * (0.5 - r_adv), 0.5 - 0.1 * (0.5 - r_nat)])


def test_weights_are_clamped_at_zero_then_renormalised():
    new = balance_weights(torch.tensor([1.2, -0.2], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64),
                          torch.tensor([1.0, 1.0], dtype=torch.float64), 0.5)
    # 1.2 - 0.5 (1.2 - 0.5) = 0.85, -0.2 - 0.5 (-0.2 - 0.5) = 0.15: no clamp; then a case that clamps
    assert new.tolist() == pytest.approx([0.85, 0.15])
    clamped = balance_weights(torch.tensor([1.5, -0.9], dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64),
                              torch.tensor([1.0, 1.0], dtype=torch.float64), 0.5)
    # 1.5 - 0.5 (1.5 - 1) = 1.25, -0.9 - 0.5 (-0.9 - 0) = -0.45 -> 0; renormalised: (1, 0)
    assert clamped.tolist() == pytest.approx([1.0, 0.0])


def test_two_zero_losses_leave_the_weights_where_they_are():
    w = torch.tensor([0.7, 0.3], dtype=torch.float64)
    assert balance_weights(w, torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64), 0.5).tolist() == pytest.approx([0.7, 0.3])


def test_the_more_uncertain_teacher_is_sharpened_and_the_other_softened_within_bounds():
    tau = torch.tensor([2.0, 2.0], dtype=torch.float64)
    assert balance_temperatures(tau, torch.tensor([1.0, 0.5]), 0.25, 1.0, 10.0).tolist() == [1.75, 2.25]
    assert balance_temperatures(tau, torch.tensor([0.5, 1.0]), 0.25, 1.0, 10.0).tolist() == [2.25, 1.75]
    assert balance_temperatures(tau, torch.tensor([0.7, 0.7]), 0.25, 1.0, 10.0).tolist() == [2.0, 2.0]  # sign(0)
    assert balance_temperatures(tau, torch.tensor([1.0, 0.5]), 5.0, 1.0, 4.0).tolist() == [1.0, 4.0]


# ---------------------------------------------------------------------------------------------------
# (c) every knob reaches its code
def _after_two_steps(**changes):
    method = build(BMtardConfig(rate_milestones=[], **changes))
    first = step(method, X1, X1_ADV, Y1)
    second = step(method, X2, X2_ADV, Y2)
    return first, second, method


def test_weight_init_sets_the_weights_that_the_first_step_moves_towards_one_half():
    l_adv, l_nat, _, _ = hand_terms(X1, X1_ADV, 1.0, 1.0)
    first, _, _ = _after_two_steps(weight_init=0.8)  # first step: lhat = (1, 1), so r = (1/2, 1/2)
    w_adv, w_nat = 0.8 - 0.025 * (0.8 - 0.5), 0.2 - 0.025 * (0.2 - 0.5)
    assert first == pytest.approx(w_adv * l_adv + w_nat * l_nat, rel=1e-6)


def test_weight_lr_sets_how_far_the_weights_move():
    _, _, still = _after_two_steps(weight_lr=0.0)
    _, _, moved = _after_two_steps(weight_lr=0.5)
    assert still.weights.tolist() == [0.5, 0.5] and moved.weights[0] != 0.5


def test_temp_init_divides_both_teachers_logits_on_the_first_step():
    l_adv, l_nat, _, _ = hand_terms(X1, X1_ADV, 3.0, 3.0)
    first, _, _ = _after_two_steps(temp_init=3.0)
    assert first == pytest.approx(0.5 * l_adv + 0.5 * l_nat, rel=1e-6)


def test_temp_lr_is_the_temperature_step_and_zero_freezes_them_as_mtard():
    _, _, moved = _after_two_steps(temp_init=2.0, temp_lr=0.25)
    assert sorted(moved.tau.tolist()) == [1.5, 2.5]  # two steps of 0.25, the same way (the gap's sign held)
    _, _, frozen = _after_two_steps(temp_init=2.0, temp_lr=0.0)
    assert frozen.tau.tolist() == [2.0, 2.0]


def test_temp_min_and_temp_max_clamp_the_temperatures():
    _, _, method = _after_two_steps(temp_init=2.0, temp_lr=5.0, temp_min=1.5, temp_max=3.0)
    assert sorted(method.tau.tolist()) == [1.5, 3.0]


def test_the_rates_decay_by_rate_gamma_after_each_rate_milestone_only():
    method = build(BMtardConfig(rate_milestones=[2, 4], rate_gamma=0.5))
    rates = []
    for epoch in range(1, 6):
        logged = method.on_epoch_end(epoch)
        rates.append((logged["weight_lr"], logged["temp_lr"]))  # the rates used during that epoch
    assert rates == [(0.025, 0.001), (0.025, 0.001), (0.0125, 0.0005), (0.0125, 0.0005), (0.00625, 0.00025)]


def test_rate_milestones_null_follow_the_methods_learning_rate_milestones():
    params = Params.model_validate({"distill": {"b_mtard": {"train": {"milestones": [5, 7]}}}})
    assert params.distill.method_config("b_mtard").rate_milestones == [5, 7]
    assert Params().distill.method_config("b_mtard").rate_milestones == [215, 260, 285]


def test_the_defaults_are_the_official_scripts():
    cfg = Params().distill.b_mtard
    assert (cfg.weight_init, cfg.weight_lr, cfg.temp_init, cfg.temp_lr, cfg.temp_min, cfg.temp_max, cfg.rate_gamma) == (
        0.5, 0.025, 1.0, 0.001, 1.0, 10.0, 0.1)
    assert Params().teacher_clean.model.arch == "resnet56" and Params().teacher_clean.source == "train"


def test_temperature_bounds_are_validated():
    with pytest.raises(ValueError, match="temp_min <= temp_init <= temp_max"):
        BMtardConfig(temp_init=0.5)


# ---------------------------------------------------------------------------------------------------
# (d) the state survives a resume exactly
def test_state_round_trip_continues_exactly():
    cfg = BMtardConfig(rate_milestones=[1])
    method = build(cfg)
    step(method, X1, X1_ADV, Y1)
    method.on_epoch_end(1)  # both rates decayed
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    resumed = build(cfg)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert step(resumed, X2, X2_ADV, Y2) == step(method, X2, X2_ADV, Y2)
    assert torch.equal(resumed.weights, method.weights) and torch.equal(resumed.tau, method.tau)
    assert torch.equal(resumed.initial_loss, method.initial_loss)
    assert (resumed.weight_lr, resumed.temp_lr) == (method.weight_lr, method.temp_lr) == pytest.approx((0.0025, 0.0001))


def test_the_initial_losses_are_those_of_the_first_batch_of_the_whole_run():
    method = build()
    step(method, X1, X1_ADV, Y1)
    method.on_epoch_end(1)
    step(method, X2, X2_ADV, Y2)
    l0_adv, l0_nat, _, _ = hand_terms(X1, X1_ADV, 1.0, 1.0)
    assert method.initial_loss.tolist() == pytest.approx([l0_adv * C, l0_nat * C], rel=1e-6)  # per-sample means


# ---------------------------------------------------------------------------------------------------
# who needs which teacher
def test_b_mtard_needs_both_teachers_and_the_vocabulary_says_so():
    assert {n for n, cls in METHODS.items() if cls.uses_clean_teacher} == set(CLEAN_TEACHER_METHODS) == {"b_mtard"}
    with pytest.raises(ValueError, match="clean teacher"):
        build_method("b_mtard", BMtardConfig(), MethodContext(num_classes=C, attack=AttackConfig(),
                                                               teacher=Affine(ROBUST_W, ROBUST_B)))
    assert "natural" not in METHODS  # the clean teacher's trainer is no student method


def test_the_check_refuses_b_mtard_without_a_clean_teacher_and_accepts_it_with_one():
    with pytest.raises(ConfigError, match="teacher_clean.source is none"):
        parse_params({"distill": {"methods": ["rslad", "b_mtard"]}, "teacher_clean": {"source": "none"}})
    parse_params({"distill": {"methods": ["rslad", "b_mtard"]}, "teacher_clean": {"source": "train"}})
    assert "b_mtard" in Params().distill.methods and Params().teacher_clean.source == "train"  # the paper's DAG


def test_a_clean_teacher_from_a_file_needs_its_checksum():
    with pytest.raises(ValueError, match="teacher_clean.sha256"):
        CleanTeacherConfig(source="file", path="x.pt")
    with pytest.raises(ValueError, match="exactly one of teacher_clean.path, teacher_clean.url"):
        CleanTeacherConfig(source="file", sha256="0" * 64)


# ---------------------------------------------------------------------------------------------------
# (e) through the real loop
def _loader(seed=0):
    rng = np.random.default_rng(0)
    labels = np.arange(48) % 4
    images = (rng.integers(0, 60, (48, 3, 16, 16)) + 40 * labels[:, None, None, None]).astype(np.uint8)
    return TensorLoader(images, labels, batch_size=16, shuffle=True, crop_padding=2, flip=True, seed=seed)


def test_b_mtard_trains_through_the_loop_without_nan_and_logs_its_balance():
    torch.manual_seed(0)
    student = build_model("tiny_cnn", num_classes=4)
    robust, clean = (build_model("tiny_cnn", num_classes=4).eval().requires_grad_(False) for _ in range(2))
    method = build_method("b_mtard", BMtardConfig(temp_lr=0.05, rate_milestones=[1]), MethodContext(
        num_classes=4, attack=AttackConfig(eps="8/255", step="4/255", steps=2), teacher=robust, clean_teacher=clean))
    history = fit(student, method, _loader(), TrainConfig(epochs=2, batch_size=16, milestones=[1]), CPU).history
    assert len(history) == 2 and all(math.isfinite(row["train_loss"]) for row in history)
    assert history[0]["temp_lr"] == 0.05 and history[1]["temp_lr"] == pytest.approx(0.005)
    assert history[1]["w_adv"] + history[1]["w_nat"] == pytest.approx(1.0)
    assert history[1]["tau_adv"] != 1.0 or history[1]["tau_nat"] != 1.0
    rows, columns = method.artefacts(2, ["a", "b", "c", "d"], history).tables["balance.csv"]
    assert [r["epoch"] for r in rows] == [1, 2] and columns[0] == "epoch"


def test_natural_training_is_cross_entropy_on_the_clean_images():
    student = Affine(STUDENT_W, STUDENT_B)
    method = Natural(None, MethodContext(num_classes=C, attack=AttackConfig()))
    batch = Batch(x=torch.tensor(X1).reshape(-1, 1, 1, 2), y=torch.tensor(Y1), index=torch.arange(2))
    assert method.perturb(student, batch, None) is batch.x
    expected = sum(-log_softmax(affine(STUDENT_W, STUDENT_B, x))[y] for x, y in zip(X1, Y1)) / 2
    assert float(method.loss(student, batch, batch.x, None).loss.detach()) == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------------------------
# the teacher-clean stage and the distill stage
@pytest.fixture()
def project(tmp_path, monkeypatch):
    """A scratch directory with the tiny profile's params.yaml (its data: generated)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(profile_params_text("tiny"))
    return tmp_path


def without_b_mtard(project) -> None:
    """The tiny profile without B-MTARD and without a clean teacher."""
    methods = [m for m in yaml.safe_load((project / "params.yaml").read_text())["distill"]["methods"] if m != "b_mtard"]
    set_params(project, **{"teacher_clean.source": "none", "distill.methods": methods})


def test_without_a_clean_teacher_the_stage_writes_a_constant_placeholder_and_constant_links(project):
    without_b_mtard(project)
    assert invoke("prepare").exit_code == 0
    assert invoke("teacher", "--clean").exit_code == 0
    first = {p.name: p.read_bytes() for p in sorted((project / "models").rglob("*")) if p.is_file()}
    assert invoke("teacher", "--clean").exit_code == 0
    again = {p.name: p.read_bytes() for p in sorted((project / "models").rglob("*")) if p.is_file()}
    assert first == again and "teacher.pt" not in first  # the robust teacher is not made
    assert (project / "models/teacher_clean_of/b_mtard.txt").read_text() == "none: teacher_clean.source is none\n"
    assert (project / "models/teacher_clean_of/rslad.txt").read_text() == "none: rslad distils from no clean teacher\n"
    with pytest.raises(Exception, match="lacks key"):
        load_checkpoint(project / "models/teacher_clean.pt")


def test_a_trained_clean_teacher_is_recorded_for_b_mtard_alone_and_b_mtard_distils_from_it(project):
    set_params(project, **{"teacher_clean.source": "train", "teacher_clean.model.arch": "tiny_cnn",
                           "teacher_clean.train.epochs": 2, "teacher_clean.train.batch_size": 64,
                           "teacher_clean.train.milestones": [1], "teacher_clean.eval.n_samples": 20,
                           "teacher_clean.eval.steps": 1, "teacher_clean.eval.step": "4/255",
                           "distill.train.epochs": 1, "distill.select": "last"})
    assert invoke("prepare").exit_code == 0
    save_checkpoint(project / "models/teacher.pt", build_model("tiny_cnn", num_classes=10, in_channels=3))
    robust = (project / "models/teacher.pt").read_bytes()
    result = invoke("teacher", "--clean")
    assert result.exit_code == 0, result.output
    assert (project / "models/teacher.pt").read_bytes() == robust
    digest = sha256_file(project / "models/teacher_clean.pt")
    assert (project / "models/teacher_clean_of/b_mtard.txt").read_text().split()[0] == digest
    assert (project / "models/teacher_clean_of/absld.txt").read_text() == "none: absld distils from no clean teacher\n"
    info = json.loads((project / "models/teacher_clean.json").read_text())
    assert info["source"] == "train" and info["method"] == "natural" and info["epochs"] == 2 and info["n"] == 20
    result = invoke("distill", "--method", "b_mtard", "--seed", "0")
    assert result.exit_code == 0, result.output
    student = next(project.rglob("students/b_mtard/seed0.pt"))
    assert checkpoint_meta(student)["teacher_clean_sha256"] == digest
    assert next(project.rglob("distill/b_mtard/seed0/balance.csv")).read_text().startswith("epoch,w_adv,w_nat")
    # a clean teacher that is not the recorded one is refused
    save_checkpoint(project / "models/teacher_clean.pt", build_model("tiny_cnn", num_classes=10, in_channels=3))
    result = invoke("distill", "--method", "b_mtard", "--seed", "0")
    assert result.exit_code == 1 and "is not the clean teacher recorded" in result.output


def test_distilling_b_mtard_without_a_clean_teacher_says_how_to_get_one(project):
    without_b_mtard(project)  # then trained ad hoc
    assert invoke("prepare").exit_code == 0
    save_checkpoint(project / "models/teacher.pt", build_model("tiny_cnn", num_classes=10, in_channels=3))
    result = invoke("distill", "--method", "b_mtard", "--seed", "0")
    assert result.exit_code == 1 and "teacher_clean.source is none" in result.output
