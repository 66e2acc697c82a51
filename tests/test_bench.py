"""`absld bench`: the figures it promises, in the layout it promises, from real timed steps."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main


@pytest.mark.slow
def test_bench_times_ours_and_the_reference_loop_and_writes_bench_json(tmp_path, monkeypatch):
    from tests.conftest import REPO

    import absld.bench

    monkeypatch.chdir(REPO)  # the projection reads the paper profile from conf/
    # the projection's own timings (the paper's AutoAttack on two models: minutes) made up here;
    # teacher_rows and attack_speeds are tested on their own
    monkeypatch.setattr(absld.bench, "projection_measurements", lambda *a: {
        "teachers": {"teacher": {"img_s": 10.0}, "teacher_clean": {"img_s": 100.0}},
        "projection_attacks": {a: {"img_s": 50.0} for a in ("fgsm", "pgd", "cw", "aa")},
        "teacher_attacks": {a: {"img_s": 5.0} for a in ("fgsm", "pgd", "cw", "aa")}})
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "--profile", "tiny", "--method", "absld", "--method", "trades",
                                       "--student", "tiny_cnn", "--teacher", "tiny_cnn", "--batch-size", "16",
                                       "--warmup", "1", "--pairs", "3", "--repeats", "2", "--output", str(out)])
    assert result.exit_code == 0, result.output
    bench = json.loads(out.read_text())
    absld = bench["train_step"]["absld"]
    assert absld["ours_img_s"] > 0 and absld["ours_fp32_img_s"] > 0 and absld["reference_img_s"] > 0
    for key in ("ratio", "ratio_fp32"):  # the median of the per-round ratios, inside its quartiles
        lo, hi = absld[f"{key}_iqr"]
        assert 0 < lo <= absld[key] <= hi
    assert absld["pairs"] == 3
    assert set(absld["anatomy"]) == {"teacher", "attack", "loss", "backward", "optimizer"}
    assert sum(p["share"] for p in absld["anatomy"].values()) == pytest.approx(1.0)
    assert absld["flops_per_image"] > 0 and absld["achieved_tflop_s"] > 0 and 0 < absld["share_of_peak"]
    assert absld["flops_per_image"] == pytest.approx(sum(absld["flops_per_image_phase"].values()))
    trades = bench["train_step"]["trades"]  # no reference loop for TRADES: timed, not compared
    assert trades["ours_img_s"] > 0 and trades["reference_img_s"] is None and trades["ratio"] is None
    assert set(bench["attacks"]) == {"fgsm", "pgd", "cw", "aa"} and all(a["img_s"] > 0 for a in bench["attacks"].values())
    assert bench["settings"] == {
        "student": "tiny_cnn", "teacher": "tiny_cnn", "batch_size": 16, "warmup": 1, "repeats": 2, "pairs": 3,
        "reference_workers": 2, "dataset": "synthetic", "attack_steps": 2, "profile": "tiny",
        "fast_path": "bf16 autocast + channels_last (runtime.cpu_bf16)"}
    assert bench["peaks"]["fast_tflop_s"] > 0 and bench["peaks"]["fp32_tflop_s"] > 0
    projection = bench["projection"]
    rows = {(r["kind"], r["name"]): r for r in projection["rows"]}
    assert rows["train", "absld"]["hours"] > 0 and rows["train", "teacher_clean"]["hours"] > 0
    assert rows["evaluate", "aa teacher"]["hours"] == pytest.approx(10_000 / 5.0 / 3600)
    assert rows["train", "absld"]["hours"] == pytest.approx(49_000 * 300 / absld["ours_fp32_img_s"] / 3600)  # CPU: fp32
    assert "train rslad" in projection["not_measured"]  # not benched in this run
    assert projection["assumptions"]["device"] == bench["device"] and projection["assumptions"]["batch_size"] == 16
    assert not projection["assumptions"]["models_match_paper"]
    assert "ratio" in result.output and "IQR" in result.output and "anatomy" in result.output
    assert "projection" in result.output and "total" in result.output


def test_interleaved_rounds_alternate_their_order_and_time_each_step():
    import absld.bench as bench

    calls: list[str] = []
    steps = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = bench.interleaved_times(steps, warmup=1, rounds=3, device=torch.device("cpu"))
    assert "".join(calls) == "abc" + "abc" + "cba" + "abc"  # warm-up, then A B C / C B A / A B C
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_the_ratio_is_the_median_of_per_round_ratios_not_a_ratio_of_medians():
    import absld.bench as bench

    ours = [1.0, 2.0, 4.0, 1.0, 3.0]
    reference = [2.0, 2.0, 4.0, 3.0, 3.0]  # per round: 2, 1, 1, 3, 1
    ratios = bench.pair_ratios(ours, reference)
    assert ratios == [2.0, 1.0, 1.0, 3.0, 1.0]
    median, iqr = bench.median_and_iqr(ratios)
    assert median == 1.0 and iqr == [1.0, 2.0]  # the ratio of the medians would be 3 / 2
    assert bench.median_and_iqr([1.5]) == (1.5, [1.5, 1.5])


def test_bench_refuses_fewer_than_three_pairs(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--pairs", "2", "--output", str(tmp_path / "b.json")])
    assert result.exit_code == 2 and "--pairs" in result.output and "2" in result.output
    assert not (tmp_path / "b.json").exists()


def test_bench_help_explains_every_option():
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0
    for option in ("--profile", "--method", "--student", "--teacher", "--batch-size", "--warmup", "--pairs",
                   "--repeats", "--reference-workers", "--projection", "--output"):
        line = result.output[result.output.index(option):].split("\n")[0]
        assert len(line.split(option, 1)[1].strip()) > 10 or option == "--projection", line


def test_images_per_second_is_the_batch_over_the_median_of_the_timed_calls(monkeypatch):
    import absld.bench as bench

    times = iter([9.0, 9.0, 1.0, 4.0, 2.0])  # two warm-up calls (ignored), then 1, 4, 2: median 2
    monkeypatch.setattr(bench, "_timer", lambda device: lambda fn: next(times))
    assert bench.images_per_second(lambda: None, 64, warmup=2, repeats=3, device=None) == 32.0


def test_bench_with_an_unknown_profile_is_one_line(tmp_path, monkeypatch):
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(main, ["bench", "--profile", "quik", "--output", str(tmp_path / "b.json")])
    assert result.exit_code == 1 and "profile 'quik' is not one of" in result.output
    assert result.output.count("\n") == 1 and not (tmp_path / "b.json").exists()


def test_teacher_rows_time_the_teachers_recipes_on_their_architectures():
    from absld.bench import BenchSettings, fast_runtime, teacher_rows
    from absld.params import load_profile
    from absld.runtime import setup
    from tests.conftest import REPO

    params = load_profile("tiny", conf=REPO / "conf")
    rows = teacher_rows(params, BenchSettings("tiny_cnn", "tiny_cnn", 8, warmup=0, repeats=1), setup(fast_runtime(params.runtime)))
    assert rows["teacher"]["arch"] == params.teacher.model.arch and rows["teacher"]["method"] == params.teacher.method
    assert rows["teacher_clean"]["method"] == "natural" and all(r["img_s"] > 0 for r in rows.values())
