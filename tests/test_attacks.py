"""Specification of absld.attacks: budgets, objectives, strength, side effects, determinism, backends.

A tiny CNN is trained (seeded, a second or two on a CPU) on a synthetic, separable 5-class image
task whose robust accuracy at eps 8/255 sits mid-range, so that attacks have something to attack.
"""

from __future__ import annotations

import copy
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from absld.attacks import (
    AttackError,
    ce_loss,
    cw_inf,
    cw_margin_loss,
    fgsm,
    kl_to_target,
    pgd,
)
from absld.evaluate.autoattack import AutoAttackName, autoattack

EPS = 8 / 255
STEP = 2 / 255
N_CLASSES = 5  # fewer than 10 on purpose: exercises the target-class count of APGD-T / FAB-T
IMAGE_SHAPE = (3, 8, 8)
AA_SAMPLES = 24
AA_ATTACKS: list[AutoAttackName] = ["apgd-ce", "apgd-t"]
BACKENDS = ["pyautoattack", pytest.param("torchattacks", marks=pytest.mark.crosscheck)]


class TinyCNN(nn.Module):
    """conv 3->8, relu, 2x2 average pool, linear; normalises its [0, 1] inputs internally."""

    mean: Tensor
    std: Tensor

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, 3, 1, 1), 0.25))
        self.conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        features = F.avg_pool2d(F.relu(self.conv((x - self.mean) / self.std)), 2)  # (B, 8, 4, 4)
        return self.fc(features.flatten(1))  # (B, C)


@dataclass(frozen=True)
class Task:
    model: TinyCNN  # trained, eval mode, every parameter's .grad is None
    x: Tensor  # (N, 3, 8, 8) test inputs in [0, 1]
    y: Tensor  # (N,)


def _synthetic_split(prototypes: Tensor, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Class prototype (+-0.08 around grey) plus Gaussian noise, clamped to [0, 1]."""
    y = torch.randint(0, N_CLASSES, (n,), generator=generator)
    x = 0.5 + 0.08 * prototypes[y] + 0.2 * torch.randn((n, *IMAGE_SHAPE), generator=generator)
    return x.clamp(0.0, 1.0), y


@pytest.fixture(scope="module")
def task() -> Task:
    generator = torch.Generator().manual_seed(0)
    prototypes = torch.randn((N_CLASSES, *IMAGE_SHAPE), generator=generator).sign()  # (C, 3, 8, 8)
    x_train, y_train = _synthetic_split(prototypes, 4096, generator)
    x_test, y_test = _synthetic_split(prototypes, 1000, generator)
    torch.manual_seed(0)
    model = TinyCNN(N_CLASSES)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        index = torch.randint(0, x_train.shape[0], (128,), generator=generator)
        loss = F.cross_entropy(model(x_train[index]), y_train[index])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    optimiser.zero_grad(set_to_none=True)
    model.eval()
    return Task(model=model, x=x_test, y=y_test)


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def mean_loss(model: nn.Module, x: Tensor, loss_fn: Callable[[Tensor], Tensor]) -> float:
    with torch.no_grad():
        return loss_fn(model(x)).mean().item()


def assert_in_eps_ball_and_unit_box(x_adv: Tensor, x: Tensor, eps: float) -> None:
    assert x_adv.shape == x.shape
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0
    assert x_adv.max().item() <= 1.0


# Each attack as a function of (model, x, y); randomness from the global RNG.
ATTACKS: dict[str, Callable[[nn.Module, Tensor, Tensor], Tensor]] = {
    "pgd-uniform": lambda m, x, y: pgd(m, x, ce_loss(y), eps=EPS, step=STEP, steps=10, start="uniform"),
    "pgd-gaussian": lambda m, x, y: pgd(m, x, ce_loss(y), eps=EPS, step=STEP, steps=10, start="gaussian"),
    "pgd-none": lambda m, x, y: pgd(m, x, ce_loss(y), eps=EPS, step=STEP, steps=10, start="none"),
    "fgsm": lambda m, x, y: fgsm(m, x, y, eps=EPS),
    "cw": lambda m, x, y: cw_inf(m, x, y, eps=EPS, step=STEP, steps=10),
}


def run_autoattack(model: nn.Module, x: Tensor, y: Tensor, backend: str, seed: int = 0) -> Tensor:
    return autoattack(
        model,
        x,
        y,
        eps=EPS,
        version="custom",
        attacks=AA_ATTACKS,
        seed=seed,
        batch_size=AA_SAMPLES,
        backend=backend,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------- budgets


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_stays_in_eps_ball_and_unit_box(task: Task, name: str) -> None:
    torch.manual_seed(1)
    x_adv = ATTACKS[name](task.model, task.x[:256], task.y[:256])
    assert_in_eps_ball_and_unit_box(x_adv, task.x[:256], EPS)


@dataclass(frozen=True)
class AutoAttackRun:
    backend: str
    x: Tensor
    y: Tensor
    x_adv: Tensor  # seed 3, with the caller's global RNG seeded with 10


@pytest.fixture(scope="module", params=BACKENDS)
def autoattack_run(request: pytest.FixtureRequest, task: Task) -> AutoAttackRun:
    """The small custom AutoAttack on each backend, run once per module."""
    x, y = task.x[:AA_SAMPLES], task.y[:AA_SAMPLES]
    torch.manual_seed(10)
    return AutoAttackRun(request.param, x, y, run_autoattack(task.model, x, y, request.param, seed=3))


def test_autoattack_stays_in_eps_ball_and_unit_box(autoattack_run: AutoAttackRun) -> None:
    assert_in_eps_ball_and_unit_box(autoattack_run.x_adv, autoattack_run.x, EPS)


def test_autoattack_lowers_accuracy(task: Task, autoattack_run: AutoAttackRun) -> None:
    run = autoattack_run
    assert accuracy(task.model, run.x_adv, run.y) < accuracy(task.model, run.x, run.y)


def test_fgsm_takes_one_step_of_size_eps(task: Task) -> None:
    x = task.x[:64]
    x_adv = fgsm(task.model, x, task.y[:64], eps=EPS, gauss_std=0.0)
    interior = (x > EPS) & (x < 1 - EPS)  # pixels the [0, 1] clamp cannot touch
    step = (x_adv - x)[interior].abs()
    assert torch.allclose(step[step > 0], torch.full_like(step[step > 0], EPS), atol=1e-6)
    assert (step > 0).float().mean().item() > 0.9  # almost every pixel has a non-zero gradient


# ---------------------------------------------------------------- objectives


def test_pgd_increases_cross_entropy(task: Task) -> None:
    x, y = task.x[:256], task.y[:256]
    objective = ce_loss(y)
    torch.manual_seed(2)
    x_start = pgd(task.model, x, objective, eps=EPS, step=STEP, steps=0, start="uniform")
    torch.manual_seed(2)
    x_adv = pgd(task.model, x, objective, eps=EPS, step=STEP, steps=20, start="uniform")
    assert mean_loss(task.model, x_adv, objective) >= mean_loss(task.model, x_start, objective)
    assert mean_loss(task.model, x_adv, objective) > mean_loss(task.model, x, objective)


def test_pgd_increases_kl_to_target(task: Task) -> None:
    x = task.x[:256]
    with torch.no_grad():
        target_probs = F.softmax(task.model(x), dim=1)  # KL is 0 at x: the Gaussian start must move off it
    objective = kl_to_target(target_probs)
    torch.manual_seed(3)
    x_start = pgd(task.model, x, objective, eps=EPS, step=STEP, steps=0, start="gaussian")
    torch.manual_seed(3)
    x_adv = pgd(task.model, x, objective, eps=EPS, step=STEP, steps=10, start="gaussian")
    assert mean_loss(task.model, x_adv, objective) >= mean_loss(task.model, x_start, objective)
    assert mean_loss(task.model, x_adv, objective) > mean_loss(task.model, x, objective) + 1e-3


def test_pgd_gradient_of_each_sample_is_its_own(task: Task) -> None:
    x, y = task.x[:64], task.y[:64]
    x_adv_batch = pgd(task.model, x, ce_loss(y), eps=EPS, step=STEP, steps=5, start="none")
    x_adv_half = pgd(task.model, x[:32], ce_loss(y[:32]), eps=EPS, step=STEP, steps=5, start="none")
    assert torch.allclose(x_adv_batch[:32], x_adv_half, atol=1e-6)


def test_ce_loss_is_per_sample_cross_entropy() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 2])
    expected = -F.log_softmax(logits, dim=1)[torch.arange(2), y]
    assert torch.allclose(ce_loss(y)(logits), expected)


def test_kl_to_target_equals_kl_divergence_per_sample() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.1, 3.0]])
    target = torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.2, 0.6]])  # a zero entry contributes zero
    expected = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="none").sum(dim=1)
    assert torch.allclose(kl_to_target(target)(logits), expected)
    assert torch.allclose(kl_to_target(target)(target.clamp_min(1e-12).log()), torch.zeros(2), atol=1e-6)


def test_cw_margin_loss_is_negative_relu_of_margin_plus_kappa() -> None:
    logits = torch.tensor([[5.0, 1.0, 3.0], [0.0, 60.0, 1.0]])
    y = torch.tensor([0, 0])
    # sample 0: margin 5 - 3 = 2 -> -(2 + 50); sample 1: margin 0 - 60 = -60 -> -relu(-10) = 0
    assert torch.allclose(cw_margin_loss(y, kappa=50.0)(logits), torch.tensor([-52.0, 0.0]))


# ---------------------------------------------------------------- strength


def test_pgd20_is_at_least_as_strong_as_fgsm_and_below_clean(task: Task) -> None:
    torch.manual_seed(4)
    x_fgsm = fgsm(task.model, task.x, task.y, eps=EPS)
    x_pgd = pgd(task.model, task.x, ce_loss(task.y), eps=EPS, step=STEP, steps=20, start="uniform")
    clean_acc = accuracy(task.model, task.x, task.y)
    fgsm_acc = accuracy(task.model, x_fgsm, task.y)
    pgd_acc = accuracy(task.model, x_pgd, task.y)
    assert 0.2 < pgd_acc < 0.8, "the tiny task should leave robust accuracy mid-range"
    assert pgd_acc <= fgsm_acc + 0.01
    assert pgd_acc < clean_acc


@pytest.mark.crosscheck
def test_pgd20_matches_torchattacks_pgd_within_1_5_points(task: Task) -> None:
    torchattacks = importlib.import_module("torchattacks")  # the crosscheck marker skips without it
    assert task.x.shape[0] >= 500
    torch.manual_seed(5)
    x_ours = pgd(task.model, task.x, ce_loss(task.y), eps=EPS, step=STEP, steps=20, start="uniform")
    torch.manual_seed(6)
    reference = torchattacks.PGD(task.model, eps=EPS, alpha=STEP, steps=20, random_start=True)
    x_reference = reference(task.x, task.y)
    ours, theirs = accuracy(task.model, x_ours, task.y), accuracy(task.model, x_reference, task.y)
    assert abs(ours - theirs) <= 0.015, f"ours {ours:.3f} vs torchattacks {theirs:.3f}"


# ---------------------------------------------------------------- side effects


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_leaves_parameter_grads_and_mode_untouched(task: Task, name: str, training: bool) -> None:
    model = copy.deepcopy(task.model).train(training)
    ATTACKS[name](model, task.x[:32], task.y[:32])
    assert model.training is training
    assert all(parameter.grad is None for parameter in model.parameters())


@pytest.mark.parametrize("backend", BACKENDS)
def test_autoattack_leaves_parameter_grads_mode_and_global_rng_untouched(task: Task, backend: str) -> None:
    model = copy.deepcopy(task.model)
    torch.manual_seed(7)
    expected_next_draw = torch.rand(3)
    torch.manual_seed(7)
    run_autoattack(model, task.x[:AA_SAMPLES], task.y[:AA_SAMPLES], backend)
    assert torch.equal(torch.rand(3), expected_next_draw)
    assert model.training is False
    assert all(parameter.grad is None for parameter in model.parameters())


def test_pgd_attacks_inside_no_grad(task: Task) -> None:
    x, y = task.x[:256], task.y[:256]
    with torch.no_grad():
        x_adv = pgd(task.model, x, ce_loss(y), eps=EPS, step=STEP, steps=10, start="none")
    assert accuracy(task.model, x_adv, y) < accuracy(task.model, x, y)


def test_pgd_works_under_bf16_autocast_with_channels_last(task: Task) -> None:
    x, y = task.x[:256].contiguous(memory_format=torch.channels_last), task.y[:256]
    model = copy.deepcopy(task.model).to(memory_format=torch.channels_last)
    torch.manual_seed(8)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        x_adv = pgd(model, x, ce_loss(y), eps=EPS, step=STEP, steps=10, start="uniform")
    assert x_adv.dtype == torch.float32
    assert_in_eps_ball_and_unit_box(x_adv, x, EPS)
    assert accuracy(task.model, x_adv, y) < accuracy(task.model, x, y)


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", list(ATTACKS))
def test_same_seed_gives_identical_x_adv(task: Task, name: str) -> None:
    torch.manual_seed(9)
    first = ATTACKS[name](task.model, task.x[:64], task.y[:64])
    torch.manual_seed(9)
    second = ATTACKS[name](task.model, task.x[:64], task.y[:64])
    assert torch.equal(first, second)


def test_autoattack_same_seed_gives_identical_x_adv(task: Task, autoattack_run: AutoAttackRun) -> None:
    run = autoattack_run
    torch.manual_seed(11)  # the caller's RNG state must not matter, only the seed
    again = run_autoattack(task.model, run.x, run.y, run.backend, seed=3)
    assert torch.equal(again, run.x_adv)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("backend", "pip_command"),
    [
        ("pyautoattack", "install it with `pip install pyautoattack==0.2.0`"),
        ("torchattacks", "./reproduce.sh crosscheck"),
    ],
)
def test_missing_backend_raises_attack_error_naming_pip_command(
    task: Task, monkeypatch: pytest.MonkeyPatch, backend: str, pip_command: str
) -> None:
    monkeypatch.setitem(sys.modules, backend, None)  # makes `import backend` raise ImportError
    with pytest.raises(AttackError, match=pip_command.replace(".", r"\.")) as raised:
        run_autoattack(task.model, task.x[:4], task.y[:4], backend)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"start": "random"},  # not a start rule
        {"eps": 8.0},  # 8 instead of 8/255
        {"steps": -1},
        {"step": float("nan")},
    ],
)
def test_pgd_rejects_invalid_parameters(task: Task, kwargs: dict[str, object]) -> None:
    params: dict[str, object] = {"eps": EPS, "step": STEP, "steps": 1, "start": "none", **kwargs}
    with pytest.raises(AttackError):
        pgd(task.model, task.x[:4], ce_loss(task.y[:4]), **params)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"version": "custom", "attacks": ["apgd-xx"]},  # unknown attack name
        {"version": "custom", "attacks": []},  # custom needs attacks
        {"version": "standard", "attacks": ["apgd-ce"]},  # attacks only with custom
        {"version": "plus"},  # not offered
    ],
)
def test_autoattack_rejects_invalid_versions_and_attack_lists(task: Task, kwargs: dict[str, object]) -> None:
    params: dict[str, object] = {"eps": EPS, "seed": 0, "batch_size": 4, "backend": "pyautoattack", **kwargs}
    with pytest.raises(AttackError):
        autoattack(task.model, task.x[:4], task.y[:4], **params)  # type: ignore[arg-type]


def test_pgd_reports_the_logits_of_every_step_before_its_update():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.rand(5, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    seen = []
    pgd(model, x, ce_loss(y), eps=8 / 255, step=2 / 255, steps=4, start="none", on_logits=seen.append)
    assert len(seen) == 4 and all(s.shape == (5, 3) and not s.requires_grad for s in seen)
    assert torch.allclose(seen[0], model(x))


def test_pgd20_under_bf16_autocast_is_as_strong_as_in_float32(task: Task) -> None:
    """The bf16 path (runtime.amp, evaluate.amp; on the CPU runtime.cpu_bf16, which
    ``cpu_bf16: auto`` turns on where the CPU has native bf16) must not weaken the attack: PGD-20
    robust accuracy of a fixed trained model under exactly that runtime (bf16 autocast, model and
    inputs channels_last) is within 0.5 points of float32 on 1,000 images (same random starts,
    verdicts in float32), while bf16 does change the adversarial examples."""
    from absld.params import RuntimeConfig
    from absld.runtime import setup

    x, y = task.x, task.y
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1
    fp32 = pgd(task.model, x, ce_loss(y), eps=EPS, step=STEP, steps=20, start="uniform", noise=noise)
    fast = setup(RuntimeConfig(device="cpu", cpu_bf16=True))
    assert fast.amp and fast.channels_last
    model = fast.to_device(copy.deepcopy(task.model))
    with fast.autocast():
        bf16 = pgd(model, x.contiguous(memory_format=torch.channels_last), ce_loss(y), eps=EPS, step=STEP,
                   steps=20, start="uniform", noise=noise.contiguous(memory_format=torch.channels_last))
    assert not torch.equal(fp32, bf16)  # the autocast really ran the attack in bf16
    robust_fp32, robust_bf16 = accuracy(task.model, fp32, y), accuracy(task.model, bf16, y)
    assert 0.05 < robust_fp32 < accuracy(task.model, x, y)  # the attack bites but does not saturate
    assert abs(robust_bf16 - robust_fp32) <= 0.005, (robust_fp32, robust_bf16)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"eps": float("inf")}, "eps=inf must be a finite number >= 0 in pixel space (e.g. 8/255)."),
    ({"eps": -0.01}, "eps=-0.01 must be a finite number >= 0"),
    ({"eps": 1.5}, "eps=1.5 is larger than the [0, 1] pixel range; write it as a fraction of 255 (8/255, not 8)."),
    ({"step": -0.1}, "step=-0.1 must be a finite number >= 0 in pixel space (e.g. 2/255)."),
    ({"steps": 1.5}, "steps=1.5 must be an integer >= 0."),
    ({"steps": True}, "steps=True must be an integer >= 0."),
    ({"start": "none", "noise": torch.zeros(4, 3, 8, 8)}, 'noise is only used by a random start; pass start="uniform" or "gaussian".'),
    ({"start": "uniform", "noise": torch.zeros(2, 3, 8, 8)}, "noise must have the shape of x, (4, 3, 8, 8); got (2, 3, 8, 8)."),
    ({"gauss_std": -1.0}, "gauss_std=-1.0 must be a finite number >= 0 (the official code uses 0.001)."),
])
def test_pgd_errors_name_the_bad_value_and_what_is_allowed(task: Task, kwargs: dict, message: str) -> None:
    params: dict[str, object] = {"eps": EPS, "step": STEP, "steps": 1, "start": "gaussian", **kwargs}
    with pytest.raises(AttackError) as info:
        pgd(task.model, task.x[:4], ce_loss(task.y[:4]), **params)  # type: ignore[arg-type]
    assert message in str(info.value)


@pytest.mark.parametrize("eps", [0.0, 1.0])
def test_pgd_accepts_the_ends_of_the_eps_range(task: Task, eps: float) -> None:
    x = task.x[:4]
    x_adv = pgd(task.model, x, ce_loss(task.y[:4]), eps=eps, step=eps, steps=1, start="uniform")
    if eps == 0.0:
        assert torch.equal(x_adv, x)
    assert_in_eps_ball_and_unit_box(x_adv, x, eps)


def test_uniform_start_without_noise_covers_both_sides_of_x_and_is_clamped_to_the_box() -> None:
    """The first point PGD takes a gradient at: x + U(-eps, eps), clamped to [0, 1] (Madry PGD)."""
    seen: list[Tensor] = []

    def recorder(inp: Tensor) -> Tensor:
        seen.append(inp.detach().clone())
        return inp.flatten(1)[:, :2] * torch.tensor([1.0, -1.0])

    x = torch.cat([torch.zeros(1, 1, 40, 40), torch.ones(1, 1, 40, 40), torch.full((1, 1, 40, 40), 0.5)])
    torch.manual_seed(0)
    pgd(recorder, x, ce_loss(torch.tensor([0, 0, 0])), eps=0.1, step=0.01, steps=1, start="uniform")
    start = seen[0]
    assert start.min() >= 0.0 and start.max() <= 1.0  # clamped to the box
    offset = start[2] - 0.5  # the middle image: unclamped offsets
    assert offset.min() < -0.08 and offset.max() > 0.08 and offset.abs().max() <= 0.1
    assert (start[0] > 0).any() and (start[1] < 1).any()


def test_noise_of_another_dtype_is_cast_to_x(task: Task) -> None:
    x = task.x[:4]
    noise = torch.rand(x.shape, dtype=torch.float64) * 2 - 1
    x_adv = pgd(task.model, x, ce_loss(task.y[:4]), eps=EPS, step=0.0, steps=0, start="uniform", noise=noise)
    assert x_adv.dtype == x.dtype
    x_adv = pgd(task.model, x, ce_loss(task.y[:4]), eps=EPS, step=STEP, steps=1, start="gaussian", noise=noise)
    assert x_adv.dtype == x.dtype


def test_project_linf_clamps_to_the_eps_ball_intersected_with_the_unit_box() -> None:
    from absld.attacks.pgd import project_linf

    x = torch.tensor([0.0, 0.02, 0.5, 0.98, 1.0])
    x_adv = torch.tensor([-0.5, 0.5, 0.52, 0.9, 1.5])
    eps = 0.05
    assert torch.allclose(project_linf(x_adv, x, eps), torch.tensor([0.0, 0.07, 0.52, 0.93, 1.0]))
    inside = torch.tensor([0.01, 0.03, 0.49, 0.97, 0.99])
    assert torch.equal(project_linf(inside, x, eps), inside)  # feasible points stay where they are


def test_a_zero_gradient_leaves_the_point_where_it_is() -> None:
    """sign(0) = 0: where the loss does not depend on a pixel, PGD does not move it."""
    constant = lambda inp: (inp.flatten(1).sum(1, keepdim=True) * 0.0).expand(-1, 3) + torch.tensor([1.0, 0.0, 0.0])  # noqa: E731
    x = torch.rand(2, 1, 4, 4)
    x_adv = pgd(constant, x, ce_loss(torch.tensor([0, 1])), eps=EPS, step=STEP, steps=3, start="none")
    assert torch.equal(x_adv, x)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"start": "random"}, "start='random' is not a PGD start rule; use one of ['uniform', 'gaussian', 'none']."),
    ({"loss_fn": lambda logits: logits}, "loss_fn must return one loss per sample, shape (4,); got (4, 5)."),
])
def test_pgd_misuse_messages(task: Task, kwargs: dict, message: str) -> None:
    params: dict[str, object] = {"loss_fn": ce_loss(task.y[:4]), "eps": EPS, "step": STEP, "steps": 1,
                                 "start": "none", **kwargs}
    loss_fn = params.pop("loss_fn")
    with pytest.raises(AttackError) as info:
        pgd(task.model, task.x[:4], loss_fn, **params)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_pgd_inside_inference_mode_says_to_use_no_grad(task: Task) -> None:
    with torch.inference_mode(), pytest.raises(AttackError) as info:
        pgd(task.model, task.x[:4], ce_loss(task.y[:4]), eps=EPS, step=STEP, steps=1, start="none")
    assert str(info.value) == "pgd needs autograd: call it outside torch.inference_mode() (torch.no_grad() is fine)."


def test_pgd_with_a_per_sample_step_moves_each_sample_by_its_own_step():
    """DAFA's class-wise step: one signed-gradient step of size step_i, inside a wide radius."""
    x = torch.full((3, 1, 2, 2), 0.5)
    step = torch.tensor([0.01, 0.02, 0.04])
    x_adv = pgd(nn.Flatten(), x, lambda logits: logits.sum(1), eps=0.1, step=step, steps=1, start="none")
    assert (x_adv - x).flatten(1).tolist() == [[pytest.approx(s, abs=1e-6)] * 4 for s in step.tolist()]


def test_pgd_refuses_a_per_sample_step_of_the_wrong_shape_or_sign():
    x = torch.full((3, 1, 2, 2), 0.5)
    with pytest.raises(AttackError, match="one step per sample"):
        pgd(nn.Flatten(), x, lambda z: z.sum(1), eps=0.1, step=torch.full((2,), 0.01), steps=1, start="none")
    with pytest.raises(AttackError, match="per-sample step must be finite and >= 0"):
        pgd(nn.Flatten(), x, lambda z: z.sum(1), eps=0.1, step=torch.tensor([0.01, -0.01, 0.01]), steps=1,
            start="none")
