"""``absld bench``: images/s of training steps and attacks, against the reference scripts' loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from absld.bench import REFERENCE_METHODS, BenchSettings, run_bench
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
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True,
              help="Untimed steps before timing (allocations, kernel choice).")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed steps; the figure is the batch size over their median time.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=LAYOUT.bench_json, show_default=True,
              help="Where the figures go (JSON).")
@user_errors
def bench(params_path: str, profile: str | None, methods: tuple[str, ...], student: str | None, teacher: str | None,
          batch_size: int | None, warmup: int, repeats: int, output: Path) -> None:
    """Time one training step of each method and each evaluation attack, in images per second.

    Each method's step runs three ways on random images of the dataset's shape with untrained
    models: ours with the fast path (bf16 autocast and channels_last: runtime.amp on CUDA,
    runtime.cpu_bf16 on the CPU), ours in fp32, and -- for absld, rslad and sat -- a reference loop
    with the official scripts' structure (a two-worker DataLoader over PIL images with per-image
    transforms, fp32, the attack written inline, ABSLD's per-sample Python loops for temperatures
    and class risks); `ratio` is ours over the reference. The attacks are the evaluate section's, on
    one batch. Not a DVC stage (times differ on every run); OUTPUT's layout: docs/speed.md.
    """
    params = load(params_path) if profile is None else load_profile(profile)
    chosen = list(methods) or list(params.distill.methods)
    settings = BenchSettings(student or params.distill.student.arch, teacher or params.teacher.model.arch,
                             batch_size or params.distill.train.batch_size, warmup, repeats)
    click.echo(f"student {settings.student}, teacher {settings.teacher}, batch {settings.batch_size}, "
               f"{params.data.dataset} shape, median of {repeats} steps after {warmup}")
    result = run_bench(params, chosen, settings, on_result=_echo)
    result["settings"]["profile"] = profile or params.profile
    write_json(output, result)
    click.echo(f"{result['device']}, {result['threads']} threads -> {output}")


def _echo(kind: str, name: str, row: dict[str, Any]) -> None:
    if kind == "attacks":
        click.echo(f"  attack {name:<7} {row['img_s']:9.1f} img/s")
        return
    line = f"  train  {name:<14} ours {row['ours_img_s']:8.1f} img/s  fp32 {row['ours_fp32_img_s']:8.1f}"
    if name in REFERENCE_METHODS:
        line += (f"  reference {row['reference_img_s']:8.1f}  ratio {row['ratio']:.2f} "
                 f"(fp32 {row['ratio_fp32']:.2f})")
    click.echo(line)
