"""The evaluation's cascade (absld.evaluate.cascade) and records (absld.evaluate.records), pinned down
behaviour by behaviour so that a slip in either file fails a test (docs/testing.md, mutation testing).

Two tiny CPU set-ups, no training:

- a *lookup* model on (N, 2, 1, 1) images whose channel 0 holds the sample's id: it answers the
  sample's label unless the id is one of the clean-wrong ones or channel 1 is set. The attacks of
  the cascade (``fgsm``, ``pgd``, ``cw_inf``, ``autoattack`` as the cascade module names them) are
  replaced by fakes that set channel 1 on a fixed set of ids per attack and record every call. The
  expected records (which samples each attack runs on, what each column holds) are worked out by
  hand from those sets.
- a *linear* 2-class model on (N, 2, 2, 2) images with the real FGSM, PGD and CW: its CE and CW
  gradients have a constant sign, so every adversarial example has a closed form
  (``clamp(start + k * step * sign(W_other - W_y), box)``), recomputed here independently.

Every field of ``EvaluateConfig`` (absld/params/evaluate.py) is shown to change what the cascade
does: ``n_samples`` (the samples covered), ``batch_size`` (the batches of clean/FGSM/PGD/CW),
``eps``, ``seed``, ``fgsm.gauss_std``, ``pgd.step``, ``pgd.steps``, ``cw.step``, ``cw.steps``,
``cw.kappa`` (the adversarial examples, in closed form), ``amp`` (autocast on or off per attack),
``cascade`` (the samples each attack runs on), ``attacks`` (which attacks run, in which order),
``aa.n_samples`` (AutoAttack's subset and the masks), ``aa.batch_size`` (AutoAttack's batches and
the value it gets). Fields checked at a boundary only, with the reason:

- ``aa.backend``, ``aa.version``, ``aa.attacks`` (and ``aa.batch_size``, ``seed`` and ``eps`` as AutoAttack
  receives them): checked as the arguments of the ``autoattack()`` call the cascade makes, which
  is faked here; what the real AutoAttack does with them is tests/test_attacks.py's business (one
  real AutoAttack run costs more than this whole file may take), and torchattacks is not installed
  in the main environment.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from absld.attacks.accuracy import attack_seed
from absld.errors import UserError
from absld.evaluate.progress import ColumnProgress
from absld.evaluate.records import Records, RecordsError, read_records
from absld.fairness import summarize
from absld.params import EvaluateConfig
from absld.runtime import Runtime

cascade = importlib.import_module("absld.evaluate.cascade")  # the module (patched below), not its names

CPU = torch.device("cpu")
RT = Runtime(device=CPU, amp=False, channels_last=False, progress=False)


@pytest.fixture(autouse=True)
def _process_local_tqdm_lock(monkeypatch) -> None:
    """tqdm's default lock holds a multiprocessing semaphore that every process forked from this one
    shares (mutmut forks one per mutant): a bar that fails inside its display leaves it acquired, and
    every later fork hangs on it. A lock of this process's own keeps such a failure to itself."""
    monkeypatch.setattr(cascade.tqdm, "_lock", threading.RLock(), raising=False)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def cfg_of(**changes: Any) -> EvaluateConfig:
    base: dict[str, Any] = {"batch_size": 4, "eps": "8/255", "seed": 0, "attacks": ["fgsm", "pgd", "cw", "aa"],
                            "pgd": {"step": "2/255", "steps": 3}, "cw": {"step": "2/255", "steps": 3},
                            "aa": {"version": "custom", "attacks": ["apgd-ce"], "batch_size": 3}}
    return EvaluateConfig.model_validate({**base, **changes})


def expected_noise(kind: str, shape: tuple[int, ...], seed: int, name: str) -> Tensor:
    """The start draws as the module docstring defines them: a CPU generator seeded from (seed, name)."""
    generator = torch.Generator()
    generator.manual_seed(attack_seed(seed, name))
    if kind == "uniform":
        return torch.rand(shape, generator=generator) * 2 - 1
    return torch.randn(shape, generator=generator)


def ids(values: np.ndarray | Tensor) -> set[int]:
    return {int(i) for i in np.flatnonzero(np.asarray(values))}


# ================================================================================= the lookup set-up
N = 12
C = 3
LABELS = np.arange(N) % C
CLEAN_WRONG = {1, 7}
BROKEN = {"fgsm": {0, 2}, "pgd": {2, 3, 5}, "cw": {5, 6, 9}, "aa": {3, 8, 10}}
CLEAN_OK = set(range(N)) - CLEAN_WRONG  # {0, 2, 3, 4, 5, 6, 8, 9, 10, 11}


def lookup_images(n: int = N) -> np.ndarray:
    images = np.zeros((n, 2, 1, 1), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return images


class Lookup(nn.Module):
    """Predicts ``labels[id]`` unless ``id`` is clean-wrong or channel 1 (the fakes' mark) is set."""

    def __init__(self, labels: np.ndarray = LABELS, clean_wrong: set[int] = CLEAN_WRONG) -> None:
        super().__init__()
        self.register_buffer("labels", torch.as_tensor(labels, dtype=torch.int64))
        wrong = torch.zeros(len(labels), dtype=torch.bool)
        wrong[list(clean_wrong)] = True
        self.register_buffer("wrong", wrong)
        self.phase = "check"  # set by the adversarial hook: which record the next passes judge
        self.seen: list[tuple[str, bool]] = []  # (phase, autocast on) per forward pass
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append((self.phase, torch.is_autocast_enabled("cpu")))
        index = torch.round(x[:, 0, 0, 0] * 255).long()
        fooled = (x[:, 1, 0, 0] > 0.5) | self.wrong[index]
        pred = torch.where(fooled, (self.labels[index] + 1) % C, self.labels[index])
        return F.one_hot(pred, C).float()


@dataclass
class Call:
    attack: str
    ids: list[int]
    third: Any  # y, or the loss function for pgd
    kwargs: dict[str, Any]
    autocast: bool


@dataclass
class Fakes:
    calls: list[Call] = field(default_factory=list)

    def of(self, attack: str) -> list[Call]:
        return [c for c in self.calls if c.attack == attack]

    def attacked(self, attack: str) -> list[int]:
        return [i for c in self.of(attack) for i in c.ids]


def _mark(x: Tensor, broken: set[int]) -> Tensor:
    x_adv = x.clone()
    index = torch.round(x[:, 0, 0, 0] * 255).long()
    x_adv[:, 1, 0, 0] = torch.isin(index, torch.tensor(sorted(broken), dtype=torch.int64)).float()
    return x_adv


@pytest.fixture()
def fakes(monkeypatch) -> Fakes:
    record = Fakes()

    def fake(attack: str):
        def run(model: nn.Module, x: Tensor, third: Any, **kwargs: Any) -> Tensor:
            record.calls.append(Call(attack, torch.round(x[:, 0, 0, 0] * 255).long().tolist(), third, kwargs,
                                     torch.is_autocast_enabled("cpu")))
            return _mark(x, BROKEN[attack])

        return run

    for name, attack in (("fgsm", "fgsm"), ("pgd", "pgd"), ("cw_inf", "cw"), ("autoattack", "aa")):
        monkeypatch.setattr(cascade, name, fake(attack))
    return record


def phase_hook(model: Lookup, log: list | None = None):
    def hook(name: str, positions: Tensor, x: Tensor, x_adv: Tensor) -> None:
        model.phase = name
        if log is not None:
            log.append((name, positions.tolist(), x, x_adv))

    return hook


def evaluate(cfg: EvaluateConfig, rt: Runtime = RT, model: nn.Module | None = None, n: int = N, **kwargs: Any):
    model = Lookup() if model is None else model
    return cascade.evaluate_model(model, lookup_images(n), LABELS[:n], rt, cfg, num_classes=C, **kwargs)


# ------------------------------------------------------------------------------- the cascade itself
def test_without_cascade_every_attack_runs_on_every_clean_correct_sample(fakes: Fakes) -> None:
    records = evaluate(cfg_of(cascade=False))
    for attack in ("fgsm", "pgd", "cw", "aa"):
        assert sorted(fakes.attacked(attack)) == sorted(CLEAN_OK), attack
    # by hand: clean-correct minus the attack's broken ids
    expected = {"clean": {0, 2, 3, 4, 5, 6, 8, 9, 10, 11}, "fgsm": {3, 4, 5, 6, 8, 9, 10, 11},
                "pgd": {0, 4, 6, 8, 9, 10, 11}, "cw": {0, 2, 3, 4, 8, 10, 11}, "aa": {0, 2, 4, 5, 6, 9, 11},
                "worst": {4, 11}}
    assert records.names == ["clean", "fgsm", "pgd", "cw", "aa", "worst"]
    assert {name: ids(c) for name, c in records.correct.items()} == expected
    assert all(c.dtype == np.bool_ and c.shape == (N,) for c in records.correct.values())
    assert records.evaluated == {} and records.cascade is False


def test_the_cascade_runs_each_attack_only_on_the_samples_robust_to_every_earlier_one(fakes: Fakes) -> None:
    records = evaluate(cfg_of(cascade=True))
    assert sorted(fakes.attacked("fgsm")) == [0, 2, 3, 4, 5, 6, 8, 9, 10, 11]
    assert sorted(fakes.attacked("pgd")) == [3, 4, 5, 6, 8, 9, 10, 11]
    assert sorted(fakes.attacked("cw")) == [4, 6, 8, 9, 10, 11]
    assert sorted(fakes.attacked("aa")) == [4, 8, 10, 11]
    expected = {"clean": {0, 2, 3, 4, 5, 6, 8, 9, 10, 11}, "fgsm": {3, 4, 5, 6, 8, 9, 10, 11},
                "pgd": {4, 6, 8, 9, 10, 11}, "cw": {4, 8, 10, 11}, "aa": {4, 11}, "worst": {4, 11}}
    assert {name: ids(c) for name, c in records.correct.items()} == expected
    assert records.cascade is True and records.protocol["cascade"] is True


def test_the_attacks_list_chooses_which_attacks_run_and_their_order(fakes: Fakes) -> None:
    records = evaluate(cfg_of(attacks=["cw", "fgsm"], cascade=True))
    assert records.names == ["clean", "cw", "fgsm", "worst"]
    assert [c.attack for c in fakes.calls][:1] == ["cw"] and {c.attack for c in fakes.calls} == {"cw", "fgsm"}
    assert sorted(fakes.attacked("fgsm")) == [0, 2, 3, 4, 8, 10, 11]  # cw ran first
    assert ids(records.correct["worst"]) == {3, 4, 8, 10, 11}
    assert records.protocol["attacks"] == ["cw", "fgsm"] and "pgd" not in records.protocol


@pytest.mark.parametrize("cascade_on", [False, True])
def test_autoattack_on_a_subset_covers_the_first_aa_n_samples(fakes: Fakes, cascade_on: bool) -> None:
    cfg = cfg_of(cascade=cascade_on, aa={"version": "custom", "attacks": ["apgd-ce"], "batch_size": 3, "n_samples": 6})
    records = evaluate(cfg)
    covered = np.arange(N) < 6
    assert set(records.evaluated) == {"aa", "worst"}
    assert np.array_equal(records.evaluated["aa"], covered) and np.array_equal(records.evaluated["worst"], covered)
    if cascade_on:  # robust to fgsm, pgd and cw: {4, 8, 10, 11}; of them the first 6: {4}
        assert fakes.attacked("aa") == [4] and ids(records.correct["aa"]) == {4}
    else:  # clean-correct among the first 6: {0, 2, 3, 4, 5}; aa breaks 3
        assert fakes.attacked("aa") == [0, 2, 3, 4, 5] and ids(records.correct["aa"]) == {0, 2, 4, 5}
    # outside the subset worst is the worst case of the other attacks only
    assert ids(records.correct["worst"]) == {4, 8, 10, 11}
    assert records.arrays()["evaluated_aa"].tolist() == covered.tolist()


def test_samples_outside_the_autoattack_subset_stay_in_the_cascade(fakes: Fakes) -> None:
    cfg = cfg_of(attacks=["aa", "fgsm"], cascade=True,
                 aa={"version": "custom", "attacks": ["apgd-ce"], "batch_size": 3, "n_samples": 6})
    records = evaluate(cfg)
    assert fakes.attacked("aa") == [0, 2, 3, 4, 5]
    # robust to aa on the subset ({0, 2, 4, 5}) or outside it ({6, 8, 9, 10, 11})
    assert sorted(fakes.attacked("fgsm")) == [0, 2, 4, 5, 6, 8, 9, 10, 11]
    assert ids(records.correct["fgsm"]) == {4, 5, 6, 8, 9, 10, 11}
    assert ids(records.correct["worst"]) == {4, 5, 6, 8, 9, 10, 11}


@pytest.mark.parametrize("aa_n", [None, N, N + 1])
def test_autoattack_on_all_samples_has_no_masks(fakes: Fakes, aa_n: int | None) -> None:
    aa = {"version": "custom", "attacks": ["apgd-ce"], "batch_size": 3, "n_samples": aa_n}
    records = evaluate(cfg_of(aa=aa))
    assert records.evaluated == {} and sorted(fakes.attacked("aa")) == sorted(CLEAN_OK)
    assert ids(records.correct["aa"]) == {0, 2, 4, 5, 6, 9, 11}


def test_n_samples_limits_every_column_to_the_first_images(fakes: Fakes) -> None:
    records = evaluate(cfg_of(n_samples=5))
    assert records.n == 5 and records.index.tolist() == [0, 1, 2, 3, 4] and records.y.tolist() == [0, 1, 2, 0, 1]
    assert all(c.shape == (5,) for c in records.correct.values())
    assert max(i for c in fakes.calls for i in c.ids) == 4
    assert ids(records.correct["clean"]) == {0, 2, 3, 4}
    assert records.protocol["attacks"] == ["fgsm", "pgd", "cw", "aa"]


def test_batch_size_and_aa_batch_size_cut_the_batches(fakes: Fakes) -> None:
    log: list = []
    model = Lookup()
    evaluate(cfg_of(batch_size=4), model=model, on_adversarial=phase_hook(model, log))
    clean = [positions for name, positions, _, _ in log if name == "clean"]
    assert clean == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    for attack in ("fgsm", "pgd", "cw"):  # 10 clean-correct samples in batches of 4
        assert [len(c.ids) for c in fakes.of(attack)] == [4, 4, 2], attack
    assert [c.ids for c in fakes.of("fgsm")] == [[0, 2, 3, 4], [5, 6, 8, 9], [10, 11]]
    assert [len(c.ids) for c in fakes.of("aa")] == [3, 3, 3, 1]  # evaluate.aa.batch_size
    assert all(c.kwargs["batch_size"] == 3 for c in fakes.of("aa"))

    fakes.calls.clear()
    log.clear()
    evaluate(cfg_of(batch_size=5, aa={"version": "custom", "attacks": ["apgd-ce"], "batch_size": 7}),
             model=model, on_adversarial=phase_hook(model, log))
    assert [p for name, p, _, _ in log if name == "clean"] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    assert [len(c.ids) for c in fakes.of("pgd")] == [5, 5]
    assert [len(c.ids) for c in fakes.of("aa")] == [7, 3] and fakes.of("aa")[0].kwargs["batch_size"] == 7


def test_the_hook_sees_every_batch_with_its_positions_and_inputs(fakes: Fakes) -> None:
    log: list = []
    model = Lookup()
    evaluate(cfg_of(attacks=["fgsm"]), model=model, on_adversarial=phase_hook(model, log))
    for name, positions, x, x_adv in log:
        assert torch.equal(torch.round(x[:, 0, 0, 0] * 255).long(), torch.tensor(positions))
        if name == "clean":
            assert x_adv is x
        else:
            assert torch.equal(x_adv, _mark(x, BROKEN["fgsm"]))
    assert [name for name, *_ in log] == ["clean"] * 3 + ["fgsm"] * 3


def test_labels_of_any_integer_dtype_are_judged_as_int64(fakes: Fakes) -> None:
    labels = LABELS.astype(np.int32)
    records = cascade.evaluate_model(Lookup(), lookup_images(), labels, RT, cfg_of(attacks=["pgd"]), num_classes=C)
    assert records.y.dtype == np.int64 and records.index.dtype == np.int64
    (call, *_) = fakes.of("pgd")
    logits = F.one_hot(torch.tensor([1, 0, 2, 2]), C).float() * 3
    y = torch.as_tensor(LABELS[call.ids])
    assert torch.allclose(call.third(logits), F.cross_entropy(logits, y, reduction="none"))  # CE on y


def test_an_empty_evaluated_set_gives_empty_columns(fakes: Fakes) -> None:
    records = cascade.evaluate_model(Lookup(), lookup_images(0), LABELS[:0], RT, cfg_of(), num_classes=C)
    assert records.n == 0 and records.names == ["clean", "fgsm", "pgd", "cw", "aa", "worst"]
    assert all(c.shape == (0,) for c in records.correct.values()) and fakes.calls == []


def test_records_carry_the_model_eps_protocol_and_one_second_per_column(fakes: Fakes, monkeypatch) -> None:
    clock = iter(range(10_000))
    monkeypatch.setattr(cascade, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    cfg = cfg_of(eps="6/255", amp=True)
    records = evaluate(cfg, desc="teacher")
    assert records.model == "teacher" and records.eps == pytest.approx(6 / 255) and isinstance(records.eps, float)
    assert records.seconds == {"clean": 1.0, "fgsm": 1.0, "pgd": 1.0, "cw": 1.0, "aa": 1.0}  # two clock reads each
    assert records.protocol == cascade.protocol(cfg, False)  # the runtime has no autocast
    assert records.protocol["precision"] == "float32"
    rt_amp = Runtime(device=CPU, amp=True, channels_last=False, progress=False)
    assert evaluate(cfg, rt_amp).protocol["precision"] == "bf16-autocast"


# ------------------------------------------------------------------------------ model checks
class _Shape(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], *self.shape)


@pytest.mark.parametrize("shape", [(C, 1), (C + 1,), (C - 1,)])
def test_a_model_with_the_wrong_logits_is_rejected(fakes: Fakes, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError) as error:
        evaluate(cfg_of(), model=_Shape(shape).eval())
    assert str(error.value) == (f"the model outputs logits of shape {(1, *shape)} for a batch of 1, but the data has "
                                f"{C} classes; evaluate it on the dataset it was trained for")
    assert fakes.calls == []


def test_a_model_in_training_mode_is_rejected(fakes: Fakes) -> None:
    with pytest.raises(ValueError) as error:
        evaluate(cfg_of(), model=Lookup().train())
    assert str(error.value) == ("evaluate_model needs the model in eval mode (model.eval()): BatchNorm must use its "
                                "running statistics, so that a sample's result does not depend on its batch")


def test_a_model_with_the_right_logits_in_eval_mode_passes_the_check() -> None:
    model = Lookup().eval()
    cascade._check_model(model, torch.zeros(2, 2, 1, 1), C)  # no error
    assert model.seen == [("check", False)]


# ------------------------------------------------------------------------------ precision
def test_amp_puts_clean_fgsm_pgd_and_cw_under_autocast_never_autoattack(fakes: Fakes) -> None:
    rt_amp = Runtime(device=CPU, amp=True, channels_last=False, progress=False)
    for amp in (True, False):
        fakes.calls.clear()
        model = Lookup()
        evaluate(cfg_of(amp=amp), rt_amp, model=model, on_adversarial=phase_hook(model))
        assert {c.attack: c.autocast for c in fakes.calls} == {"fgsm": amp, "pgd": amp, "cw": amp, "aa": False}
        # verdict passes: each phase's passes come after the hook of its batch
        by_phase: dict[str, set[bool]] = {}
        for phase, on in model.seen:
            by_phase.setdefault(phase, set()).add(on)
        assert by_phase["check"] == {False}
        for name in ("clean", "fgsm", "pgd", "cw"):
            assert by_phase[name] == {amp}, name
        assert by_phase["aa"] == {False}


def test_without_amp_autocast_is_switched_off_even_inside_a_callers_autocast(fakes: Fakes) -> None:
    model = Lookup()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        evaluate(cfg_of(amp=False), model=model, on_adversarial=phase_hook(model))
    assert not any(c.autocast for c in fakes.calls)
    assert all(on is False for phase, on in model.seen if phase != "check")
    assert len(model.seen) > 1


# ------------------------------------------------------------------------------ start noise
def test_each_attack_gets_its_samples_rows_of_the_seeded_start_noise(fakes: Fakes) -> None:
    shape = (N, 2, 1, 1)
    for seed in (0, 5):
        fakes.calls.clear()
        evaluate(cfg_of(seed=seed, pgd={"step": "2/255", "steps": 4}))
        for attack, kind, name in (("fgsm", "gaussian", "fgsm"), ("pgd", "uniform", "pgd"), ("cw", "uniform", "cw")):
            draws = expected_noise(kind, shape, seed, name)
            for call in fakes.of(attack):
                assert torch.equal(call.kwargs["noise"], draws[call.ids]), (seed, attack)
        assert all("noise" not in c.kwargs and c.kwargs["seed"] == seed for c in fakes.of("aa"))
    first = expected_noise("gaussian", shape, 0, "fgsm")
    assert not torch.equal(first, expected_noise("gaussian", shape, 5, "fgsm"))  # the seed matters


def test_start_noise_is_drawn_only_for_attacks_with_a_start_and_samples_to_attack(fakes: Fakes, monkeypatch) -> None:
    drawn: list[tuple] = []
    real = cascade.start_noise

    def spy(kind, shape, *, seed, name):
        drawn.append((kind, shape, seed, name))
        return real(kind, shape, seed=seed, name=name)

    monkeypatch.setattr(cascade, "start_noise", spy)
    evaluate(cfg_of(attacks=["fgsm", "aa"], seed=2))
    assert drawn == [("gaussian", (N, 2, 1, 1), 2, "fgsm")]
    drawn.clear()
    fakes.calls.clear()
    all_wrong = Lookup(clean_wrong=set(range(N)))
    evaluate(cfg_of(attacks=["fgsm", "pgd"]), model=all_wrong)
    assert drawn == [] and fakes.calls == []


def test_start_noise_uniform_and_gaussian_are_the_seeded_standard_draws() -> None:
    shape = (64, 2, 3, 3)
    uniform = cascade.start_noise("uniform", shape, seed=3, name="pgd")
    assert torch.equal(uniform, expected_noise("uniform", shape, 3, "pgd"))
    assert uniform.min() >= -1 and uniform.max() < 1 and uniform.min() < -0.99 and uniform.max() > 0.99
    gaussian = cascade.start_noise("gaussian", shape, seed=3, name="fgsm")
    assert torch.equal(gaussian, expected_noise("gaussian", shape, 3, "fgsm"))
    assert gaussian.min() < -2.5 and gaussian.max() > 2.5
    assert not torch.equal(cascade.start_noise("uniform", shape, seed=3, name="cw"), uniform)
    assert uniform.shape == shape and uniform.dtype == torch.float32


# ------------------------------------------------------------------------------ progress and resuming
@dataclass
class FakeProgress:
    columns: dict[str, ColumnProgress] = field(default_factory=dict)
    is_due: bool = False
    updates: list[tuple[str, ColumnProgress]] = field(default_factory=list)

    def due(self) -> bool:
        return self.is_due

    def update(self, name: str, column: ColumnProgress) -> None:
        self.updates.append((name, column))


def _clock(monkeypatch) -> None:
    clock = iter(range(10_000))
    monkeypatch.setattr(cascade, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))


def test_progress_gets_a_snapshot_after_every_due_batch_and_the_finished_column(fakes: Fakes, monkeypatch) -> None:
    _clock(monkeypatch)
    progress = FakeProgress(is_due=True)
    records = evaluate(cfg_of(attacks=["fgsm"]), progress=progress)
    names = [name for name, _ in progress.updates]
    assert names == ["clean"] * 4 + ["fgsm"] * 4
    clean = [column for name, column in progress.updates if name == "clean"]
    assert [c.done for c in clean] == [4, 8, 12, 12] and [c.complete for c in clean] == [False, False, False, True]
    assert [c.seconds for c in clean] == [1.0, 2.0, 3.0, 4.0]
    assert [ids(c.robust) for c in clean] == [{0, 2, 3}, {0, 2, 3, 4, 5, 6}, CLEAN_OK, CLEAN_OK]
    fgsm = [column for name, column in progress.updates if name == "fgsm"]
    assert [c.done for c in fgsm] == [4, 8, 10, 10] and [c.seconds for c in fgsm] == [1.0, 2.0, 3.0, 4.0]
    assert [ids(c.robust) for c in fgsm] == [{3, 4}, {3, 4, 5, 6, 8, 9}, {3, 4, 5, 6, 8, 9, 10, 11},
                                             {3, 4, 5, 6, 8, 9, 10, 11}]
    assert records.seconds == {"clean": 4.0, "fgsm": 4.0}


def test_progress_not_due_gets_only_the_finished_columns(fakes: Fakes, monkeypatch) -> None:
    _clock(monkeypatch)
    progress = FakeProgress(is_due=False)
    evaluate(cfg_of(attacks=["fgsm"]), progress=progress)
    assert [(name, c.done, c.complete, c.seconds) for name, c in progress.updates] == \
        [("clean", 12, True, 1.0), ("fgsm", 10, True, 1.0)]


def test_a_resumed_column_keeps_its_verdicts_and_runs_from_its_batch(fakes: Fakes, monkeypatch) -> None:
    _clock(monkeypatch)
    clean = np.isin(np.arange(N), sorted(CLEAN_OK))
    earlier = np.zeros(N, dtype=np.bool_)
    earlier[[0, 1, 2, 3, 4]] = True  # verdicts of the 4 samples done, as saved (and one the model would not give)
    progress = FakeProgress({"clean": ColumnProgress(clean, N, 2.5, complete=True),
                             "fgsm": ColumnProgress(earlier, 4, 5.0, complete=False)})
    log: list = []
    model = Lookup()
    records = evaluate(cfg_of(attacks=["fgsm"], batch_size=2), model=model, progress=progress,
                       on_adversarial=phase_hook(model, log))
    assert [name for name, *_ in log] == ["fgsm"] * 3  # clean was complete
    assert [c.ids for c in fakes.of("fgsm")] == [[5, 6], [8, 9], [10, 11]]
    assert ids(records.correct["fgsm"]) == {0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11}
    assert records.seconds == {"clean": 2.5, "fgsm": 6.0}
    assert ids(earlier) == {0, 1, 2, 3, 4}  # the saved column is not written into
    assert [(name, c.done, c.complete, c.seconds) for name, c in progress.updates] == [("fgsm", 10, True, 6.0)]
    draws = expected_noise("gaussian", (N, 2, 1, 1), 0, "fgsm")
    assert all(torch.equal(c.kwargs["noise"], draws[c.ids]) for c in fakes.of("fgsm"))


def test_a_column_done_to_its_last_sample_but_not_marked_complete_runs_nothing(fakes: Fakes, monkeypatch) -> None:
    _clock(monkeypatch)
    saved = np.zeros(N, dtype=np.bool_)
    saved[[3, 4]] = True
    progress = FakeProgress({"fgsm": ColumnProgress(saved, 10, 1.5, complete=False)})
    records = evaluate(cfg_of(attacks=["fgsm"], batch_size=4), progress=progress)  # 10 is not 4k, but all
    assert fakes.of("fgsm") == [] and ids(records.correct["fgsm"]) == {3, 4}
    assert records.seconds["fgsm"] == 2.5


def test_a_saved_column_that_stops_mid_batch_is_an_error(fakes: Fakes) -> None:
    saved = np.zeros(N, dtype=np.bool_)
    progress = FakeProgress({"fgsm": ColumnProgress(saved, 3, 1.0, complete=False)})
    with pytest.raises(ValueError) as error:
        evaluate(cfg_of(attacks=["fgsm"], batch_size=2), progress=progress)
    assert str(error.value) == "fgsm: 3 samples done is not a whole number of batches of 2"


SHOWN = Runtime(device=CPU, amp=False, channels_last=False, progress=True)


def test_progress_bars_follow_the_runtime(fakes: Fakes, capsys) -> None:
    evaluate(cfg_of(attacks=["fgsm"]), desc="teacher")
    assert capsys.readouterr().err == ""
    evaluate(cfg_of(attacks=["fgsm"]), SHOWN, desc="teacher")
    err = capsys.readouterr().err
    assert "[teacher clean]" in err and "[teacher fgsm]" in err and "/12 " in err and "/10 " in err
    assert "img/s" in err and "\n" not in err  # bars are not left behind
    assert evaluate(cfg_of(attacks=["fgsm"]), SHOWN).model == "evaluate"
    assert "[evaluate clean]" in capsys.readouterr().err


def test_a_resumed_columns_bar_starts_at_the_samples_done(fakes: Fakes, capsys) -> None:
    saved = np.zeros(N, dtype=np.bool_)
    progress = FakeProgress({"fgsm": ColumnProgress(saved, 4, 1.0, complete=False)})
    evaluate(cfg_of(attacks=["fgsm"], batch_size=2), SHOWN, progress=progress)
    err = capsys.readouterr().err
    assert "[evaluate fgsm]:  40%" in err and " 4/10 " in err


# ------------------------------------------------------------------------------ the helpers
def test_chunks_cut_positions_in_order() -> None:
    chunks = [c.tolist() for c in cascade._chunks(torch.arange(10, 17), 3)]
    assert chunks == [[10, 11, 12], [13, 14, 15], [16]]
    assert [c.tolist() for c in cascade._chunks(torch.arange(4), 4)] == [[0, 1, 2, 3]]
    assert list(cascade._chunks(torch.arange(0), 2)) == []


def test_settle_writes_the_verdicts_at_their_positions_and_empties_the_lists() -> None:
    robust = np.zeros(6, dtype=np.bool_)
    positions = [torch.tensor([1, 3]), torch.tensor([4])]
    verdicts = [torch.tensor([True, False]), torch.tensor([True])]
    cascade._settle(robust, positions, verdicts)
    assert robust.tolist() == [False, True, False, False, True, False] and positions == [] and verdicts == []
    robust[:] = True
    cascade._settle(robust, [], [])
    assert robust.all()


@pytest.mark.parametrize("channels_last", [False, True])
def test_inputs_are_the_images_over_255_in_the_runtimes_memory_format(channels_last: bool) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 2, 3, 3)).astype(np.uint8)
    rt = Runtime(device=CPU, amp=False, channels_last=channels_last, progress=False)
    evaluator = cascade._Evaluator(nn.Identity(), images, np.arange(5, dtype=np.int32), rt, cfg_of(), "d", None)
    x, y = evaluator.inputs(torch.tensor([4, 1]))
    assert x.dtype == torch.float32 and torch.equal(x, torch.as_tensor(images[[4, 1]]).float() / 255)
    assert y.dtype == torch.int64 and y.tolist() == [4, 1]
    assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert x.is_contiguous() == (not channels_last)


def test_the_clean_attack_is_the_input_itself() -> None:
    x = torch.rand(2, 3)
    assert cascade._clean(nn.Identity(), x, torch.zeros(2), None) is x


def test_record_names() -> None:
    cfg = cfg_of(pgd={"step": "2/255", "steps": 7})
    assert [cascade.record_name(a, cfg) for a in ("fgsm", "pgd", "cw", "aa")] == ["fgsm", "pgd", "cw", "aa"]


def test_package_version_is_the_installed_distributions_or_none() -> None:
    assert cascade._package_version("torch") == importlib.metadata.version("torch")
    assert cascade._package_version("no-such-distribution-absld") is None


# ------------------------------------------------------------------------------ build_attacks
def test_build_attacks_gives_one_spec_per_attack_with_its_batching_noise_and_precision() -> None:
    for amp in (False, True):
        cfg = cfg_of(amp=amp, batch_size=6, attacks=["pgd", "aa", "fgsm", "cw"])
        specs = cascade.build_attacks(cfg, CPU)
        assert [(s.name, s.batch_size, s.noise_kind, s.autocast) for s in specs] == [
            ("pgd", 6, "uniform", amp), ("aa", 3, None, False), ("fgsm", 6, "gaussian", amp), ("cw", 6, "uniform", amp)]
    assert [s.name for s in cascade.build_attacks(cfg_of(attacks=["cw"]))] == ["cw"]


def test_the_specs_hand_every_setting_to_their_attack(monkeypatch) -> None:
    calls: dict[str, tuple] = {}

    def spy(name):
        def run(model, x, third, **kwargs):
            calls[name] = (third, kwargs)
            return x + 1

        return run

    for name in ("fgsm", "pgd", "cw_inf", "autoattack"):
        monkeypatch.setattr(cascade, name, spy(name))
    cfg = cfg_of(eps="6/255", seed=9, fgsm={"gauss_std": 0.002}, pgd={"step": "1/255", "steps": 7},
                 cw={"step": "3/255", "steps": 4, "kappa": 12.5},
                 aa={"version": "custom", "attacks": ["apgd-ce", "apgd-t"], "batch_size": 11, "backend": "torchattacks"})
    device = torch.device("cpu")
    specs = {s.name: s for s in cascade.build_attacks(cfg, device)}
    x, y, noise = torch.zeros(2, 3), torch.tensor([1, 0]), torch.ones(2, 3)
    for spec in specs.values():
        assert torch.equal(spec.run(Lookup(), x, y, noise), x + 1)
    eps = 6 / 255
    assert calls["fgsm"][0] is y and calls["fgsm"][1] == {"eps": pytest.approx(eps), "gauss_std": 0.002, "noise": noise}
    loss, kwargs = calls["pgd"]
    assert kwargs == {"eps": pytest.approx(eps), "step": pytest.approx(1 / 255), "steps": 7, "start": "uniform",
                      "noise": noise}
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    assert torch.allclose(loss(logits), F.cross_entropy(logits, y, reduction="none"))
    assert calls["cw_inf"][0] is y and calls["cw_inf"][1] == {
        "eps": pytest.approx(eps), "step": pytest.approx(3 / 255), "steps": 4, "kappa": 12.5, "start": "uniform",
        "noise": noise}
    assert calls["autoattack"][0] is y and calls["autoattack"][1] == {
        "eps": pytest.approx(eps), "version": "custom", "attacks": ["apgd-ce", "apgd-t"], "seed": 9, "batch_size": 11,
        "backend": "torchattacks", "device": device}


def test_the_evaluation_hands_autoattack_the_runtimes_device(fakes: Fakes) -> None:
    evaluate(cfg_of(attacks=["aa"]))
    assert fakes.of("aa") and all(c.kwargs["device"] == CPU for c in fakes.of("aa"))
    assert all(c.kwargs["version"] == "custom" and c.kwargs["attacks"] == ["apgd-ce"]
               and c.kwargs["backend"] == "pyautoattack" for c in fakes.of("aa"))


# ------------------------------------------------------------------------------ protocol
def test_protocol_lists_the_settings_of_the_attacks_run_in_order() -> None:
    cfg = cfg_of(attacks=["fgsm", "cw"], cascade=True, seed=4, eps="6/255", fgsm={"gauss_std": 0.002},
                 cw={"step": "1/255", "steps": 5, "kappa": 3.0})
    out = cascade.protocol(cfg, autocast_available=False)
    assert list(out) == ["precision", "cascade", "seed", "eps", "attacks", "fgsm", "cw"]
    assert out == {"precision": "float32", "cascade": True, "seed": 4, "eps": pytest.approx(6 / 255),
                   "attacks": ["fgsm", "cw"], "fgsm": {"gauss_std": 0.002},
                   "cw": {"step": pytest.approx(1 / 255), "steps": 5, "kappa": 3.0}}
    assert type(out["eps"]) is float
    json.dumps(out)  # JSON-able


@pytest.mark.parametrize(("amp", "available", "precision"), [
    (False, False, "float32"), (False, True, "float32"), (True, False, "float32"), (True, True, "bf16-autocast")])
def test_protocol_precision_needs_evaluate_amp_and_an_autocast(amp: bool, available: bool, precision: str) -> None:
    assert cascade.protocol(cfg_of(amp=amp), available)["precision"] == precision


@pytest.mark.parametrize(("amp", "tf32", "precision"), [
    (False, True, "tf32"), (True, True, "bf16-autocast"), (False, False, "float32")])
def test_protocol_says_tf32_where_the_float32_passes_run_as_tf32(amp: bool, tf32: bool, precision: str) -> None:
    assert cascade.protocol(cfg_of(amp=amp), True, tf32=tf32)["precision"] == precision


def test_tf32_is_active_only_on_cuda_with_torchs_tf32_switches_on(monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert not cascade.tf32_active(torch.device("cpu"))
    assert cascade.tf32_active(torch.device("cuda"))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    matmul = torch.backends.cuda.matmul.allow_tf32  # a property of torch's cuBLAS module: set and restored by hand
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert not cascade.tf32_active(torch.device("cuda"))
        torch.backends.cuda.matmul.allow_tf32 = True
        assert cascade.tf32_active(torch.device("cuda"))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def test_protocol_default_assumes_autocast_is_available() -> None:
    assert cascade.protocol(cfg_of(amp=True))["precision"] == "bf16-autocast"


@pytest.mark.parametrize(("aa", "standard"), [
    ({"backend": "pyautoattack", "version": "standard"}, True),
    ({"backend": "torchattacks", "version": "standard"}, False),
    ({"backend": "pyautoattack", "version": "rand"}, False),
    ({"backend": "pyautoattack", "version": "custom", "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"]}, False)])
def test_protocol_says_whether_autoattack_is_the_standard_one(aa: dict, standard: bool) -> None:
    section = cascade.protocol(cfg_of(attacks=["aa"], aa=aa))["aa"]
    assert section["standard"] is standard
    assert section["backend"] == aa["backend"] and section["version"] == aa["version"]
    try:
        version = importlib.metadata.version(aa["backend"])
    except importlib.metadata.PackageNotFoundError:
        version = None
    assert section["package_version"] == version
    assert set(section) == {"backend", "version", "attacks", "batch_size", "n_samples", "package_version", "standard"}


# ------------------------------------------------------------------------------ summaries
def test_summaries_read_each_column_on_its_mask_with_the_given_ddof() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    correct = {"clean": np.array([True, True, True, False, True, True]),
               "aa": np.array([True, False, True, False, False, False])}
    mask = np.array([True, True, True, True, True, False])
    records = Records("m", np.arange(6), y, correct, 8 / 255, evaluated={"aa": mask})
    out = cascade.summarize_records(records, 3)
    assert out["clean"]["avg"] == pytest.approx(5 / 6) and out["clean"]["n"] == 6
    assert out["aa"]["avg"] == pytest.approx(2 / 5) and out["aa"]["n"] == 5
    assert out["aa"]["class_acc"] == [0.5, 0.5, 0.0] and out["clean"]["class_acc"] == [1.0, 0.5, 1.0]
    assert out["clean"]["ddof"] == 0
    one = cascade.summarize_records(records, 3, ddof=1)
    assert one["clean"]["ddof"] == 1 and one["clean"] == summarize(correct["clean"], y, 3, 1)
    assert one["aa"]["ddof"] == 1 and one["aa"] == summarize(correct["aa"][mask], y[mask], 3, 1)
    assert one["clean"]["nsd"] != out["clean"]["nsd"]


# ================================================================================= the linear set-up
SHAPE = (2, 2, 2)
LIN_N = 10


@dataclass(frozen=True)
class Linear:
    model: nn.Module
    images: np.ndarray
    labels: np.ndarray
    direction: Tensor  # (N, *SHAPE): sign(W_other - W_y), the ascent direction of CE and the CW margin


@pytest.fixture(scope="module")
def linear() -> Linear:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(2, 8, generator=generator) * 2
    images = np.random.default_rng(1).integers(60, 190, (LIN_N, *SHAPE)).astype(np.uint8)
    x = torch.as_tensor(images).float() / 255
    margin = x.flatten(1) @ (weight[1] - weight[0])  # (N,) logit 1 - logit 0 without a bias
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 2))
    with torch.no_grad():  # a bias that puts the samples on both sides of the boundary, some near it
        model[1].weight.copy_(weight)
        model[1].bias.copy_(torch.stack([margin.median(), torch.tensor(0.0)]))
    model.eval().requires_grad_(False)
    with torch.no_grad():
        labels = model(torch.as_tensor(images).float() / 255).argmax(dim=1)
    direction = torch.sign(weight[1 - labels] - weight[labels]).reshape(LIN_N, *SHAPE)
    assert (direction != 0).all()
    return Linear(model, images, labels.numpy(), direction)


def run_linear(task: Linear, cfg: EvaluateConfig) -> tuple[Records, dict[str, Tensor]]:
    adversarial: dict[str, Tensor] = {}

    def hook(name: str, positions: Tensor, x: Tensor, x_adv: Tensor) -> None:
        out = adversarial.setdefault(name, torch.full((LIN_N, *SHAPE), float("nan")))
        out[positions] = x_adv

    records = cascade.evaluate_model(task.model, task.images, task.labels, RT, cfg, num_classes=2,
                                     on_adversarial=hook)
    return records, adversarial


def closed_form(task: Linear, cfg: EvaluateConfig) -> dict[str, Tensor]:
    """x_adv of FGSM, PGD and CW (kappa large enough to stay active) for the linear model."""
    x = torch.as_tensor(task.images).float() / 255
    eps = cfg.eps
    lower, upper = torch.clamp(x - eps, min=0.0), torch.clamp(x + eps, max=1.0)
    shape = (LIN_N, *SHAPE)
    out = {}
    gaussian = expected_noise("gaussian", shape, cfg.seed, "fgsm")
    out["fgsm"] = torch.clamp(x + cfg.fgsm.gauss_std * gaussian + eps * task.direction, lower, upper)
    for name, step, steps in (("pgd", cfg.pgd.step, cfg.pgd.steps), ("cw", cfg.cw.step, cfg.cw.steps)):
        start = torch.clamp(x + eps * expected_noise("uniform", shape, cfg.seed, name), 0.0, 1.0)
        out[name] = torch.clamp(start + steps * step * task.direction, lower, upper)
    return out


def lin_cfg(**changes: Any) -> EvaluateConfig:
    base: dict[str, Any] = {"batch_size": 4, "eps": "8/255", "seed": 0, "attacks": ["fgsm", "pgd", "cw"],
                            "fgsm": {"gauss_std": 0.01}, "pgd": {"step": "1/255", "steps": 2},
                            "cw": {"step": "2/255", "steps": 2, "kappa": 50.0}}
    return EvaluateConfig.model_validate({**base, **changes})


KNOBS = [  # (change, the records it must change)
    ({"eps": "5/255"}, {"fgsm", "pgd", "cw"}),
    ({"seed": 1}, {"fgsm", "pgd", "cw"}),
    ({"fgsm": {"gauss_std": 0.03}}, {"fgsm"}),
    ({"pgd": {"step": "2/255", "steps": 2}}, {"pgd"}),
    ({"pgd": {"step": "1/255", "steps": 5}}, {"pgd"}),
    ({"cw": {"step": "1/255", "steps": 2, "kappa": 50.0}}, {"cw"}),
    ({"cw": {"step": "2/255", "steps": 1, "kappa": 50.0}}, {"cw"}),
    ({"batch_size": 3}, set()),  # batching never changes a sample's attack
]


@pytest.fixture(scope="module")
def linear_base(linear: Linear) -> tuple[Records, dict[str, Tensor]]:
    return run_linear(linear, lin_cfg())


def _by_attack(adversarial: dict[str, Tensor]) -> dict[str, Tensor]:
    return {("pgd" if name.startswith("pgd") else name): value for name, value in adversarial.items()}


@pytest.mark.parametrize(("change", "changed"), KNOBS, ids=[json.dumps(k) for k, _ in KNOBS])
def test_every_attack_setting_shapes_the_adversarial_examples(linear: Linear, linear_base, change: dict,
                                                              changed: set[str]) -> None:
    cfg = lin_cfg(**change)
    records, adversarial = run_linear(linear, cfg)
    expected = closed_form(linear, cfg)
    assert set(adversarial) == {"clean", *expected}
    for name, value in expected.items():
        assert torch.allclose(adversarial[name], value, atol=1e-6), name
        # verdicts: the model's answer on the adversarial example (every sample is clean-correct)
        with torch.no_grad():
            verdict = (linear.model(value).argmax(dim=1) == torch.as_tensor(linear.labels)).numpy()
        assert np.array_equal(records.correct[name], verdict), name
    x = torch.as_tensor(linear.images).float() / 255
    assert torch.equal(adversarial["clean"], x) and records.correct["clean"].all()
    base = _by_attack(linear_base[1])
    now = _by_attack(adversarial)
    for attack in ("fgsm", "pgd", "cw"):
        assert torch.equal(now[attack], base[attack]) == (attack not in changed), attack


def test_the_linear_set_up_has_both_classes_and_attacks_that_break_some_samples(linear: Linear,
                                                                                linear_base) -> None:
    records, _ = linear_base
    assert set(linear.labels.tolist()) == {0, 1}
    for name in ("fgsm", "pgd", "cw"):
        assert 0 < records.correct[name].sum() < LIN_N, name


def test_cw_kappa_zero_stops_each_sample_once_it_is_misclassified(linear: Linear, linear_base) -> None:
    cfg = lin_cfg(cw={"step": "2/255", "steps": 4, "kappa": 0.0}, attacks=["cw"])
    _, adversarial = run_linear(linear, cfg)
    _, strong = run_linear(linear, lin_cfg(cw={"step": "2/255", "steps": 4, "kappa": 50.0}, attacks=["cw"]))
    assert torch.allclose(strong["cw"], closed_form(linear, lin_cfg(cw={"step": "2/255", "steps": 4, "kappa": 50.0}))["cw"],
                          atol=1e-6)
    moved_less = (adversarial["cw"] != strong["cw"]).flatten(1).any(dim=1)
    assert moved_less.any()  # kappa reaches the CW loss
    with torch.no_grad():
        logits = linear.model(adversarial["cw"])
    y = torch.as_tensor(linear.labels)
    margin = logits.gather(1, y[:, None])[:, 0] - logits.gather(1, (1 - y)[:, None])[:, 0]
    assert (margin[moved_less] <= 0).all()  # they stopped because they were fooled


# ================================================================================= records.py
def make_records(**changes: Any) -> Records:
    base: dict[str, Any] = {
        "model": "absld/seed0", "index": np.arange(4, dtype=np.int32), "y": np.array([0, 1, 2, 1], dtype=np.int32),
        "correct": {"clean": np.array([1, 1, 0, 1]), "aa": np.array([True, False, False, True]),
                 "worst": np.array([True, False, False, False])},
        "eps": 8 / 255, "protocol": {"seed": 0, "precision": "float32"},
        "evaluated": {"aa": np.array([1, 1, 0, 1]), "worst": np.array([True, True, False, True])}}
    return Records(**{**base, **changes})


def test_records_defaults_and_properties() -> None:
    records = Records("m", np.arange(3), np.zeros(3, dtype=np.int64), {"clean": np.ones(3, dtype=bool)}, 0.5)
    assert records.protocol == {} and records.evaluated == {} and records.cascade is False and records.seconds == {}
    assert records.names == ["clean"] and records.n == 3
    other = Records("m", np.arange(3), np.zeros(3, dtype=np.int64), {}, 0.5)
    other.protocol["x"] = 1
    assert records.protocol == {}  # one default per instance


def test_records_column_reads_a_masked_column_on_its_mask_only() -> None:
    records = make_records()
    correct, y = records.column("clean")
    assert correct.tolist() == [1, 1, 0, 1] and y.tolist() == [0, 1, 2, 1]
    correct, y = records.column("worst")
    assert correct.tolist() == [True, False, False] and y.tolist() == [0, 1, 1]


def test_records_arrays_follow_the_contract_dtypes() -> None:
    arrays = make_records().arrays()
    assert list(arrays) == ["index", "y", "correct_clean", "correct_aa", "correct_worst", "evaluated_aa",
                            "evaluated_worst", "eps", "protocol"]
    assert arrays["index"].dtype == np.int64 and arrays["y"].dtype == np.int64
    assert all(arrays[k].dtype == np.bool_ for k in arrays if k.startswith(("correct_", "evaluated_")))
    assert arrays["correct_clean"].tolist() == [True, True, False, True]
    assert arrays["evaluated_aa"].tolist() == [True, True, False, True]
    assert arrays["eps"].shape == () and arrays["eps"].dtype == np.float64 and float(arrays["eps"]) == 8 / 255
    assert arrays["protocol"].shape == () and str(arrays["protocol"]) == '{"precision": "float32", "seed": 0}'


def test_records_load_back_as_saved(tmp_path) -> None:
    make_records().save(tmp_path / "r.npz")
    loaded = Records.load(tmp_path / "r.npz", "the-model")
    assert loaded.model == "the-model" and loaded.index.dtype == np.int64 and loaded.y.dtype == np.int64
    assert loaded.names == ["clean", "aa", "worst"] and loaded.correct["clean"].tolist() == [True, True, False, True]
    assert set(loaded.evaluated) == {"aa", "worst"} and loaded.evaluated["aa"].tolist() == [True, True, False, True]
    assert loaded.eps == 8 / 255 and type(loaded.eps) is float
    assert loaded.protocol == {"seed": 0, "precision": "float32"}
    assert loaded.cascade is False and loaded.seconds == {}
    assert read_records("again", tmp_path / "r.npz").model == "again"


def _write(path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _load_error(path, model: str = "m") -> str:
    with pytest.raises(RecordsError) as error:
        read_records(model, path)
    assert isinstance(error.value, UserError) and isinstance(error.value, ValueError)
    return str(error.value)


def test_an_unreadable_records_file_says_what_to_rerun(tmp_path) -> None:
    path = tmp_path / "r.npz"
    path.write_bytes(b"not an npz")
    message = _load_error(path, "absld/seed0")
    assert message.startswith(f"{path}: not a readable records.npz (")
    assert message.endswith("); re-run the evaluate stage of absld/seed0")
    missing = _load_error(tmp_path / "none.npz")
    assert missing.startswith(f"{tmp_path / 'none.npz'}: not a readable records.npz (")


@pytest.mark.parametrize("key", ["index", "y", "eps", "correct_worst"])
def test_a_missing_array_is_named(tmp_path, key: str) -> None:
    arrays = make_records().arrays()
    del arrays[key]
    _write(tmp_path / "r.npz", arrays)
    assert _load_error(tmp_path / "r.npz") == (f"{tmp_path / 'r.npz'}: missing array(s) {key}; "
                                               "re-run the evaluate stage of m")


def test_several_missing_arrays_are_all_named(tmp_path) -> None:
    arrays = make_records().arrays()
    del arrays["index"], arrays["eps"]
    _write(tmp_path / "r.npz", arrays)
    assert "missing array(s) index, eps;" in _load_error(tmp_path / "r.npz")


@pytest.mark.parametrize(("index", "y"), [(np.zeros((2, 2), dtype=np.int64), np.zeros((2, 2), dtype=np.int64)),
                                          (np.arange(4), np.arange(3))])
def test_index_and_y_must_be_one_dimensional_of_one_length(tmp_path, index, y) -> None:
    arrays = {**make_records().arrays(), "index": index, "y": y}
    _write(tmp_path / "r.npz", arrays)
    assert _load_error(tmp_path / "r.npz") == (f"{tmp_path / 'r.npz'}: index {index.shape} and y {y.shape} must be "
                                               "1-D arrays of the same length")


@pytest.mark.parametrize("which", ["index", "y"])
def test_index_and_y_must_hold_integers(tmp_path, which: str) -> None:
    arrays = make_records().arrays()
    arrays[which] = arrays[which].astype(np.float64)
    _write(tmp_path / "r.npz", arrays)
    dtypes = {"index": "float64 and int64", "y": "int64 and float64"}[which]
    assert _load_error(tmp_path / "r.npz") == f"{tmp_path / 'r.npz'}: index and y must hold integers, got {dtypes}"


@pytest.mark.parametrize("prefix", ["correct", "evaluated"])
@pytest.mark.parametrize("bad", [np.array([1, 0, 1, 1]), np.array([True, False, True])])
def test_columns_and_masks_must_be_booleans_of_the_records_length(tmp_path, prefix: str, bad) -> None:
    arrays = {**make_records().arrays(), f"{prefix}_aa": bad}
    _write(tmp_path / "r.npz", arrays)
    assert _load_error(tmp_path / "r.npz") == (f"{tmp_path / 'r.npz'}: {prefix}_aa must be a boolean array of shape "
                                               f"(4,), got {bad.dtype} {bad.shape}")


def test_int32_index_and_y_are_read_as_int64(tmp_path) -> None:
    arrays = make_records().arrays()
    arrays["index"], arrays["y"] = arrays["index"].astype(np.int32), arrays["y"].astype(np.int16)
    _write(tmp_path / "r.npz", arrays)
    loaded = read_records("m", tmp_path / "r.npz")
    assert loaded.index.dtype == np.int64 and loaded.y.dtype == np.int64 and loaded.y.tolist() == [0, 1, 2, 1]


def test_eps_must_be_a_scalar(tmp_path) -> None:
    arrays = {**make_records().arrays(), "eps": np.array([0.1, 0.2])}
    _write(tmp_path / "r.npz", arrays)
    assert _load_error(tmp_path / "r.npz") == f"{tmp_path / 'r.npz'}: eps must be a scalar, got shape (2,)"


def test_records_without_a_protocol_say_what_to_rerun(tmp_path) -> None:
    arrays = make_records().arrays()
    del arrays["protocol"]
    _write(tmp_path / "r.npz", arrays)
    assert _load_error(tmp_path / "r.npz", "absld/seed0") == (
        f"{tmp_path / 'r.npz'} does not record how it was evaluated (no protocol: written by an older absld); "
        "re-run the evaluate stage of absld/seed0")


@pytest.mark.parametrize("text", ["not json", "[1, 2]", "3", '"a string"'])
def test_a_protocol_that_is_not_a_json_object_is_an_error(tmp_path, text: str) -> None:
    arrays = {**make_records().arrays(), "protocol": np.asarray(text)}
    _write(tmp_path / "r.npz", arrays)
    assert _load_error(tmp_path / "r.npz") == (f"{tmp_path / 'r.npz'}: protocol is not a JSON object; "
                                               "re-run the evaluate stage of m")


def test_arrays_other_than_columns_and_masks_are_ignored(tmp_path) -> None:
    arrays = make_records().arrays()
    arrays = {"extra": np.arange(3), **arrays}  # before the columns
    _write(tmp_path / "r.npz", arrays)
    loaded = read_records("m", tmp_path / "r.npz")
    assert loaded.names == ["clean", "aa", "worst"] and set(loaded.evaluated) == {"aa", "worst"}


def test_a_records_file_holding_a_pickle_is_refused_unread(tmp_path) -> None:
    arrays = {**make_records().arrays(), "note": np.array([{"made": "by hand"}], dtype=object)}
    _write(tmp_path / "r.npz", arrays)  # np.savez pickles object arrays
    message = _load_error(tmp_path / "r.npz")
    assert message.startswith(f"{tmp_path / 'r.npz'}: not a readable records.npz (") and "allow_pickle" in message
