"""``absld report [--publish]``: the W&B report of the study, from results/fairness.json."""

from __future__ import annotations

import click

from absld.analyze.wandb_report import run_report

from .common import LAYOUT, load, params_option, user_errors


@click.command()
@params_option
@click.option("--publish", is_flag=True,
              help="Upload the report to W&B (needs WANDB_API_KEY or `wandb login`); without it, print its outline.")
@click.option("--experiment", default=None, metavar="NAME",
              help="Report the results of this DVC experiment (as `dvc exp show` names it; read from Git) "
                   "and the runs that wrote them; default: the workspace's results.")
@user_errors
def report(params_path: str, publish: bool, experiment: str | None) -> None:
    """Build the W&B report of the study from results/fairness.json (written by `absld analyze`).

    The report holds the results table (results/table.md), the paired tests in words
    (results/comparisons.json), bar panels per attack over the study's evaluate runs, ABSLD's
    temperature curves from its distill runs, the analyze run's summary table and the configuration.
    Without --publish the report's outline is printed and nothing leaves the machine; with --publish
    it is saved to the project WANDB_PROJECT (default absld-repro) of WANDB_ENTITY (or your default
    entity). Its panels show the runs of the group WANDB_RUN_GROUP (default absld-<profile>) that
    wrote the table's results (by the sha256 of each model's records.npz and checkpoint), whichever
    DVC experiment ran them; the report's "Runs" section lists them. Writes no files.
    """
    run_report(load(params_path), LAYOUT, publish=publish, experiment=experiment, echo=click.echo)
