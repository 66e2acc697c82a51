"""The ``absld`` console script: one sub-command per DVC stage."""

from __future__ import annotations

import copy

import click

from absld import __version__, lease

from .analyze import analyze
from .bench import bench
from .check import check
from .common import user_errors
from .distill import distill
from .evaluate import evaluate
from .fanout import fanout
from .gpu_check import gpu_check
from .prepare import prepare
from .profiles import profiles
from .report import report
from .teacher import teacher


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="absld")
def main() -> None:
    """Reproduce Anti-Bias Soft Label Distillation (ABSLD) and its baselines.

    Each sub-command is one DVC stage and reads its settings from params.yaml (composed by DVC
    from conf/config.yaml and one conf/profile/<name>.yaml); run the whole pipeline with `dvc
    repro`, select a profile with `dvc exp run -S profile=quick`, or try settings with `dvc exp
    run -S key=value`. W&B, progress bars, CPU threads and the GPU follow the environment (WANDB_*,
    TQDM_DISABLE, OMP_NUM_THREADS, ABSLD_GPUS: the GPU lease, docs/speed.md).
    """


def leased(command: click.Command) -> click.Command:
    """A copy of ``command`` that takes its GPU lease (:func:`absld.lease.holding`) once its options
    are parsed (``--help`` never waits) and before its body runs, so before any CUDA call."""
    leased_command = copy.copy(command)
    leased_command.callback = user_errors(lease.holding(command.callback, lambda line: click.echo(line, err=True)))
    return leased_command


main.add_command(check)
main.add_command(prepare)
main.add_command(leased(teacher))
main.add_command(leased(distill))
main.add_command(leased(evaluate))
main.add_command(analyze)
main.add_command(report)
main.add_command(leased(bench))
main.add_command(fanout)
main.add_command(leased(gpu_check))
main.add_command(profiles)

if __name__ == "__main__":  # pragma: no cover
    main()
