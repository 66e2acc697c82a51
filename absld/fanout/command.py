"""What ``absld fanout`` does, behind its click command (``pipeline/fanout.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import UserError
from ..params import load_params
from .local import Pool, fan_out, make_slots, parse_gpus
from .plan import build_plan


def run(root: Path, params_path: Path, *, backend: str, gpus: str | None, per_gpu: int, lock_retries: int,
        wait_for_lock: bool = True, dry_run: bool, slurm: tuple[str, ...] = (),
        echo: Callable[[str], None] = print) -> int:
    """The fan-out's exit status: 0 when every stage ran (local) or every job was submitted (slurm)
    and, locally, DVC finds the project up to date afterwards."""
    if not (root / "dvc.yaml").is_file():
        raise UserError(f"no dvc.yaml in {root}: run absld fanout in the project's directory")
    if backend == "slurm":
        from . import slurm as slurm_backend

        settings = slurm_backend.settings_from_pairs(slurm)
    elif slurm:
        raise UserError(f"--slurm {slurm[0]!r} is for --backend slurm")
    slots = make_slots(parse_gpus(gpus), per_gpu) if backend == "local" and not (dry_run and gpus is None) else []
    params = load_params(params_path)
    plan = build_plan(root, params)
    if dry_run:
        for line in plan.lines() + (slurm_backend.describe(root, plan, settings) if backend == "slurm" else []):
            echo(line)
        return 0
    if backend == "slurm":
        jobs = slurm_backend.submit(root, plan, settings, say=echo)
        echo(f"{len(jobs)} jobs submitted; logs under {settings.folder}/ and logs/fanout/; `dvc status` once they end")
        return 0
    echo(f"{len(slots)} slots: {', '.join(slot.name for slot in slots)}")
    pool = Pool(root, slots, lock_retries=lock_retries, wait_for_lock=wait_for_lock, echo=echo)
    report, after = fan_out(lambda: build_plan(root, params), pool)
    if report.interrupted:
        echo("interrupted: each running stage saved its checkpoint; run absld fanout again to resume")
        return 130
    for name, stages in (("failed", report.failed), ("skipped (waits for a failure)", report.skipped),
                         ("not started", report.not_started)):
        if stages:
            echo(f"{name}: {', '.join(stages)}")
    stale = sorted(item.stage for item in after.items if item.stale)  # the plan read after the run
    if report.ok and not after.items:
        echo(f"{len(report.outcomes)} stages ran; dvc status: every stage up to date")
        return 0
    if stale:
        echo(f"dvc status: still stale: {', '.join(stale)}")
    return 1
