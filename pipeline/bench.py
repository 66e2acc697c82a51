"""``absld bench``: images/s of training steps and attacks, against the reference scripts' loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from absld.bench import BenchSettings, result_lines, run_bench
from absld.params import load_profile
from absld.io import write_json
from absld.vocab import METHOD_NAMES

from .common import LAYOUT, load, params_option, user_errors


@click.command()
@params_option
@click.option("--profile", default=None, metavar="NAME",
              help="Benchmark conf/profile/NAME.yaml (composed in memory) instead of the params file.")
@click.option("--method", "methods", multiple=True, type=click.Choice(METHOD_NAMES),
              help="A method to time (repeatable; default: distill.methods).")
@click.option("--student", default=None, metavar="ARCH", help="Student architecture (default: distill.student.arch).")
@click.option("--teacher", default=None, metavar="ARCH", help="Teacher architecture (default: teacher.model.arch).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per step (default: distill.train.batch_size).")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True, help="Untimed steps (rounds) first.")
@click.option("--pairs", type=click.IntRange(min=3), default=10, show_default=True, help="Timed interleaved rounds "
              "(ours fast, ours fp32, reference) per method; the ratio is the median of the per-round ratios.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True, help="Timed steps of the "
              "anatomy, the attacks and the teachers' steps; each figure is their median.")
@click.option("--reference-workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="DataLoader workers of the reference loop (the official scripts': 2; 0: in its own process).")
@click.option("--projection/--no-projection", default=True, show_default=True, help="Also time the teachers' "
              "steps and the paper's attacks on the teacher's arch; project the paper's table in device-hours.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=LAYOUT.bench_json, show_default=True,
              help="Where the figures go (JSON).")
@user_errors
def bench(params_path: str, profile: str | None, methods: tuple[str, ...], student: str | None, teacher: str | None,
          batch_size: int | None, warmup: int, pairs: int, repeats: int, reference_workers: int, projection: bool,
          output: Path) -> None:
    """Time each method's training step (images/s) and each evaluation attack, on random images.

    Ours fast (bf16 + channels_last), ours fp32 and, for absld, rslad and sat, a loop shaped like the official
    scripts, interleaved; `ratio`: the median of reference / ours times, with its IQR. Then our step's anatomy,
    FLOPs and share of the matmul peak, and the paper's table projected in device-hours (docs/speed.md)."""
    params = load(params_path) if profile is None else load_profile(profile)
    settings = BenchSettings(student or params.distill.student.arch, teacher or params.teacher.model.arch,
                             batch_size or params.distill.train.batch_size, warmup, repeats, pairs,
                             projection=projection, reference_workers=reference_workers)
    click.echo(f"student {settings.student}, teacher {settings.teacher}, batch {settings.batch_size}, "
               f"{params.data.dataset} shape; {pairs} rounds after {warmup}, the rest: median of {repeats}")
    result = run_bench(params, list(methods) or list(params.distill.methods), settings, on_result=_echo,
                       paper=load_profile("paper") if projection else None)
    write_json(output, {**result, "settings": {**result["settings"], "profile": profile or params.profile}})
    click.echo(f"{result['device']}, {result['threads']} threads -> {output}")


def _echo(kind: str, name: str, row: dict[str, Any]) -> None:
    click.echo("\n".join(result_lines(kind, name, row)))
