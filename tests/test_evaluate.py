"""Specification of the evaluation: per-sample random starts, the attack cascade, the records contract.

A tiny CNN (absld's ``tiny_cnn``) is trained for a second or two with plain CE on the fixtures'
learnable synthetic images, so that clean accuracy is high and robust accuracy mid-range: the
attacks have something to break, and something to leave.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner
from torch import Tensor, nn

from absld.attacks import AttackError, ce_loss, pgd
from absld.evaluate.cascade import CLEAN, evaluate_model, protocol, record_name, start_noise, summarize_records
from absld.evaluate.records import Records
from absld.params import EvaluateConfig, RuntimeConfig, read_yaml
from absld.vocab import WORST
from absld.models import build_model
from absld.runtime import Runtime, setup
from pipeline.cli import main
from tests.conftest import profile_params_text
from tests.fixtures import synthetic_images

EPS = 8 / 255
N_CLASSES = 10
IMAGE_SHAPE = (3, 16, 16)
TEST_PER_CLASS = 16
ATTACKS_WITHOUT_AA = ["fgsm", "pgd", "cw"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread for this module: tiny models gain nothing from more, and on a shared CPU
    two spinning threads made AutoAttack 10-80x slower (oversubscription)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    """Replaces conftest's per-test two threads by the module's one (see ``_one_thread``)."""


@dataclass(frozen=True)
class Task:
    model: nn.Module  # trained tiny_cnn, eval mode
    images: np.ndarray  # (N, 3, 16, 16) uint8 test images
    labels: np.ndarray  # (N,) int64


@pytest.fixture(scope="module")
def task() -> Task:
    rng = np.random.default_rng(0)
    train_labels = rng.integers(0, N_CLASSES, 2000)
    train_images = torch.as_tensor(synthetic_images(train_labels, IMAGE_SHAPE, seed=1)).float() / 255
    test_labels = rng.permutation(np.repeat(np.arange(N_CLASSES), TEST_PER_CLASS))
    test_images = synthetic_images(test_labels, IMAGE_SHAPE, seed=2)
    torch.manual_seed(0)
    model = build_model("tiny_cnn", num_classes=N_CLASSES, in_channels=3)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    targets = torch.as_tensor(train_labels)
    for _ in range(150):
        index = torch.randint(0, len(targets), (128,))
        loss = F.cross_entropy(model(train_images[index]), targets[index])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return Task(model.eval().requires_grad_(False), test_images, test_labels.astype(np.int64))


@pytest.fixture(scope="module")
def rt() -> Runtime:
    return setup(RuntimeConfig(device="cpu"))


def config(**changes: object) -> EvaluateConfig:
    base = {"batch_size": 64, "eps": "8/255", "seed": 0, "attacks": ATTACKS_WITHOUT_AA,
            "pgd": {"step": "2/255", "steps": 20}, "cw": {"step": "2/255", "steps": 20},
            "aa": {"version": "custom", "attacks": ["apgd-ce"], "batch_size": 80}}
    return EvaluateConfig.model_validate({**base, **changes})


def run(task: Task, rt: Runtime, cfg: EvaluateConfig, **kwargs: object) -> Records:
    return evaluate_model(task.model, task.images, task.labels, rt, cfg, num_classes=N_CLASSES, **kwargs)


@pytest.fixture(scope="module")
def full_run(task: Task, rt: Runtime) -> Records:
    """Every attack on every clean-correct sample (fgsm, pgd, cw)."""
    return run(task, rt, config(cascade=False))


# ---------------------------------------------------------------- the noise keyword of pgd


def test_pgd_noise_gives_the_uniform_start_x_plus_eps_noise() -> None:
    x = torch.rand(4, *IMAGE_SHAPE)
    noise = torch.rand(4, *IMAGE_SHAPE) * 2 - 1
    model = build_model("tiny_cnn", num_classes=N_CLASSES).eval()
    start = pgd(model, x, ce_loss(torch.zeros(4, dtype=torch.long)), eps=EPS, step=0.0, steps=0,
                start="uniform", noise=noise)
    assert torch.allclose(start, torch.clamp(x + EPS * noise, 0, 1))


def test_pgd_noise_gives_the_gaussian_start_x_plus_std_noise_and_leaves_the_global_rng_alone() -> None:
    x = torch.rand(4, *IMAGE_SHAPE)
    noise = torch.randn(4, *IMAGE_SHAPE)
    model = build_model("tiny_cnn", num_classes=N_CLASSES).eval()
    rng_before = torch.get_rng_state()
    start = pgd(model, x, ce_loss(torch.zeros(4, dtype=torch.long)), eps=EPS, step=0.0, steps=0,
                start="gaussian", gauss_std=0.01, noise=noise)
    assert torch.equal(torch.get_rng_state(), rng_before)
    lower, upper = torch.clamp(x - EPS, min=0), torch.clamp(x + EPS, max=1)
    assert torch.allclose(start, torch.clamp(x + 0.01 * noise, lower, upper))


def test_pgd_with_the_same_noise_ignores_the_global_seed(task: Task) -> None:
    x = torch.as_tensor(task.images[:32]).float() / 255
    y = torch.as_tensor(task.labels[:32])
    noise = torch.rand_like(x) * 2 - 1
    outputs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        outputs.append(pgd(task.model, x, ce_loss(y), eps=EPS, step=2 / 255, steps=5, start="uniform",
                           noise=noise))
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize(("start", "shape"), [("none", (4, *IMAGE_SHAPE)), ("uniform", (3, *IMAGE_SHAPE))])
def test_pgd_rejects_noise_it_cannot_use(start: str, shape: tuple[int, ...]) -> None:
    model = build_model("tiny_cnn", num_classes=N_CLASSES).eval()
    with pytest.raises(AttackError, match="noise"):
        pgd(model, torch.rand(4, *IMAGE_SHAPE), ce_loss(torch.zeros(4, dtype=torch.long)), eps=EPS,
            step=EPS, steps=1, start=start, noise=torch.zeros(shape))  # type: ignore[arg-type]


def test_start_noise_is_a_pure_function_of_seed_and_attack() -> None:
    shape = (5, *IMAGE_SHAPE)
    uniform = start_noise("uniform", shape, seed=0, name="pgd")
    assert torch.equal(uniform, start_noise("uniform", shape, seed=0, name="pgd"))
    assert not torch.equal(uniform, start_noise("uniform", shape, seed=1, name="pgd"))
    assert not torch.equal(uniform, start_noise("uniform", shape, seed=0, name="cw"))
    assert uniform.min() >= -1 and uniform.max() <= 1


# ---------------------------------------------------------------- attacks and records


def test_every_attack_stays_in_the_eps_ball_and_the_unit_box(task: Task, rt: Runtime) -> None:
    seen: dict[str, int] = {}

    def check(name: str, positions: Tensor, x: Tensor, x_adv: Tensor) -> None:
        assert x_adv.shape == x.shape and positions.shape == (x.shape[0],)
        assert (x_adv - x).abs().max().item() <= EPS + 1e-6, name
        assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0, name
        seen[name] = seen.get(name, 0) + x.shape[0]

    records = run(task, rt, config(attacks=["fgsm", "pgd", "cw", "aa"]), on_adversarial=check)
    n_clean = int(records.correct["clean"].sum())
    assert seen == {"clean": len(task.labels), "fgsm": n_clean, "pgd": n_clean, "cw": n_clean, "aa": n_clean}


def test_records_have_one_column_per_attack_in_order_and_time_each(full_run: Records) -> None:
    assert list(full_run.correct) == ["clean", "fgsm", "pgd", "cw", "worst"]
    cfg = config()  # record_names(cfg) was removed: clean, each attack's record_name, worst
    assert list(full_run.correct) == [CLEAN, *(record_name(a, cfg) for a in cfg.attacks), WORST]
    assert set(full_run.seconds) == {"clean", "fgsm", "pgd", "cw"}
    assert all(t >= 0 for t in full_run.seconds.values())


def test_records_cover_the_first_n_test_images_in_test_order(task: Task, rt: Runtime) -> None:
    records = run(task, rt, config(n_samples=50, attacks=["fgsm"]))
    assert np.array_equal(records.index, np.arange(50))
    assert np.array_equal(records.y, task.labels[:50])


def test_robust_accuracy_never_exceeds_clean_accuracy_sample_wise(full_run: Records) -> None:
    clean = full_run.correct["clean"]
    assert 0.8 < clean.mean(), "the tiny task should be learnt"
    for name, correct in full_run.correct.items():
        assert not np.any(correct & ~clean), name
        assert not np.any(full_run.correct["worst"] & ~correct), name


def test_pgd20_is_at_least_as_strong_as_fgsm(full_run: Records) -> None:
    fgsm, pgd = full_run.correct["fgsm"].mean(), full_run.correct["pgd"].mean()
    assert 0.1 < pgd < full_run.correct["clean"].mean(), "robust accuracy should sit mid-range"
    assert pgd <= fgsm + 0.01


def test_cascade_gives_the_same_worst_case_and_running_intersections(task: Task, rt: Runtime,
                                                                     full_run: Records) -> None:
    cascade = run(task, rt, config(cascade=True))
    assert np.array_equal(cascade.correct["worst"], full_run.correct["worst"])
    running = full_run.correct["clean"].copy()
    for name in ("fgsm", "pgd", "cw"):
        running &= full_run.correct[name]
        assert np.array_equal(cascade.correct[name], running), name


def test_a_sample_start_does_not_depend_on_its_batch(task: Task, rt: Runtime, full_run: Records) -> None:
    other_batches = run(task, rt, config(batch_size=23))
    for name, correct in full_run.correct.items():
        assert np.array_equal(other_batches.correct[name], correct), name


def test_same_seed_gives_identical_records(task: Task, rt: Runtime) -> None:
    cfg = config(attacks=["fgsm", "pgd", "cw", "aa"], n_samples=80)
    torch.manual_seed(1)
    first = run(task, rt, cfg)
    torch.manual_seed(2)  # only evaluate.seed may matter
    second = run(task, rt, cfg)
    assert first.correct.keys() == second.correct.keys()
    for name in first.correct:
        assert np.array_equal(first.correct[name], second.correct[name]), name


def test_records_arrays_follow_the_contract(full_run: Records) -> None:
    arrays = full_run.arrays()
    assert list(arrays) == ["index", "y", "correct_clean", "correct_fgsm", "correct_pgd", "correct_cw",
                            "correct_worst", "eps", "protocol"]
    assert json.loads(str(arrays["protocol"])) == full_run.protocol
    assert arrays["protocol"].dtype.kind == "U"  # a plain string: loads with allow_pickle=False
    assert arrays["index"].dtype == np.int64 and arrays["y"].dtype == np.int64
    assert all(arrays[k].dtype == np.bool_ for k in arrays if k.startswith("correct_"))
    assert arrays["eps"].shape == () and float(arrays["eps"]) == pytest.approx(EPS)


def test_summaries_give_avg_worst_nsd_and_class_accuracies(full_run: Records) -> None:
    summaries = summarize_records(full_run, N_CLASSES)
    pgd = summaries["pgd"]
    assert pgd["avg"] == pytest.approx(full_run.correct["pgd"].mean())
    assert pgd["worst"] == pytest.approx(min(pgd["class_acc"])) and len(pgd["class_acc"]) == N_CLASSES
    assert pgd["ddof"] == 0


def test_model_in_training_mode_is_rejected(task: Task, rt: Runtime) -> None:
    model = build_model("tiny_cnn", num_classes=N_CLASSES).train()
    with pytest.raises(ValueError, match="eval mode"):
        evaluate_model(model, task.images, task.labels, rt, config(), num_classes=N_CLASSES)


def test_model_with_the_wrong_number_of_classes_is_rejected(task: Task, rt: Runtime) -> None:
    model = build_model("tiny_cnn", num_classes=N_CLASSES + 1).eval()
    with pytest.raises(ValueError, match=f"{N_CLASSES} classes"):
        evaluate_model(model, task.images, task.labels, rt, config(), num_classes=N_CLASSES)


# ---------------------------------------------------------------- the stage


def invoke(*args: str):  # noqa: ANN201 - click's Result
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def evaluated_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A scratch project on the tiny profile: prepare, teacher, evaluate --model teacher."""
    root = tmp_path_factory.mktemp("project")
    (root / "params.yaml").write_text(profile_params_text("tiny"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert invoke("prepare").exit_code == 0
        assert invoke("teacher").exit_code == 0
        result = invoke("evaluate", "--model", "teacher")
        assert result.exit_code == 0, result.output
        yield root


def test_evaluate_stage_writes_records_as_the_contract(evaluated_project: Path) -> None:
    params = read_yaml(evaluated_project / "params.yaml")
    n = params["evaluate"]["n_samples"]
    with np.load(evaluated_project / "results/eval/teacher/records.npz") as records:
        names = ["clean", "fgsm", "pgd", "cw", "aa", "worst"]
        assert sorted(records.files) == sorted(["index", "y", "eps", "protocol", *(f"correct_{a}" for a in names)])
        assert records["index"].dtype.kind == "i" and np.array_equal(records["index"], np.arange(n))
        test_labels = np.load(evaluated_project / "data/synthetic/test_labels.npy")
        assert np.array_equal(records["y"], test_labels[:n])
        for name in names:
            assert records[f"correct_{name}"].dtype == np.bool_ and records[f"correct_{name}"].shape == (n,)
        assert records["eps"].shape == () and float(records["eps"]) == pytest.approx(EPS)
        worst = records["correct_worst"]
        assert all(not np.any(worst & ~records[f"correct_{a}"]) for a in names)


def test_evaluating_again_writes_byte_identical_outputs(evaluated_project: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # DVC hashes results/eval and plots/eval: the same model and params must give the same bytes
    outputs = [evaluated_project / "results/eval/teacher", evaluated_project / "plots/eval/teacher"]

    def contents() -> dict[str, bytes]:
        return {str(p.relative_to(evaluated_project)): p.read_bytes()
                for root in outputs for p in sorted(root.rglob("*")) if p.is_file()}

    before = contents()
    monkeypatch.chdir(evaluated_project)
    assert invoke("evaluate", "--model", "teacher").exit_code == 0
    after = contents()
    assert before.keys() == after.keys() and len(before) >= 3  # records.npz, metrics.json, classwise.png
    assert [name for name in before if before[name] != after[name]] == []


def test_evaluate_stage_writes_metrics_and_its_figure(evaluated_project: Path) -> None:
    metrics = json.loads((evaluated_project / "results/eval/teacher/metrics.json").read_text())
    assert metrics["n"] == 40 and metrics["cascade"] is False and metrics["eps"] == pytest.approx(EPS)
    assert "seconds" not in metrics  # DVC-tracked: no wall-clock times (they differ on every run)
    times = json.loads((evaluated_project / "logs/eval/teacher.json").read_text())
    assert set(times["seconds"]) == {"clean", "fgsm", "pgd", "cw", "aa"}
    assert {"avg", "worst", "nsd", "class_acc"} <= set(metrics["pgd"])
    plots = evaluated_project / "plots/eval/teacher"
    # this project's AutoAttack is APGD-CE alone: AA*, keyed aa_star in every file DVC shows
    assert metrics["protocol"]["aa"]["standard"] is False
    assert "aa" not in metrics and "aa_star" in metrics
    # the figure only: the class accuracies are in metrics.json, and `dvc plots` draws every model's
    # from plots/analyze/classwise/ (per-model JSONs there were never drawn)
    assert [p.name for p in plots.iterdir()] == ["classwise.png"]
    assert (plots / "classwise.png").stat().st_size > 0


def test_bad_model_id_is_a_one_line_usage_error() -> None:
    result = CliRunner().invoke(main, ["evaluate", "--model", "absld/0"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "'teacher'" in error[0] and "<method>/seed<S>" in error[0] and "absld" in error[0]


def test_missing_checkpoint_names_the_stage_to_run(evaluated_project: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(evaluated_project)
    result = invoke("evaluate", "--model", "rslad/seed0")
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "models/students/rslad/seed0.pt is missing" in result.output
    assert "absld distill --method rslad --seed 0" in result.output


@dataclass(frozen=True)
class _CountingRuntime(Runtime):
    """A CPU runtime whose autocast is bf16 and counts how often it is entered."""

    entered: list = field(default_factory=list)

    def autocast(self):  # type: ignore[override]
        self.entered.append(1)
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)


def test_evaluation_is_float32_unless_evaluate_amp(task: Task, rt: Runtime) -> None:
    """evaluate.amp false (the default, as the reference): no forward pass under autocast even when
    the runtime has it; true: clean, FGSM, PGD and CW under it, AutoAttack never. The protocol
    records the precision actually used."""
    attacks = ["fgsm", "pgd", "cw", "aa"]
    assert EvaluateConfig().amp is False
    counting = _CountingRuntime(device=rt.device, amp=True, channels_last=False, progress=False)
    fp32 = run(task, counting, config(attacks=attacks, n_samples=20))
    assert counting.entered == [] and fp32.protocol["precision"] == "float32"
    assert fp32.protocol == protocol(config(attacks=attacks, n_samples=20))

    aa_only = _CountingRuntime(device=rt.device, amp=True, channels_last=False, progress=False)
    run(task, aa_only, config(attacks=["aa"], n_samples=20, amp=True))
    with_amp = _CountingRuntime(device=rt.device, amp=True, channels_last=False, progress=False)
    bf16 = run(task, with_amp, config(attacks=attacks, n_samples=20, amp=True))
    assert len(with_amp.entered) > len(aa_only.entered) > 0  # clean only for aa_only
    assert bf16.protocol["precision"] == "bf16-autocast"
    no_autocast = run(task, rt, config(attacks=["pgd"], n_samples=20, amp=True))
    assert no_autocast.protocol["precision"] == "float32"  # the runtime has none (CPU, runtime.amp)


def test_protocol_names_every_setting_that_changes_a_verdict() -> None:
    base = protocol(config(attacks=["fgsm", "pgd", "cw", "aa"]))
    assert base["aa"]["standard"] is False and base["aa"]["backend"] == "pyautoattack"
    assert base["aa"]["package_version"]  # the installed pyautoattack's version
    assert base["pgd"] == {"step": pytest.approx(2 / 255), "steps": 20}
    assert base["cw"]["kappa"] == 50.0 and base["fgsm"]["gauss_std"] == 0.001
    assert protocol(EvaluateConfig())["aa"]["standard"] is True
    for change in ({"cascade": True}, {"seed": 1}, {"pgd": {"steps": 10}}, {"cw": {"kappa": 0.0}},
                   {"aa": {"backend": "torchattacks", "version": "standard"}}):
        assert protocol(config(attacks=["fgsm", "pgd", "cw", "aa"], **change)) != base, change


def test_worst_is_the_pointwise_and_of_every_column(full_run: Records) -> None:
    """correct_worst[i] = clean[i] and robust to every attack (not the column with the lowest Avg):
    in this run different attacks break different samples, so the two differ."""
    columns = [c for name, c in full_run.correct.items() if name != "worst"]
    assert np.array_equal(full_run.correct["worst"], np.logical_and.reduce(columns))
    lowest = min(full_run.correct[name].mean() for name in ("fgsm", "pgd", "cw"))
    assert full_run.correct["worst"].mean() < lowest  # the samples broken by one attack only count


def test_the_configured_settings_reach_the_attacks_that_fill_each_column(task: Task, rt: Runtime,
                                                                         monkeypatch) -> None:
    """evaluate.eps, pgd.steps/step, cw.kappa/steps/step, fgsm.gauss_std and aa.* arrive in the calls
    of the PGD engine (directly, and through absld.attacks.fgsm and cw_inf), the CW loss and
    AutoAttack's reference code."""
    import importlib

    aa_module = importlib.import_module("absld.evaluate.autoattack")  # the module, not the function
    evaluate_module = importlib.import_module("absld.evaluate.cascade")

    pgd_calls: list[dict] = []
    kappas: list[float] = []
    aa_calls: list[dict] = []
    fgsm_module = importlib.import_module("absld.attacks.fgsm")
    cw_module = importlib.import_module("absld.attacks.cw")
    real_pgd, real_cw = evaluate_module.pgd, cw_module.cw_margin_loss

    def spy_pgd(model, x, loss_fn, **kwargs):
        pgd_calls.append(kwargs)
        return real_pgd(model, x, loss_fn, **kwargs)

    def spy_cw(y, kappa):
        kappas.append(kappa)
        return real_cw(y, kappa)

    def spy_aa(package, model, x, y, run, state_path):
        aa_calls.append(vars(run))
        return x

    for module in (evaluate_module, fgsm_module, cw_module):  # PGD, and FGSM and CW built on it
        monkeypatch.setattr(module, "pgd", spy_pgd)
    monkeypatch.setattr(cw_module, "cw_margin_loss", spy_cw)
    monkeypatch.setattr(aa_module, "_run_pyautoattack", spy_aa)
    cfg = config(attacks=["fgsm", "pgd", "cw", "aa"], n_samples=20, eps="6/255", seed=3,
                 fgsm={"gauss_std": 0.002}, pgd={"step": "1/255", "steps": 7},
                 cw={"step": "3/255", "steps": 4, "kappa": 12.5},
                 aa={"version": "custom", "attacks": ["apgd-ce", "apgd-t"], "batch_size": 9})
    records = run(task, rt, cfg)
    by_steps = {call["steps"]: call for call in pgd_calls}
    fgsm, pgd, cw4 = by_steps[1], by_steps[7], by_steps[4]
    assert fgsm["eps"] == fgsm["step"] == pytest.approx(6 / 255) and fgsm["start"] == "gaussian"
    assert fgsm["gauss_std"] == 0.002
    assert pgd["eps"] == pytest.approx(6 / 255) and pgd["step"] == pytest.approx(1 / 255) and pgd["start"] == "uniform"
    assert cw4["eps"] == pytest.approx(6 / 255) and cw4["step"] == pytest.approx(3 / 255)
    assert set(kappas) == {12.5}
    assert aa_calls and all(c["eps"] == pytest.approx(6 / 255) and c["norm"] == "Linf" and c["seed"] == 3
                            and c["version"] == "custom" and list(c["attacks"]) == ["apgd-ce", "apgd-t"]
                            and c["batch_size"] == 9 for c in aa_calls)
    assert "pgd" in records.correct and records.eps == pytest.approx(6 / 255)


def test_metrics_json_nsd_follows_analyze_nsd_ddof(evaluated_project: Path, monkeypatch) -> None:
    """One NSD definition: metrics.json uses analyze.nsd_ddof (and says which), like the analysis."""
    from absld.fairness import summarize

    monkeypatch.chdir(evaluated_project)
    params = read_yaml(evaluated_project / "params.yaml")
    original = yaml.safe_dump(params)
    params["analyze"]["nsd_ddof"] = 1
    (evaluated_project / "params.yaml").write_text(yaml.safe_dump(params))
    try:
        assert invoke("evaluate", "--model", "teacher").exit_code == 0
        metrics = json.loads((evaluated_project / "results/eval/teacher/metrics.json").read_text())
        with np.load(evaluated_project / "results/eval/teacher/records.npz") as records:
            expected = summarize(records["correct_pgd"], records["y"], 10, 1)["nsd"]
        assert metrics["nsd_ddof"] == 1 and metrics["pgd"]["nsd"] == pytest.approx(expected)
    finally:
        (evaluated_project / "params.yaml").write_text(original)
        assert invoke("evaluate", "--model", "teacher").exit_code == 0


def test_autoattack_on_a_subset_marks_the_columns_it_covers(task: Task, rt: Runtime, full_run: Records) -> None:
    """evaluate.aa.n_samples = 30 of 160: AA attacks only the first 30; evaluated_aa/worst say so;
    on the subset worst is the AND of every column, elsewhere it is the worst of the other attacks."""
    records = run(task, rt, config(attacks=["fgsm", "pgd", "cw", "aa"],
                                   aa={"version": "custom", "attacks": ["apgd-ce"], "batch_size": 80, "n_samples": 30}))
    n = len(task.labels)
    mask = np.arange(n) < 30
    assert np.array_equal(records.evaluated["aa"], mask) and np.array_equal(records.evaluated["worst"], mask)
    assert not records.correct["aa"][~mask].any()
    others = np.logical_and.reduce([records.correct[c] for c in ("clean", "fgsm", "pgd", "cw")])
    assert np.array_equal(records.correct["worst"][mask], (others & records.correct["aa"])[mask])
    assert np.array_equal(records.correct["worst"][~mask], others[~mask])
    for name in ("clean", "fgsm", "pgd", "cw"):  # the other attacks still cover every sample
        assert np.array_equal(records.correct[name], full_run.correct[name]), name
    arrays = records.arrays()
    assert np.array_equal(arrays["evaluated_aa"], mask) and records.protocol["aa"]["n_samples"] == 30
    assert "evaluated_aa" not in full_run.arrays()  # no subset, no masks
    summaries = summarize_records(records, N_CLASSES)  # metrics.json, W&B: each column on its samples
    assert summaries["aa"]["avg"] == pytest.approx(records.correct["aa"][mask].mean())
    assert summaries["worst"]["avg"] == pytest.approx(records.correct["worst"][mask].mean())
    assert summaries["pgd"]["avg"] == pytest.approx(records.correct["pgd"].mean())


def test_the_selection_score_is_pgd_avg_plus_pgd_worst_not_clean(task: Task, rt: Runtime, full_run: Records) -> None:
    from absld.attacks.accuracy import class_accuracy
    from absld.fairness import class_accuracies

    def score(eps: float) -> dict[str, float]:  # the old fair_score(..., seed=0): class_accuracy's "select" stream
        acc = class_accuracy(task.model, task.images, task.labels, N_CLASSES, rt, eps=eps, step=eps / 4, steps=20,
                             batch_size=64, seed=0, stream="select")
        return {"score": acc.score, "pgd_avg": acc.robust_total, "pgd_worst": float(acc.robust.min())}

    clean = full_run.correct["clean"]
    under_attack = score(EPS)
    assert under_attack["pgd_avg"] < clean.mean()  # the attack is really applied
    assert under_attack["score"] == pytest.approx(under_attack["pgd_avg"] + under_attack["pgd_worst"])
    assert score(EPS) == under_attack  # the same starts on every call
    no_budget = score(1e-12)
    assert no_budget["pgd_avg"] == pytest.approx(clean.mean())
    assert no_budget["pgd_worst"] == pytest.approx(class_accuracies(clean, task.labels, N_CLASSES).min())


class _AutocastSpy(nn.Module):
    """Wraps a model and records whether CPU autocast was on at each forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.autocast_on: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.autocast_on.append(torch.is_autocast_enabled("cpu"))
        return self.model(x).float()


def test_evaluation_runs_in_fp32_unless_evaluate_amp_asks_for_autocast(task: Task) -> None:
    class Bf16Runtime(Runtime):
        def autocast(self):  # noqa: ANN202
            return torch.autocast("cpu", dtype=torch.bfloat16)

    bf16 = Bf16Runtime(device=torch.device("cpu"), amp=True, channels_last=False, progress=False)
    for amp in (False, True):
        spy = _AutocastSpy(task.model).eval()
        evaluate_model(spy, task.images[:32], task.labels[:32], bf16, config(amp=amp, attacks=["fgsm", "pgd"]),
                       num_classes=N_CLASSES)
        # amp off: no forward pass under autocast; on: the attacks' passes are (the model check is not)
        assert spy.autocast_on and (True in spy.autocast_on) == amp


# ---------------------------------------------------------------- resuming a killed evaluation
def counter(counts: dict[str, int]):
    """A hook that counts the samples attacked per record."""

    def hook(name: str, positions: Tensor, x: Tensor, x_adv: Tensor) -> None:
        counts[name] = counts.get(name, 0) + positions.numel()

    return hook


class Killed(Exception):
    """Stands for a SIGKILL: raised from the adversarial hook, it ends the evaluation mid-attack."""


def kill_at(record: str, batch: int):
    """A hook that lets ``batch`` batches of ``record`` finish and raises in the next one."""
    seen = {"n": 0}

    def hook(name: str, positions: Tensor, x: Tensor, x_adv: Tensor) -> None:
        if name == record:
            if seen["n"] == batch:
                raise Killed(f"{record} batch {batch}")
            seen["n"] += 1

    return hook


@pytest.mark.parametrize("record, batch", [("pgd", 1), ("aa", 1), ("cw", 0)])
def test_a_killed_evaluation_resumes_at_its_batch_and_ends_with_identical_records(task: Task, rt: Runtime,
                                                                                  tmp_path: Path, record, batch) -> None:
    """Killed within an attack (PGD, AutoAttack, CW), then run again with the same progress file:
    the finished attacks and batches are not run again and the records are those of one run."""
    from absld.evaluate.progress import EvalProgress

    cfg = config(attacks=["fgsm", "pgd", "aa", "cw"], batch_size=32, cascade=True,
                 aa={"version": "custom", "attacks": ["apgd-ce"], "batch_size": 16, "n_samples": 64})
    counts: dict[str, int] = {}
    whole = run(task, rt, cfg, on_adversarial=counter(counts))
    path, notes = tmp_path / "progress.npz", []
    with pytest.raises(Killed):
        run(task, rt, cfg, progress=EvalProgress(path, "key", every_seconds=0), on_adversarial=kill_at(record, batch))
    assert path.is_file()
    attacked: dict[str, int] = {}
    progress = EvalProgress(path, "key", every_seconds=0, notify=notes.append)
    progress.load()
    resumed = run(task, rt, cfg, progress=progress, on_adversarial=counter(attacked))
    assert notes and notes[0].startswith(f"resuming the evaluation from {path}")
    order = ["clean", "fgsm", "pgd", "aa", "cw"]
    assert all(name not in attacked for name in order[:order.index(record)])  # finished columns not rerun
    size = {"pgd": 32, "aa": 16, "cw": 32}[record]
    assert attacked[record] == counts[record] - batch * size  # resumed after its finished batches
    assert all(attacked[name] == counts[name] for name in order[order.index(record) + 1:] if name in counts)
    assert {k: v.tolist() for k, v in resumed.arrays().items()} == {k: v.tolist() for k, v in whole.arrays().items()}


def test_progress_of_other_settings_or_an_unreadable_file_is_ignored_with_a_note(task: Task, rt: Runtime,
                                                                                   tmp_path: Path) -> None:
    from absld.evaluate.progress import EvalProgress

    cfg = config(attacks=["fgsm"])
    path = tmp_path / "progress.npz"
    with pytest.raises(Killed):
        run(task, rt, cfg, progress=EvalProgress(path, "old", every_seconds=0), on_adversarial=kill_at("fgsm", 1))
    notes: list[str] = []
    other = EvalProgress(path, "new", every_seconds=0, notify=notes.append)
    assert other.load() == {} and "belongs to another model, data, code or settings" in notes[-1]
    path.write_bytes(b"half a file")
    assert other.load() == {} and notes[-1].startswith(f"cannot read {path} (") and notes[-1].endswith("evaluating afresh")
    assert run(task, rt, cfg, progress=other).arrays()["correct_fgsm"].tolist() == \
        run(task, rt, cfg).arrays()["correct_fgsm"].tolist()
