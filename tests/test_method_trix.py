"""TRIX (absld/methods/trix.py): which samples get a targeted attack, the target, the mixed attack
objective and its direction, the per-class log; DAFA's loss, weights, knobs, state and loop run are
tests/test_method_dafa.py's (parametrised over both).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from absld.attacks import pgd
from absld.data import Batch
from absld.methods import MethodContext, build_method
from absld.methods.trix import mixed_objective, random_other_class, strong_samples
from absld.params import AttackConfig, TrixConfig

from .test_method_dafa import ATTACK, LogOf, hand_loss, spy_on_pgd, terms
from .test_methods import C, kl_sum, log_softmax

# clean predictions of a 6-sample batch: class 0 once, class 1 twice, class 2 three times, whose class
# means are p_0 = [0.5, 0.3, 0.2], p_1 = [0.1, 0.7, 0.2], p_2 = [0.05, 0.15, 0.8]
ROWS = [[0.5, 0.3, 0.2],
        [0.1, 0.8, 0.1], [0.1, 0.6, 0.3],
        [0.0, 0.2, 0.8], [0.1, 0.1, 0.8], [0.05, 0.15, 0.8]]
LABELS = [0, 1, 1, 2, 2, 2]
# Algorithm 2 on those means (p_0(0) = 0.5 < p_1(1) = 0.7 < p_2(2) = 0.8):
V = [1 + (0.3 * 0.7 + 0.2 * 0.8),    # 1.37: class 0 takes from 1 and 2
     1 + (-0.3 * 0.7 + 0.2 * 0.8),   # 0.95: class 1 gives to 0, takes from 2
     1 + (-0.2 * 0.8 - 0.2 * 0.8)]   # 0.68: class 2 gives to both
SAMPLE_MEAN = (V[0] + 2 * V[1] + 3 * V[2]) / 6  # 0.885: below class 1's 0.95 (the class mean is 1)
STRONG = [V[y] < SAMPLE_MEAN for y in LABELS]  # only class 2's samples


def trix(**cfg):
    return build_method("trix", TrixConfig(**cfg), MethodContext(num_classes=C, attack=ATTACK))


def prediction_batch() -> Batch:
    x = torch.tensor(ROWS).reshape(len(ROWS), 1, 1, C)
    return Batch(x=x, y=torch.tensor(LABELS), index=torch.arange(len(ROWS)))


def test_the_strong_samples_are_those_whose_batch_weight_is_below_the_batchs_sample_mean():
    assert STRONG == [False, False, False, True, True, True]
    targeted = strong_samples(torch.tensor(ROWS), torch.tensor(LABELS), C)
    assert targeted.tolist() == STRONG


def test_the_split_ignores_a_class_absent_from_the_batch():
    rows = [ROWS[0], ROWS[3], ROWS[4]]  # classes 0, 2, 2; class 1 absent: its row is zero
    # p_0 = [0.5, 0.3, 0.2], p_2 = [0.05, 0.15, 0.8]: V_0 = 1 + 0.2 * 0.8, V_2 = 1 - 0.2 * 0.8
    mean = ((1 + 0.16) + 2 * (1 - 0.16)) / 3
    targeted = strong_samples(torch.tensor(rows), torch.tensor([0, 2, 2]), C)
    assert targeted.tolist() == [1 + 0.16 < mean, 1 - 0.16 < mean, 1 - 0.16 < mean] == [False, True, True]


def test_the_target_is_uniform_over_the_other_classes():
    torch.manual_seed(0)
    y = torch.tensor([1] * 30000)
    target = random_other_class(y, 4)
    assert not bool((target == y).any())
    share = torch.bincount(target, minlength=4).float() / len(y)
    assert share[1] == 0 and share[[0, 2, 3]].tolist() == pytest.approx([1 / 3] * 3, abs=0.015)


def test_the_mixed_objective_is_minus_ce_to_the_target_or_the_trades_kl():
    natural = [[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]
    logits = [[0.3, -0.2, 0.5], [1.0, 0.0, -1.0]]
    loss = mixed_objective(torch.tensor(natural), torch.tensor([True, False]), torch.tensor([1, 0]))
    expected = [log_softmax(logits[0])[1], kl_sum(natural[1], logits[1])]
    assert loss(torch.tensor(logits)).tolist() == pytest.approx(expected, rel=1e-5)


def test_trix_attacks_the_strong_classes_towards_another_class_and_the_others_with_the_trades_kl(monkeypatch):
    torch.manual_seed(0)
    method = trix()
    calls = spy_on_pgd(monkeypatch)
    method.perturb(LogOf(), prediction_batch(), None)
    logits = torch.randn(len(ROWS), C)
    values = calls["loss_fn"](logits).tolist()
    log_q = F.log_softmax(logits, dim=1)
    for i, (y, strong) in enumerate(zip(LABELS, STRONG)):
        if strong:  # -CE towards some class other than y
            assert any(values[i] == pytest.approx(float(log_q[i, t]), rel=1e-5) for t in range(C) if t != y)
        else:
            assert values[i] == pytest.approx(kl_sum(ROWS[i], logits[i].tolist()), rel=1e-5)
    assert calls["start"] == "gaussian" and calls["steps"] == ATTACK.steps
    assert calls["eps"].tolist() == pytest.approx([8 / 255] * len(ROWS))  # W = 1 before the warm-up ends


def test_trix_attacks_in_dafas_class_radius(monkeypatch):
    method = trix()
    method.weights = torch.tensor([1.3, 0.9, 0.8], dtype=torch.float64)
    calls = spy_on_pgd(monkeypatch)
    method.perturb(LogOf(), prediction_batch(), None)
    assert calls["eps"].tolist() == pytest.approx([w * 8 / 255 for w in (1.3, 0.9, 0.9, 0.8, 0.8, 0.8)], rel=1e-6)
    assert calls["step"].tolist() == pytest.approx([w * 2 / 255 for w in (1.3, 0.9, 0.9, 0.8, 0.8, 0.8)], rel=1e-6)


class Softmaxed(nn.Module):
    """A linear classifier on (B, 3, 1, 1) inputs in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, C)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[4.0, -1.0, 0.0], [-1.0, 4.0, 0.5], [0.0, 0.5, 4.0]]))
            self.linear.bias.zero_()

    def forward(self, x):
        return self.linear(x.flatten(1))


def test_the_targeted_samples_descend_the_ce_to_their_target_and_the_others_ascend_the_kl(monkeypatch):
    monkeypatch.setattr("absld.methods.trix.random_other_class", lambda y, num_classes: (y + 1) % num_classes)
    model = Softmaxed()
    x = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.8, 0.2, 0.1]]).reshape(4, 3, 1, 1)
    y = torch.tensor([0, 1, 2, 0])
    method = build_method("trix", TrixConfig(), MethodContext(
        num_classes=C, attack=AttackConfig(eps="32/255", step="8/255", steps=5)))
    with torch.no_grad():
        natural = F.softmax(model(x), dim=1)
    targeted = strong_samples(natural, y, C)
    assert bool(targeted.any()) and not bool(targeted.all())
    torch.manual_seed(0)
    x_adv = method.perturb(model, Batch(x=x, y=y, index=torch.arange(4)), None)
    with torch.no_grad():
        target = (y + 1) % C
        ce_before = F.cross_entropy(model(x), target, reduction="none")
        ce_after = F.cross_entropy(model(x_adv), target, reduction="none")
        kl_after = (natural * (natural.log() - F.log_softmax(model(x_adv), dim=1))).sum(1)
    assert (ce_after[targeted] < ce_before[targeted]).all()
    assert (kl_after[~targeted] > 1e-4).all()
    # the untargeted ones are TRADES' attack: the same as pgd on the KL alone for those samples
    torch.manual_seed(0)
    alone = pgd(model, x, lambda z: (natural * (natural.log() - F.log_softmax(z, dim=1))).sum(1),
                eps=32 / 255, step=8 / 255, steps=5, start="gaussian")
    assert torch.allclose(x_adv[~targeted], alone[~targeted])


def test_trix_logs_the_share_of_each_classs_samples_attacked_with_a_target_and_resets_it(monkeypatch):
    method = trix()
    spy_on_pgd(monkeypatch)
    batch = prediction_batch()
    method.perturb(LogOf(), batch, None)
    out = method.loss(LogOf(), batch, batch.x, None)
    assert float(out.stats["targeted_fraction"]) == pytest.approx(3 / 6)
    log = method.on_epoch_end(1)
    assert [log[f"targeted/{k}"] for k in range(C)] == [0.0, 0.0, 1.0]
    assert float(method.seen.sum()) == 0 and float(method.targeted_sum.sum()) == 0
    assert [method.on_epoch_end(2)[f"targeted/{k}"] for k in range(C)] == [0.0, 0.0, 0.0]


def test_trix_loss_is_dafas():
    method = trix(beta=6.0)
    method.weights = torch.tensor([1.3, 0.9, 0.8], dtype=torch.float64)
    ce, boundary = terms()
    assert hand_loss(method) == pytest.approx((1.3 * ce[0] + 0.8 * ce[1]) / 2 + 6.0 * sum(boundary) / 2, rel=1e-6)


def test_the_recipe_is_the_codes_150_epochs():
    from absld.params import Params
    from absld.train.loop import learning_rate

    cfg = TrixConfig().train.apply(Params().distill.train)
    assert (cfg.epochs, cfg.weight_decay, cfg.nesterov) == (150, 5e-4, True)
    assert [round(learning_rate(cfg, e), 6) for e in (139, 140, 144, 145, 150)] == [0.1, 0.01, 0.01, 0.001, 0.001]
    assert math.isclose(Params().distill.trix.lam, 1.0) and Params().distill.trix.warmup == 70


def test_a_loaded_state_keeps_the_epochs_targeted_counts(monkeypatch):
    from .test_method_dafa import round_trip

    spy_on_pgd(monkeypatch)
    straight = trix()
    straight.perturb(LogOf(), prediction_batch(), None)  # in the middle of an epoch
    resumed = trix()
    resumed.load_state_dict(round_trip(straight.state_dict()))
    log = resumed.on_epoch_end(1)
    assert log == straight.on_epoch_end(1) and [log[f"targeted/{k}"] for k in range(C)] == [0.0, 0.0, 1.0]


def test_the_distill_stage_writes_the_weights_the_similarity_and_their_figure(tmp_path, monkeypatch):
    import yaml
    from click.testing import CliRunner

    from pipeline.cli import main
    from tests.conftest import profile_params_text

    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load(profile_params_text("tiny"))
    params["distill"]["methods"] = ["trix"]  # in the matrix: its outputs go to results/, not the scratch
    params["distill"]["trix"].update(warmup=1, train={"epochs": None, "weight_decay": None, "nesterov": None,
                                                      "milestones": None})  # the tiny recipe, 3 epochs
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert CliRunner().invoke(main, ["prepare"]).exit_code == 0
    result = CliRunner().invoke(main, ["distill", "--method", "trix", "--seed", "0"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "results" / "distill" / "trix" / "seed0"
    weights = out.joinpath("weights.csv").read_text().splitlines()
    assert weights[0] == "epoch,class,w,targeted" and len(weights) == 1 + 3 * 10
    assert len(out.joinpath("class_similarity.csv").read_text().splitlines()) == 1 + 10 * 10
    assert (tmp_path / "plots" / "distill" / "trix" / "seed0" / "trix_state.png").is_file()
