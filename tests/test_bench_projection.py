"""The projection of the paper's table: its arithmetic, on made-up rates, computed by hand."""

from __future__ import annotations

import pytest

from absld.bench_projection import measured_rates, paper_workload, project
from tests.conftest import REPO


@pytest.fixture(scope="module")
def paper():
    from absld.params import load_profile

    return load_profile("paper", conf=REPO / "conf")


def test_the_paper_workload_is_49000_images_each_methods_own_epochs_and_the_whole_test_set(paper):
    work = paper_workload(paper)
    assert work.students["absld"].images == 49_000  # CIFAR-10's 50,000 less 100 validation images per class
    assert work.students["absld"].epochs == 300 and work.students["trix"].epochs == 150
    assert work.students["ard"].epochs == 200 and work.students["dafa"].epochs == 110
    assert work.students["absld"].runs == len(paper.seeds) == 1
    assert not work.teachers["teacher"].counted  # RobustBench's TRADES WRN-34-10, imported
    assert work.teachers["teacher"].epochs == 100
    assert work.teachers["teacher_clean"].counted and work.teachers["teacher_clean"].epochs == 200
    assert (work.eval_images, work.aa_images, work.student_models) == (10_000, 10_000, 18)


def test_the_projection_multiplies_seconds_per_image_by_images_epochs_and_runs(paper):
    rates = {"train": {"absld": 0.001, "trix": 0.002},
             "teachers": {"teacher": 0.004, "teacher_clean": 0.0005},
             "attacks": {"pgd": 0.01}, "teacher_attacks": {"aa": 0.1}}
    out = project(paper_workload(paper), rates)
    rows = {(r["kind"], r["name"]): r for r in out["rows"]}
    assert rows["train", "absld"]["hours"] == pytest.approx(49_000 * 300 * 0.001 / 3600)  # 4.0833 h
    assert rows["train", "trix"]["hours"] == pytest.approx(49_000 * 150 * 0.002 / 3600)  # 4.0833 h
    assert rows["train", "teacher_clean"]["hours"] == pytest.approx(49_000 * 200 * 0.0005 / 3600)  # 1.3611 h
    assert rows["evaluate", "pgd students"]["hours"] == pytest.approx(10_000 * 18 * 0.01 / 3600)  # 0.5 h
    assert rows["evaluate", "aa teacher"]["hours"] == pytest.approx(10_000 * 1 * 0.1 / 3600)  # 0.2778 h
    # the imported teacher is listed (49,000 x 100 x 0.004 s = 5.44 h) but not counted
    assert rows["train", "teacher"]["hours"] == pytest.approx(5.4444, abs=1e-4) and not rows["train", "teacher"]["counted"]
    assert out["train_hours"] == pytest.approx(4.0833 + 4.0833 + 1.3611, abs=1e-3)
    assert out["evaluate_hours"] == pytest.approx(0.5 + 0.2778, abs=1e-3)
    assert out["total_hours"] == pytest.approx(out["train_hours"] + out["evaluate_hours"])
    assert "train rslad" in out["not_measured"] and "evaluate fgsm teacher" in out["not_measured"]
    assert "train teacher" not in out["not_measured"] and "train absld" not in out["not_measured"]


def test_measured_rates_are_the_inverse_of_the_bench_rows_images_per_second():
    bench = {"train_step": {"absld": {"ours_img_s": 200.0, "ours_fp32_img_s": 100.0}, "sat": {"ours_img_s": None}},
             "teachers": {"teacher": {"img_s": 50.0}}, "attacks": {"pgd": {"img_s": 1.0}},
             "projection_attacks": {"pgd": {"img_s": 4.0}}, "teacher_attacks": {"cw": {"img_s": 8.0}}}
    rates = measured_rates(bench)
    assert rates["train"] == {"absld": 0.005} and rates["teachers"] == {"teacher": 0.02}
    assert rates["attacks"] == {"pgd": 0.25}  # the paper's attacks as the projection timed them
    assert rates["teacher_attacks"] == {"cw": 0.125}
    assert measured_rates(bench, "ours_fp32_img_s")["train"] == {"absld": 0.01}
