"""The paper's table in device-hours, projected from ``absld bench``'s measured rates.

Training: per run, seconds per image-step x training images x epochs, for every method of the
paper profile (its own epochs: ``distill.<method>.train`` over ``distill.train``) and every seed,
plus the teachers the profile trains (``source: train``; an imported one is listed, not counted).
Evaluation: per model (every student run and the teacher), seconds per image of each attack x the
images it attacks (``evaluate.n_samples``; AutoAttack ``evaluate.aa.n_samples``). What is not
counted: the per-epoch extras (selection PGD, FRL/CFA/WAT validation passes), data preparation,
AutoAttack beyond its measured rate (measured on an untrained model it stops early: a lower bound).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .data import DATASETS as DATASET_SPECS
from .params import Params

SPLIT_SIZES: dict[str, tuple[int, int]] = {
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
    "fashion-mnist": (60_000, 10_000),
    "tinyimagenet": (100_000, 10_000),
}
"""(training, test) images of the published splits (torchvision's CIFAR and Fashion-MNIST; Tiny
ImageNet's 500 training and 50 validation images per class, whose validation split is its test set).
The synthetic dataset's sizes come from its params."""


@dataclass(frozen=True)
class TrainRun:
    """One training run of the table: ``images`` per epoch, ``epochs``, ``runs`` (seeds)."""

    images: int
    epochs: int
    runs: int = 1
    counted: bool = True
    """False: the profile imports this model (listed, not in the total)."""


@dataclass(frozen=True)
class Workload:
    """What a profile trains and evaluates, in images."""

    students: dict[str, TrainRun]
    teachers: dict[str, TrainRun]
    """``teacher`` and ``teacher_clean`` (when the profile has one)."""
    eval_images: int
    aa_images: int
    attacks: list[str]
    student_models: int
    """Evaluated students: methods x seeds."""
    teacher_models: int = 1
    methods_of_teachers: dict[str, str] = field(default_factory=dict)


def split_sizes(params: Params) -> tuple[int, int]:
    """(training, test) images of ``params.data.dataset`` before any split of ours."""
    data = params.data
    if data.dataset == "synthetic":
        classes = DATASET_SPECS["synthetic"].num_classes
        return data.synthetic.train_per_class * classes, data.synthetic.test_per_class * classes
    return SPLIT_SIZES[data.dataset]


def training_images(params: Params, per_class: int | None) -> int:
    """Images one epoch of a model trained on the prepared training split sees: per class, the
    split's images (balanced classes assumed) less ``data.val_per_class`` held out for validation,
    at most ``data.train_per_class``, then at most the role's ``per_class`` subset."""
    classes = DATASET_SPECS[params.data.dataset].num_classes
    available = split_sizes(params)[0] // classes - params.data.val_per_class
    for cap in (params.data.train_per_class, per_class):
        if cap is not None:
            available = min(available, cap)
    return available * classes


def paper_workload(params: Params) -> Workload:
    """The workload of ``params`` (the paper profile's, for the projection)."""
    distill, seeds = params.distill, len(params.seeds)
    student_images = training_images(params, distill.train_per_class)
    students = {m: TrainRun(student_images, distill.method_config(m).train.apply(distill.train).epochs, seeds)
                for m in distill.methods}
    teacher = params.teacher
    teacher_epochs = getattr(teacher, teacher.method).train.apply(teacher.train).epochs
    teachers = {"teacher": TrainRun(training_images(params, teacher.train_per_class), teacher_epochs,
                                    counted=teacher.source == "train")}
    clean = params.teacher_clean
    if clean.source != "none":
        teachers["teacher_clean"] = TrainRun(training_images(params, clean.train_per_class), clean.train.epochs,
                                             counted=clean.source == "train")
    test = split_sizes(params)[1]
    ev = params.evaluate
    eval_images = min(test, ev.n_samples or test)
    return Workload(students, teachers, eval_images, min(eval_images, ev.aa.n_samples or eval_images),
                    list(ev.attacks), student_models=len(distill.methods) * seeds,
                    methods_of_teachers={"teacher": teacher.method, "teacher_clean": "natural"})


def measured_rates(bench: dict[str, Any], precision: str = "ours_img_s") -> dict[str, Any]:
    """Seconds per image from a ``results/bench.json`` dict: ``train`` per method (``precision``:
    the key of the step timed, ours_img_s or ours_fp32_img_s), ``teachers`` per role, ``attacks``
    (on the student) and ``teacher_attacks`` (on the teacher's architecture) per attack, as the
    projection measured them (``projection_attacks``, the paper's evaluate section) when present."""
    def inverse(rows: dict[str, Any], key: str) -> dict[str, float]:
        return {name: 1 / row[key] for name, row in rows.items() if row.get(key)}

    return {"train": inverse(bench.get("train_step", {}), precision),
            "teachers": inverse(bench.get("teachers", {}), "img_s"),
            "attacks": inverse(bench.get("projection_attacks", bench.get("attacks", {})), "img_s"),
            "teacher_attacks": inverse(bench.get("teacher_attacks", {}), "img_s")}


def project(workload: Workload, rates: dict[str, Any], assumptions: dict[str, Any] | None = None) -> dict[str, Any]:
    """Device-hours of ``workload`` at ``rates`` (seconds per image, :func:`measured_rates`): one row
    per training run kind and per (attack, model kind), the totals, what was not measured."""
    rows: list[dict[str, Any]] = []
    missing: list[str] = []

    def add(kind: str, name: str, images: int, passes: int, runs: int, seconds: float | None, counted: bool) -> None:
        hours = None if seconds is None else images * passes * runs * seconds / 3600
        if seconds is None and counted:
            missing.append(f"{kind} {name}")
        rows.append({"kind": kind, "name": name, "images": images, "passes": passes, "runs": runs,
                     "seconds_per_image": seconds, "hours": hours, "counted": counted})

    for method, run in workload.students.items():
        add("train", method, run.images, run.epochs, run.runs, rates["train"].get(method), run.counted)
    for role, run in workload.teachers.items():
        add("train", role, run.images, run.epochs, run.runs, rates["teachers"].get(role), run.counted)
    for attack in workload.attacks:
        images = workload.aa_images if attack == "aa" else workload.eval_images
        add("evaluate", f"{attack} students", images, 1, workload.student_models, rates["attacks"].get(attack), True)
        add("evaluate", f"{attack} teacher", images, 1, workload.teacher_models,
            rates["teacher_attacks"].get(attack), True)

    def total(kind: str) -> float:
        return sum(r["hours"] for r in rows if r["kind"] == kind and r["counted"] and r["hours"] is not None)

    return {"rows": rows, "train_hours": total("train"), "evaluate_hours": total("evaluate"),
            "total_hours": total("train") + total("evaluate"), "not_measured": missing,
            "assumptions": {**(assumptions or {}),
                            "extrapolated": "seconds per image-step at the measured batch size, times images x "
                                            "epochs x seeds (training) and images x models (evaluation); "
                                            "not counted: selection PGD, the methods' per-epoch validation "
                                            "passes, data preparation; AutoAttack's rate on an untrained "
                                            "model is a lower bound of its time on a trained one"}}


def format_table(projection: dict[str, Any]) -> list[str]:
    """The projection as printed lines: one per row, then the totals."""
    lines = [f"  {'':8} {'run':<20} {'images':>7} {'x':>4} {'runs':>4} {'ms/img':>9} {'hours':>9}"]
    for r in projection["rows"]:
        ms = "-" if r["seconds_per_image"] is None else f"{r['seconds_per_image'] * 1e3:9.3f}"
        hours = "-" if r["hours"] is None else f"{r['hours']:9.2f}"
        note = "" if r["counted"] else "  (imported: not counted)"
        lines.append(f"  {r['kind']:<8} {r['name']:<20} {r['images']:>7} {r['passes']:>4} {r['runs']:>4} "
                     f"{ms:>9} {hours:>9}{note}")
    lines.append(f"  total {projection['total_hours']:.2f} h (training {projection['train_hours']:.2f}, "
                 f"evaluation {projection['evaluate_hours']:.2f})"
                 + (f"; not measured: {', '.join(projection['not_measured'])}" if projection["not_measured"] else ""))
    return lines
