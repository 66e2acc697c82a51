"""``absld gpu-check``: the device's ceilings and the pipeline's speed on one CUDA GPU, in one JSON."""

from __future__ import annotations

from pathlib import Path

import click

from absld.gpu_check import BUDGETS_S, PARTS, run_gpu_check, table

from .common import LAYOUT, user_errors


@click.command("gpu-check")
@click.option("--part", "parts", multiple=True, type=click.Choice(PARTS), help="A part to run (repeatable; default: all).")
@click.option("--budget", "budgets", multiple=True, metavar="PART=SECONDS",
              help="A part's time budget (repeatable; all=SECONDS for every part). Defaults: "
              + ", ".join(f"{part} {seconds:g}" for part, seconds in BUDGETS_S.items()) + " s.")
@click.option("--profile", default="paper", show_default=True, metavar="NAME", help="The methods and recipe of conf/profile/NAME.yaml.")
@click.option("--cpu-smoke", is_flag=True, help="Toy scale on the CPU (tiny models, a few steps; parts matmul, "
              "busy and graph skipped): the code path, for tests; its figures mean nothing.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=LAYOUT.gpu_check_json,
              show_default=True, help="Where the figures go (JSON, rewritten after every part).")
@user_errors
def gpu_check(parts: tuple[str, ...], budgets: tuple[str, ...], profile: str, cpu_smoke: bool, output: Path) -> None:
    """Measure one CUDA GPU for the pipeline in at most 8 minutes, without network; print a table.

    Parts, each cut short (status cut, its figures so far kept) when it overruns its budget:
    matmul (bf16, TF32 and fp32 TFLOP/s, 8192^2 matmuls); bench (`absld bench` of every method,
    ResNet-18 / WRN-34-10, batch 128, ours vs the reference loop); busy (GPU-busy fraction and
    phases of one ABSLD step); graph (PGD-10 in a CUDA graph vs eager, x_adv bitwise); sharing
    (1, 2, 4 RSLAD students on one GPU, images/s in all); precision (bf16 vs fp32 PGD-20/CW
    accuracy and soft labels on a model trained briefly on generated data). How each part
    measures is written in OUTPUT; docs/speed.md. Run it in the project's directory (the profiles
    are conf/profile/*.yaml). Not a DVC stage.
    """
    report = run_gpu_check(parts=parts or PARTS, budgets=budgets, cpu_smoke=cpu_smoke, profile=profile,
                           output=output, echo=click.echo)
    click.echo(table(report))
    click.echo(f"-> {output}")
