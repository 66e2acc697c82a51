"""``absld teacher``: train (PGD-AT / TRADES) or import the teacher -> models/teacher.pt; ``--clean``:
B-MTARD's clean teacher -> models/teacher_clean.pt."""

from __future__ import annotations

import click

from absld.train.teacher import run_teacher

from .common import LAYOUT, code, load, locked, params_option, user_errors


@click.command()
@params_option
@click.option("--clean", is_flag=True, help="Make the clean teacher of teacher_clean instead (B-MTARD's second).")
@click.option("--stop-after", type=click.IntRange(min=1), default=None,
              help="Stop after this many epochs in this call (the next call resumes).")
@user_errors
@locked(lambda clean, **_: "teacher-clean" if clean else "teacher")
def teacher(params_path: str, clean: bool, stop_after: int | None) -> None:
    """Train or import the teacher and check its clean and PGD accuracy on the test split.

    teacher.source selects: `train` (teacher.method: sat = PGD-AT, or trades, with teacher.train
    and teacher.attack; resumable from checkpoints/teacher/), `file` (teacher.path or teacher.url,
    sha256-checked against teacher.sha256) or `robustbench` (teacher.robustbench_id through the
    robustbench package). An imported teacher whose clean accuracy is more than
    teacher.max_clean_gap from teacher.published_clean_acc stops the stage before anything is
    written. Writes models/teacher.pt, models/teacher.json and results/teacher/. With --clean, the
    same from teacher_clean (source none | train: plain cross-entropy | file) to
    models/teacher_clean.{pt,json}, results/teacher_clean/ and models/teacher_clean_of/ (source none:
    a constant placeholder).
    """
    run_teacher(load(params_path), LAYOUT, code=code("teacher"), echo=click.echo, stop_after=stop_after, clean=clean)
