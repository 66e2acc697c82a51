"""`absld bench`: the figures it promises, in the layout it promises, from real timed steps."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from tests.conftest import profile_params_text


@pytest.mark.slow
def test_bench_times_ours_and_the_reference_loop_and_writes_bench_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(profile_params_text("tiny"))
    result = CliRunner().invoke(main, ["bench", "--method", "absld", "--method", "trades", "--student", "tiny_cnn",
                                       "--teacher", "tiny_cnn", "--batch-size", "16", "--warmup", "1",
                                       "--repeats", "2"])
    assert result.exit_code == 0, result.output
    bench = json.loads((tmp_path / "results" / "bench.json").read_text())
    absld = bench["train_step"]["absld"]
    assert absld["ours_img_s"] > 0 and absld["ours_fp32_img_s"] > 0 and absld["reference_img_s"] > 0
    assert absld["ratio"] == pytest.approx(absld["ours_img_s"] / absld["reference_img_s"])
    assert absld["ratio_fp32"] == pytest.approx(absld["ours_fp32_img_s"] / absld["reference_img_s"])
    trades = bench["train_step"]["trades"]  # no reference loop for TRADES: timed, not compared
    assert trades["ours_img_s"] > 0 and trades["reference_img_s"] is None and trades["ratio"] is None
    assert set(bench["attacks"]) == {"fgsm", "pgd", "cw", "aa"} and all(a["img_s"] > 0 for a in bench["attacks"].values())
    assert bench["settings"] | {"profile": "tiny"} == {
        "student": "tiny_cnn", "teacher": "tiny_cnn", "batch_size": 16, "warmup": 1, "repeats": 2,
        "dataset": "synthetic", "attack_steps": 2, "profile": "tiny",
        "fast_path": "bf16 autocast + channels_last (runtime.cpu_bf16)"}
    assert "ratio" in result.output and "reference" in result.output


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
