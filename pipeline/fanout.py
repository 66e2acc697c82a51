"""``absld fanout``: the stale stages of dvc.yaml over several GPUs or Slurm jobs (absld/fanout/)."""

from __future__ import annotations

from pathlib import Path

import click

from absld.fanout import command

from .common import params_option, user_errors


@click.command()
@click.option("--backend", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
              help="local: a pool of GPU slots on this machine; slurm: one job per stage (needs absld-repro[slurm]).")
@click.option("--gpus", metavar="0,1,...", help="local: the GPUs to use, by index (default: every GPU torch sees).")
@click.option("--per-gpu", type=click.IntRange(min=1), default=1, show_default=True,
              help="local: how many stages share one GPU at a time.")
@click.option("--lock-retries", type=click.IntRange(min=0), default=8, show_default=True,
              help="How often a stage is retried when DVC's repository lock is taken (no other failure is retried).")
@click.option("--wait-for-lock/--no-wait-for-lock", default=True, help="DVC waits for its lock (dvc --wait-for-lock).")
@click.option("--slurm", multiple=True, metavar="KEY=VALUE", help="slurm: partition=, time_min=, mem_gb=, "
              "account=, qos=, upstream_jobs=true, setup='module load cuda', any sbatch option (docs/slurm.md).")
@click.option("--dry-run", is_flag=True, help="Print the plan (waves, order, what each stage waits for) and stop.")
@params_option
@user_errors
def fanout(backend: str, gpus: str | None, per_gpu: int, lock_retries: int, wait_for_lock: bool,
           slurm: tuple[str, ...], dry_run: bool, params_path: str) -> None:
    """Run the stale stages of dvc.yaml in parallel, each as `dvc repro --single-item <stage>`.

    The upstream (check, prepare, teachers) first; then students longest first, each evaluation after
    its model, analyze last. DVC records every result in dvc.lock. Logs: logs/fanout/ (docs/slurm.md).
    """
    raise SystemExit(command.run(Path.cwd(), Path(params_path), backend=backend, gpus=gpus, per_gpu=per_gpu,
                                 slurm=slurm, lock_retries=lock_retries, wait_for_lock=wait_for_lock,
                                 dry_run=dry_run, echo=click.echo))
