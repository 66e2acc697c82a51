"""The training loop: schedule, exact resume, and failure on a diverging loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from absld.config import AttackConfig, SatConfig, TradesConfig, TrainConfig
from absld.data import TensorLoader
from absld.methods import MethodContext, build_method
from absld.models import build_model
from absld.runtime import Runtime
from absld.train import TrainingError, fit, learning_rate

CPU = Runtime(device=torch.device("cpu"), amp=False, channels_last=False, progress=False)


def tiny_setup(method: str = "trades", seed: int = 0):
    rng = np.random.default_rng(0)
    labels = np.arange(48) % 4
    images = (rng.integers(0, 60, (48, 3, 16, 16)) + 40 * labels[:, None, None, None]).astype(np.uint8)
    torch.manual_seed(seed)
    model = build_model("tiny_cnn", num_classes=4, in_channels=3)
    loader = TensorLoader(images, labels, batch_size=16, shuffle=True, crop_padding=2, flip=True, seed=seed)
    cfg = {"sat": SatConfig(), "trades": TradesConfig()}[method]
    ctx = MethodContext(num_classes=4, attack=AttackConfig(eps="8/255", step="4/255", steps=2))
    return model, build_method(method, cfg, ctx), loader


def test_learning_rate_drops_after_each_milestone_epoch():
    cfg = TrainConfig(lr=0.1, milestones=[2, 4], lr_gamma=0.1, epochs=5)
    assert [round(learning_rate(cfg, e), 6) for e in range(1, 6)] == [0.1, 0.1, 0.01, 0.01, 0.001]


@pytest.mark.parametrize("method", ["sat", "trades"])
def test_resume_after_an_interruption_gives_the_same_weights(tmp_path, method):
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, milestones=[2])
    model, meth, loader = tiny_setup(method)
    straight = fit(model, meth, loader, cfg, CPU, checkpoint=tmp_path / "a.pt", fingerprint="x")

    model, meth, loader = tiny_setup(method)
    first = fit(model, meth, loader, cfg, CPU, checkpoint=tmp_path / "b.pt", fingerprint="x", stop_after=1)
    assert len(first.history) == 1
    torch.manual_seed(12345)  # the resumed run must not depend on the RNG state it finds
    model, meth, loader = tiny_setup(method, seed=0)
    resumed = fit(model, meth, loader, cfg, CPU, checkpoint=tmp_path / "b.pt", fingerprint="x")
    assert resumed.resumed_from == 1 and len(resumed.history) == 3
    for key, value in straight.final_state.items():
        assert torch.equal(value, resumed.final_state[key]), key
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]


def test_a_checkpoint_of_other_params_is_not_resumed(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, milestones=[])
    model, meth, loader = tiny_setup("sat")
    fit(model, meth, loader, cfg, CPU, checkpoint=tmp_path / "c.pt", fingerprint="one")
    model, meth, loader = tiny_setup("sat")
    again = fit(model, meth, loader, cfg, CPU, checkpoint=tmp_path / "c.pt", fingerprint="two")
    assert again.resumed_from == 0 and len(again.history) == 1


def test_training_reduces_the_loss_on_a_learnable_problem():
    cfg = TrainConfig(epochs=6, batch_size=16, lr=0.05, milestones=[])
    model, meth, loader = tiny_setup("sat")
    history = fit(model, meth, loader, cfg, CPU).history
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_a_diverging_loss_stops_training_with_a_message():
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e6, momentum=0.0, milestones=[])
    model, meth, loader = tiny_setup("sat")
    with pytest.raises(TrainingError, match="learning rate"):
        fit(model, meth, loader, cfg, CPU)


def test_selection_keeps_the_best_scoring_epoch():
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, milestones=[])
    model, meth, loader = tiny_setup("sat")
    scores = iter([0.2, 0.9, 0.5])
    result = fit(model, meth, loader, cfg, CPU, select_fn=lambda m: {"score": next(scores)})
    assert result.best_epoch == 2 and result.best_score == 0.9
    assert [r["select_score"] for r in result.history] == [0.2, 0.9, 0.5]


def test_selection_runs_only_after_its_epochs_and_they_show_in_the_log():
    cfg = TrainConfig(epochs=4, batch_size=16, lr=0.05, milestones=[3])
    model, meth, loader = tiny_setup("sat")
    seen = []
    result = fit(model, meth, loader, cfg, CPU, select_epochs=[2, 3, 4],
                 select_fn=lambda m: seen.append(1) or {"score": 4.0 - len(seen)})
    assert len(seen) == 3 and result.best_epoch == 2 and result.best_score == 3.0
    assert ["select_score" in r for r in result.history] == [False, True, True, True]


def test_the_selection_attack_does_not_change_training():
    """select last vs a test-set PGD selection after every epoch: bit-identical final weights."""
    from absld.evaluate import fair_score

    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, milestones=[])
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (24, 3, 16, 16)).astype(np.uint8)
    labels = np.arange(24) % 4

    def select(model):
        return fair_score(model, images, labels, 4, CPU, eps=8 / 255, step=0.003, steps=2, batch_size=8, seed=0)

    model, meth, loader = tiny_setup("sat")
    plain = fit(model, meth, loader, cfg, CPU)
    model, meth, loader = tiny_setup("sat")
    selected = fit(model, meth, loader, cfg, CPU, select_fn=select)
    assert all("select_score" in r for r in selected.history)
    for key, value in plain.final_state.items():
        assert torch.equal(value, selected.final_state[key]), key
