"""The training loop: schedule, exact resume, and failure on a diverging loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from absld.data import TensorLoader
from absld.methods import MethodBase, MethodContext, StepOutput, build_method
from absld.models import build_model
from absld.params import AttackConfig, SatConfig, TradesConfig, TrainConfig
from absld.runtime import Runtime
from absld.train.loop import TrainingError, fit, learning_rate

CPU = Runtime(device=torch.device("cpu"), amp=False, channels_last=False, progress=False)


def tiny_setup(method: str = "trades", seed: int = 0, n: int = 48):
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 4
    images = (rng.integers(0, 60, (n, 3, 16, 16)) + 40 * labels[:, None, None, None]).astype(np.uint8)
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
    from absld.attacks.accuracy import class_accuracy

    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, milestones=[])
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (24, 3, 16, 16)).astype(np.uint8)
    labels = np.arange(24) % 4

    def select(model):  # the distill stage's selection score (the old fair_score)
        acc = class_accuracy(model, images, labels, 4, CPU, eps=8 / 255, step=0.003, steps=2, batch_size=8, seed=0,
                             stream="select")
        return {"score": acc.score, "pgd_avg": acc.robust_total, "pgd_worst": float(acc.robust.min())}

    model, meth, loader = tiny_setup("sat")
    plain = fit(model, meth, loader, cfg, CPU)
    model, meth, loader = tiny_setup("sat")
    selected = fit(model, meth, loader, cfg, CPU, select_fn=select)
    assert all("select_score" in r for r in selected.history)
    for key, value in plain.final_state.items():
        assert torch.equal(value, selected.final_state[key]), key


# ----------------------------------------------------------------------------------------------
# the BatchNorm mode of the attack and the precision of the teacher
class _Spy(MethodBase):
    """Records the student's mode in perturb/loss and the teacher logits it is handed; its loss
    touches the weights without a forward pass, so only the attack can move BatchNorm statistics."""

    name = "spy"

    def __init__(self, attack_mode: str, teacher: torch.nn.Module | None = None) -> None:
        super().__init__(None, MethodContext(num_classes=4, attack=AttackConfig(), teacher=teacher))
        self.attack_mode = attack_mode  # instance attribute shadows the ClassVar for the test
        self.seen: list[tuple[str, bool]] = []
        self.teacher_logits: list[torch.Tensor] = []

    def perturb(self, student, batch, teacher_logits):
        self.seen.append(("perturb", student.training))
        if teacher_logits is not None:
            self.teacher_logits.append(teacher_logits)
        student(batch.x)  # one forward pass, as an attack step makes
        return batch.x

    def loss(self, student, batch, x_adv, teacher_logits):
        self.seen.append(("loss", student.training))
        weight_norm = sum(p.sum() for p in student.parameters()) * 0.0
        return StepOutput(weight_norm)


def _bn_stats(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b.running_mean.clone() for b in model.modules() if isinstance(b, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize("attack_mode", ["eval", "train"])
def test_fit_attacks_in_the_methods_batchnorm_mode_and_takes_the_loss_in_train_mode(attack_mode):
    model, _, loader = tiny_setup("sat")
    before = _bn_stats(model)
    assert before, "the test model needs BatchNorm layers"
    spy = _Spy(attack_mode)
    fit(model, spy, loader, TrainConfig(epochs=1, batch_size=16, lr=0.05, milestones=[]), CPU)
    assert {mode for step, mode in spy.seen if step == "perturb"} == {attack_mode == "train"}
    assert {mode for step, mode in spy.seen if step == "loss"} == {True}
    moved = any(not torch.equal(a, b) for a, b in zip(before, _bn_stats(model)))
    assert moved == (attack_mode == "train")  # an eval-mode attack leaves running statistics alone


def test_ard_and_iad_attack_in_train_mode_the_rslad_family_in_eval_mode():
    from absld.methods import METHODS

    assert {name for name, cls in METHODS.items() if cls.attack_mode == "train"} == {"ard", "iad", "fair_ard",
                                                                                    "fair_iad"}


def test_teacher_logits_are_computed_in_fp32_even_under_autocast():
    class Bf16Runtime(Runtime):
        def autocast(self):
            return torch.autocast("cpu", dtype=torch.bfloat16)

    rt = Bf16Runtime(device=torch.device("cpu"), amp=True, channels_last=False, progress=False)
    torch.manual_seed(0)
    teacher = build_model("small_cnn", num_classes=4, in_channels=3).eval()
    model, _, loader = tiny_setup("sat")
    spy = _Spy("eval", teacher=teacher)
    fit(model, spy, loader, TrainConfig(epochs=1, batch_size=16, lr=0.05, milestones=[]), rt)
    loader.set_epoch(1)
    first = next(iter(loader))
    with torch.no_grad():
        expected = teacher(first.x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lowered = teacher(first.x).float()
    assert not torch.equal(lowered, expected)  # the autocast really lowers the precision here
    assert torch.equal(spy.teacher_logits[0], expected)


def test_from_base_decay_is_the_released_ard_iad_function_that_never_lowers_its_base():
    released = TrainConfig(lr=0.1, milestones=[100, 150], lr_gamma=0.1, epochs=200, lr_decay="from_base")
    intent = released.model_copy(update={"lr_decay": "cumulative"})
    assert [round(learning_rate(released, e), 6) for e in (100, 101, 150, 151, 200)] == [0.1, 0.01, 0.01, 0.01, 0.01]
    assert [round(learning_rate(intent, e), 6) for e in (100, 101, 150, 151, 200)] == [0.1, 0.01, 0.01, 0.001, 0.001]


def test_the_paper_configuration_uses_the_released_lr_function_for_ard_iad_and_their_fair_variants_only(paper_params):
    from absld.params import load_params

    cfg = load_params(paper_params).distill
    decay = {m: cfg.method_config(m).train.apply(cfg.train).lr_decay for m in cfg.methods}
    assert {m for m, d in decay.items() if d == "from_base"} == {"ard", "iad", "fair_ard", "fair_iad"}
    assert cfg.method_config("fair_rslad").train.apply(cfg.train).nesterov is True


class _Recorder(MethodBase):
    """Hands fit a different loss, statistic and pair of logits per batch and records them."""

    name = "recorder"

    def __init__(self) -> None:
        super().__init__(None, MethodContext(num_classes=4, attack=AttackConfig()))
        self.batches: list[dict[str, torch.Tensor]] = []

    def perturb(self, student, batch, teacher_logits):
        return batch.x

    def loss(self, student, batch, x_adv, teacher_logits):
        logits_adv = student(x_adv)
        logits_nat = torch.randn_like(logits_adv)  # a second, independent verdict per sample
        loss = logits_adv.logsumexp(1).mean()
        stat = batch.x.mean()
        self.batches.append({"loss": loss.detach(), "stat": stat, "y": batch.y,
                             "adv": logits_adv.detach(), "nat": logits_nat})
        return StepOutput(loss, logits_adv=logits_adv, logits_nat=logits_nat, stats={"stat": stat})


def test_the_epoch_row_averages_over_samples_not_batches():
    # 48 images in batches of 20: sizes 20, 20, 8, so a mean over batches would differ
    model, _, _ = tiny_setup("sat")
    rng = np.random.default_rng(3)
    labels = np.arange(48) % 4
    images = rng.integers(0, 256, (48, 3, 16, 16)).astype(np.uint8)
    loader = TensorLoader(images, labels, batch_size=20, shuffle=True, seed=0)
    recorder = _Recorder()
    row = fit(model, recorder, loader, TrainConfig(epochs=1, batch_size=20, lr=0.05, milestones=[]), CPU).history[0]
    sizes = [len(b["y"]) for b in recorder.batches]
    assert sizes == [20, 20, 8]
    mean = lambda key: sum(float(b[key]) * n for b, n in zip(recorder.batches, sizes)) / 48  # noqa: E731
    accuracy = lambda key: sum(int((b[key].argmax(1) == b["y"]).sum()) for b in recorder.batches) / 48  # noqa: E731
    assert row["train_loss"] == pytest.approx(mean("loss"), rel=1e-6)
    assert row["train_stat"] == pytest.approx(mean("stat"), rel=1e-6)
    assert row["train_acc_adv"] == pytest.approx(accuracy("adv"))
    assert row["train_acc_nat"] == pytest.approx(accuracy("nat"))
    assert row["train_acc_adv"] != row["train_acc_nat"]


def test_the_optimiser_is_sgd_with_the_configured_nesterov_flag_and_weight_decay(tmp_path):
    for nesterov in (True, False):
        cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, milestones=[], nesterov=nesterov, weight_decay=3e-4)
        model, meth, loader = tiny_setup("sat")
        fit(model, meth, loader, cfg, CPU, checkpoint=tmp_path / f"{nesterov}.pt", fingerprint="x")
        group = torch.load(tmp_path / f"{nesterov}.pt", weights_only=True)["optimizer"]["param_groups"][0]
        assert (group["nesterov"], group["weight_decay"], group["momentum"]) == (nesterov, 3e-4, cfg.momentum)


def test_resume_keeps_the_best_epoch_and_its_weights(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, milestones=[])
    scores = [0.2, 0.9, 0.5]

    def run(stop_after=None, checkpoint="a.pt"):
        model, meth, loader = tiny_setup("sat")
        pending = iter(scores[len(torch.load(tmp_path / checkpoint, weights_only=True)["history"]):]
                       if (tmp_path / checkpoint).exists() else scores)
        return fit(model, meth, loader, cfg, CPU, checkpoint=tmp_path / checkpoint, fingerprint="x",
                   select_fn=lambda m: {"score": next(pending)}, stop_after=stop_after)

    straight = run(checkpoint="straight.pt")
    run(stop_after=2, checkpoint="resumed.pt")
    resumed = run(checkpoint="resumed.pt")
    assert resumed.resumed_from == 2 and (resumed.best_epoch, resumed.best_score) == (2, 0.9)
    assert straight.best_state is not None and resumed.best_state is not None
    for key, value in straight.best_state.items():
        assert torch.equal(value, resumed.best_state[key]), key


class _NanAt(_Recorder):
    """The recorder's loss, made NaN at the batches of ``bad`` (0-based, counted over the run)."""

    name = "nan_at"

    def __init__(self, bad: set[int]) -> None:
        super().__init__()
        self.bad, self.calls = bad, 0

    def loss(self, student, batch, x_adv, teacher_logits):
        out = super().loss(student, batch, x_adv, teacher_logits)
        if self.calls in self.bad:
            out = StepOutput(out.loss * float("nan"), logits_adv=out.logits_adv, logits_nat=out.logits_nat,
                             stats=out.stats)
        self.calls += 1
        return out


def _nan_loader():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (48, 3, 16, 16)).astype(np.uint8)
    return TensorLoader(images, np.arange(48) % 4, batch_size=16, shuffle=True, seed=0)  # 3 batches


def test_a_nan_loss_stops_training_naming_epoch_batch_and_method_and_keeps_the_last_epoch(tmp_path):
    model, _, _ = tiny_setup("sat")
    checkpoint = tmp_path / "last.pt"
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, milestones=[])
    with pytest.raises(TrainingError, match=r"nan_at's training loss became NaN/inf in epoch 2, batch 2 of 3"):
        fit(model, _NanAt({4}), _nan_loader(), cfg, CPU, checkpoint=checkpoint, fingerprint="k")
    kept = torch.load(checkpoint, weights_only=True)
    assert kept["epoch"] == 1  # the last finished epoch's checkpoint, not a NaN one


def test_skip_batch_leaves_out_the_nan_batches_and_counts_them():
    model, _, _ = tiny_setup("sat")
    rt = Runtime(device=torch.device("cpu"), amp=False, channels_last=False, progress=False, nan_policy="skip_batch")
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, milestones=[])
    history = fit(model, _NanAt({1, 4}), _nan_loader(), cfg, rt).history
    assert [row.get("skipped_batches") for row in history] == [1, 1]
    assert all(math.isfinite(row["train_loss"]) for row in history)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_corrupted_last_checkpoint_resumes_from_the_one_before_and_ends_the_same(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, milestones=[])
    model, method, loader = tiny_setup("sat")
    straight = fit(model, method, loader, cfg, CPU)

    model, method, loader = tiny_setup("sat")
    path = tmp_path / "last.pt"
    fit(model, method, loader, cfg, CPU, checkpoint=path, fingerprint="k", stop_after=2)
    assert torch.load(tmp_path / "last.prev.pt", weights_only=True)["epoch"] == 1
    path.write_bytes(b"not a checkpoint")  # a disk error, a half-copied file...
    model, method, loader = tiny_setup("sat")
    again = fit(model, method, loader, cfg, CPU, checkpoint=path, fingerprint="k")
    assert again.resumed_from == 1
    assert all(torch.equal(v, again.final_state[k]) for k, v in straight.final_state.items())

    (tmp_path / "last.prev.pt").write_bytes(b"nor this")
    path.write_bytes(b"not a checkpoint")
    model, method, loader = tiny_setup("sat")
    with pytest.raises(TrainingError, match=r"no resumable checkpoint can be read: .*last.pt.*last.prev.pt.*delete"):
        fit(model, method, loader, cfg, CPU, checkpoint=path, fingerprint="k")


def test_cpu_bf16_turns_on_bf16_autocast_and_channels_last_on_the_cpu_only_when_asked():
    import torch

    from absld.params import RuntimeConfig
    from absld.runtime import setup

    a = torch.rand(4, 4)
    plain = setup(RuntimeConfig(device="cpu"))  # amp and channels_last are CUDA settings
    assert (plain.amp, plain.channels_last) == (False, False)
    with plain.autocast():
        assert (a @ a).dtype == torch.float32
    fast = setup(RuntimeConfig(device="cpu", cpu_bf16=True, amp=False, channels_last=False))
    assert (fast.amp, fast.channels_last) == (True, True)
    with fast.autocast():
        assert (a @ a).dtype == torch.bfloat16
    model = fast.to_device(torch.nn.Conv2d(3, 4, 3))
    assert model.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_runtime_compile_trains_a_compiled_model_to_the_eager_weights():
    """runtime.compile: the attack and the loss run through torch.compile (graphs really compiled),
    and one epoch of TRADES ends where eager execution does, up to inductor's fused rounding (1e-4)."""
    from dataclasses import replace

    import torch._dynamo

    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, milestones=[])
    model, meth, loader = tiny_setup("trades")
    torch.manual_seed(1)
    eager = fit(model, meth, loader, cfg, CPU)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model, meth, loader = tiny_setup("trades")
    torch.manual_seed(1)
    compiled = fit(model, meth, loader, cfg, replace(CPU, compile=True))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it did compile
    assert not any(key.startswith("_orig_mod") for key in compiled.final_state)  # plain weights saved
    for key, value in eager.final_state.items():
        assert torch.allclose(compiled.final_state[key].float(), value.float(), atol=1e-4), key
    assert compiled.history[0]["train_loss"] == pytest.approx(eager.history[0]["train_loss"], rel=1e-4)
