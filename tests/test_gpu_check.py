"""`absld gpu-check`: its JSON and table from the CPU smoke run, its refusal without CUDA, its time budgets."""

from __future__ import annotations

import json
import time

import pytest
import torch
from click.testing import CliRunner

import absld.gpu_check as gpu_check
from pipeline.cli import main
from tests.conftest import REPO


def invoke(args: list[str]):
    return CliRunner().invoke(main, ["gpu-check", *args])


@pytest.mark.slow  # about 20 s on two quiet cores (the sharing part starts three worker processes)
def test_the_cpu_smoke_run_writes_every_part_and_prints_the_table(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the profiles are conf/profile/*.yaml of the project
    out = tmp_path / "gpu.json"
    result = invoke(["--cpu-smoke", "--output", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert list(report["parts"]) == list(gpu_check.PARTS) and report["cpu_smoke"] is True
    for name in gpu_check.CUDA_ONLY:
        assert report["parts"][name]["status"] == "skipped" and report["parts"][name]["reason"] == "needs CUDA"
    for name in ("bench", "sharing", "precision"):
        assert report["parts"][name]["status"] == "ok", report["parts"][name]
        assert report["parts"][name]["how"] == gpu_check.HOW[name]
    bench = report["parts"]["bench"]["result"]
    assert set(bench["bench"]["train_step"]) == {"absld", "trades"}  # run_bench's result, as it is
    steps = [r for r in bench["rows"] if r["kind"] == "train_step"]  # (the bench reports its matmul peaks first)
    assert [r["name"] for r in steps] == ["absld", "trades"]
    assert bench["bench"]["train_step"]["absld"] == steps[0]["row"]
    sharing = report["parts"]["sharing"]["result"]["runs"]
    assert set(sharing) == {"1", "2"} and len(sharing["2"]["per_process_img_s"]) == 2
    assert all(run["aggregate_img_s"] == pytest.approx(run["images"] / run["span_s"]) for run in sharing.values())
    assert sharing["2"]["images"] == 2 * sharing["1"]["images"] > 0
    precision = report["parts"]["precision"]["result"]
    assert set(precision["attacks"]) == {"pgd@8/255", "cw@8/255"}
    for row in precision["attacks"].values():
        assert 0 <= row["fp32"] <= 1 and 0 <= row["bf16"] <= 1
        assert row["gap_points"] == pytest.approx(100 * (row["bf16"] - row["fp32"]))
    soft = precision["soft_labels"]["tiny_cnn"]
    assert soft["tau"] == 0.5 and soft["kl_mean"] >= 0 and 0 < soft["max_abs_prob_diff"] < 0.1
    lines = result.output.splitlines()
    assert any(line.startswith("matmul") and "skipped" in line and "(needs CUDA)" in line for line in lines)
    assert any(line.startswith("bench") and "ours_img_s" in line for line in lines)
    assert any("2 processes:" in line and "img/s in all" in line for line in lines)
    assert any("pgd@8/255: fp32" in line for line in lines) and lines[-1] == f"-> {out}"


def test_without_cuda_it_stops_with_one_line_saying_it_needs_a_gpu(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = invoke(["--part", "matmul", "--output", str(tmp_path / "gpu.json")])
    assert result.exit_code == 1 and "needs a CUDA GPU" in result.output and "--cpu-smoke" in result.output
    assert result.output.count("\n") == 1 and not (tmp_path / "gpu.json").exists()


def test_a_budget_of_zero_cuts_every_part_before_it_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "gpu.json"
    result = invoke(["--cpu-smoke", "--budget", "all=0", "--output", str(out)])
    assert result.exit_code == 0, result.output
    parts = json.loads(out.read_text())["parts"]
    assert {name: p["status"] for name, p in parts.items()} == {
        "matmul": "skipped", "bench": "cut", "busy": "skipped", "graph": "skipped", "sharing": "cut", "precision": "cut"}
    assert all(p["seconds"] < 1 and p["result"] == {} for name, p in parts.items())
    assert all(parts[name]["reason"] == "needs CUDA" for name in gpu_check.CUDA_ONLY)
    assert "cut: budget of 0 s reached" in result.output


def test_a_part_that_overruns_its_budget_is_cut_and_keeps_what_it_measured(monkeypatch):
    def slow_part(ctx, sink, budget):
        sink["first"] = 1.0
        for _ in range(500):  # 5 s, never checking its budget: the alarm must stop it
            time.sleep(0.01)

    def failing_part(ctx, sink, budget):
        sink["half"] = 2.0
        raise ValueError("boom")

    monkeypatch.setitem(gpu_check.PART_FUNCTIONS, "bench", slow_part)
    monkeypatch.setitem(gpu_check.PART_FUNCTIONS, "sharing", failing_part)
    monkeypatch.setattr(gpu_check, "check_params", lambda profile, cpu_smoke: None)
    began = time.monotonic()
    report = gpu_check.run_gpu_check(parts=["bench", "sharing"], budgets=["bench=0.3"], cpu_smoke=True)
    assert time.monotonic() - began < 5
    bench, sharing = report["parts"]["bench"], report["parts"]["sharing"]
    assert bench["status"] == "cut" and bench["result"] == {"first": 1.0} and 0.3 <= bench["seconds"] < 2
    assert "budget of 0.3 s reached" in bench["reason"]
    assert sharing["status"] == "error" and sharing["reason"] == "ValueError: boom" and sharing["result"] == {"half": 2.0}


def test_a_part_never_gets_more_than_what_is_left_of_the_total(monkeypatch):
    seen = []
    monkeypatch.setitem(gpu_check.PART_FUNCTIONS, "bench", lambda ctx, sink, budget: seen.append(budget.seconds))
    monkeypatch.setattr(gpu_check, "check_params", lambda profile, cpu_smoke: None)
    monkeypatch.setattr(gpu_check, "TOTAL_BUDGET_S", 7.0)
    gpu_check.run_gpu_check(parts=["bench"], budgets=["bench=100"], cpu_smoke=True)
    assert 6 < seen[0] <= 7.0


@pytest.mark.parametrize(("value", "message"), [
    ("bench=soon", "SECONDS must be a number >= 0, got 'soon'"),
    ("bench=-1", "SECONDS must be a number >= 0"),
    ("benchh=1", "PART one of matmul, bench, busy, graph, sharing, precision or all"),
    ("30", "must be PART=SECONDS"),
])
def test_a_bad_budget_is_one_line_naming_it(value, message, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    result = invoke(["--cpu-smoke", "--budget", value, "--output", str(tmp_path / "gpu.json")])
    assert result.exit_code == 1 and message in result.output and repr(value) in result.output
    assert result.output.count("\n") == 1


def test_budgets_override_the_defaults_per_part_or_for_all():
    assert gpu_check.parse_budgets(["graph=5"]) == {**gpu_check.BUDGETS_S, "graph": 5.0}
    assert gpu_check.parse_budgets(["all=2", "bench=9"]) == {**dict.fromkeys(gpu_check.PARTS, 2.0), "bench": 9.0}
    assert sum(gpu_check.BUDGETS_S.values()) <= gpu_check.TOTAL_BUDGET_S <= 8 * 60


def test_help_explains_every_option():
    result = invoke(["--help"])
    assert result.exit_code == 0
    for option in ("--part", "--budget", "--profile", "--cpu-smoke", "--output", "8 minutes", "results/gpu_check.json"):
        assert option in result.output


def test_busy_time_is_the_union_of_the_kernels_intervals():
    kernels = [(0.0, 10.0, "a"), (5.0, 12.0, "b"), (20.0, 25.0, "a"), (21.0, 22.0, "c")]  # overlaps count once
    assert gpu_check._union_length(kernels) == 17.0
    top = gpu_check._top_kernels(kernels, 2)
    assert [(k["name"], k["calls"]) for k in top] == [("a", 2), ("b", 1)] and top[0]["ms"] == pytest.approx(0.015)


def test_phases_are_the_times_between_consecutive_marks():
    class Event:  # a CUDA event's elapsed_time in ms, on the CPU
        def __init__(self, t: float) -> None:
            self.t = t

        def elapsed_time(self, other: "Event") -> float:
            return other.t - self.t

    marks = ["start", "data", "teacher", "attack", "loss", "backward", "optimizer"]
    step1 = [0, 1, 3, 13, 14, 20, 21]
    step2 = [30, 31, 34, 44, 46, 52, 53]
    events = [(m, Event(t)) for m, t in zip(marks, step1)] + [(m, Event(t)) for m, t in zip(marks, step2)]
    assert gpu_check._phases(events) == {"attack": 10, "backward": 6, "loss": 1.5, "optimizer": 1, "rest": 1,
                                         "teacher": 2.5}


def test_busy_time_counts_device_kernels_not_cpu_ops_nor_annotations():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(device, start, end, name="k", annotation=False, activity="kernel"):
        return SimpleNamespace(device_type=device, time_range=SimpleNamespace(start=start, end=end), name=name,
                               is_user_annotation=annotation, activity_type=activity)

    prof = SimpleNamespace(events=lambda: [
        event(DeviceType.CUDA, 0, 4), event(DeviceType.CPU, 0, 100, "aten::conv2d"),
        event(DeviceType.CUDA, 0, 50, "Optimizer.step#SGD.step", activity="gpu_user_annotation"),
        event(DeviceType.CUDA, 0, 50, "user range", annotation=True), event(DeviceType.CUDA, 10, 12, "memcpy")])
    assert gpu_check._device_intervals(prof) == [(0.0, 4.0, "k"), (10.0, 12.0, "memcpy")]


def test_the_soft_label_shift_is_the_kl_from_fp32_to_bf16_at_tau():
    from types import SimpleNamespace

    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)
    x = torch.randn(10, 6) * 3
    ctx = SimpleNamespace(device=torch.device("cpu"), scale=SimpleNamespace(precision_batch=3))
    shift = gpu_check._soft_label_shift(model, x, 0.5, ctx)
    with torch.no_grad():
        p32 = torch.softmax(model(x) / 0.5, dim=1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            p16 = torch.softmax(model(x).float() / 0.5, dim=1)
    kl = (p32 * (p32.log() - p16.log())).sum(dim=1)
    assert shift["kl_mean"] == pytest.approx(float(kl.mean()), rel=1e-2) and shift["kl_max"] == pytest.approx(float(kl.max()), rel=1e-2)
    assert shift["max_abs_prob_diff"] == pytest.approx(float((p32 - p16).abs().max()), rel=1e-2)
    assert shift["kl_mean"] > 0 and shift["tau"] == 0.5
