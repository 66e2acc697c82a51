"""``absld fanout``: the stale stages of dvc.yaml over several GPUs or Slurm jobs (absld/fanout/)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import params_option, user_errors


@click.command()
@click.option("--backend", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
              help="local: a pool of GPU slots on this machine; slurm: one job per stage (needs absld-repro[slurm]).")
@click.option("--gpus", default=None, metavar="0,1,...",
              help="local: the GPUs to use, by index (default: every GPU torch sees).")
@click.option("--per-gpu", type=click.IntRange(min=1), default=1, show_default=True,
              help="local: how many stages share one GPU at a time.")
@click.option("--lock-retries", type=click.IntRange(min=0), default=8, show_default=True,
              help="How often a stage is retried when DVC's repository lock is taken (no other failure is retried).")
@click.option("--wait-for-lock/--no-wait-for-lock", default=True, show_default=True,
              help="Run each stage with DVC's --wait-for-lock (DVC waits for its repository lock instead of failing).")
@click.option("--dry-run", is_flag=True, help="Print the plan (waves, order, what each stage waits for) and stop.")
@params_option
@user_errors
def fanout(backend: str, gpus: str | None, per_gpu: int, lock_retries: int, wait_for_lock: bool,
           dry_run: bool, params_path: str) -> None:
    """Run the stale stages of dvc.yaml in parallel, each as `dvc repro --single-item <stage>`.

    The upstream (check, prepare, teachers) first; then students longest first, each evaluation after
    its model, analyze last. DVC records every result in dvc.lock. Logs: logs/fanout/ (docs/slurm.md).
    """
    from absld.fanout import command

    raise SystemExit(command.run(Path.cwd(), Path(params_path), backend=backend, gpus=gpus, per_gpu=per_gpu,
                                 lock_retries=lock_retries, wait_for_lock=wait_for_lock, dry_run=dry_run,
                                 echo=click.echo))
