"""``absld report [--publish]``: the W&B report of the study, from results/fairness.json."""

from __future__ import annotations

import json

import click

from absld import report as rep
from absld.data import MANIFEST, read_manifest
from absld.tracking import wandb_credentials_available, wandb_settings

from .common import COMPARISONS_JSON, FAIRNESS_JSON, TABLE_MD, StageError, data_dir, load, params_option, user_errors


@click.command()
@params_option
@click.option("--publish", is_flag=True,
              help="Upload the report to W&B (needs WANDB_API_KEY or `wandb login`); without it, print its outline.")
@click.option("--experiment", default=None, metavar="NAME",
              help="Only the runs of this DVC experiment (as `dvc exp show` names it); default: every run of the group.")
@user_errors
def report(params_path: str, publish: bool, experiment: str | None) -> None:
    """Build the W&B report of the study from results/fairness.json (written by `absld analyze`).

    The report holds the results table (results/table.md), the paired tests in words
    (results/comparisons.json), bar panels per attack over the study's evaluate runs, ABSLD's
    temperature curves from its distill runs, the analyze run's summary table and the configuration.
    Without --publish the report's outline is printed and nothing leaves the machine; with --publish
    it is saved to the project WANDB_PROJECT (default absld-repro) of WANDB_ENTITY (or your default
    entity), over the runs of the group WANDB_RUN_GROUP (default absld-<profile>). Writes no files.
    """
    params = load(params_path)
    if not FAIRNESS_JSON.is_file():
        raise StageError(f"{FAIRNESS_JSON} is missing; run `absld analyze` (or `dvc repro analyze`) first")
    fairness = json.loads(FAIRNESS_JSON.read_text())
    if not fairness:
        raise StageError(f"{FAIRNESS_JSON} holds no models; run `absld analyze` again")
    extra = json.loads(COMPARISONS_JSON.read_text()) if COMPARISONS_JSON.is_file() else {}
    meta = extra.get("meta", {})
    attacks = rep.order_attacks(list(next(iter(fairness.values()))))
    class_names = meta.get("class_names")
    if class_names is None and (data_dir(params) / MANIFEST).is_file():
        class_names = read_manifest(data_dir(params), keys=("class_names",))["class_names"]
    protocol = meta.get("protocol")
    tests_md = (rep.findings_markdown(extra["comparisons"], meta.get("n_samples"), protocol)
                if "comparisons" in extra else None)

    where = wandb_settings(params.profile)
    entity = where.entity
    if publish:
        if not wandb_credentials_available():
            raise StageError("no W&B API key: set WANDB_API_KEY or run `wandb login`, then `absld report --publish`")
        if entity is None:
            entity = _default_entity()
    wandb_report = rep.build_wandb_report(
        where.project, entity, where.group, fairness, attacks, class_names=class_names,
        reference=params.analyze.reference, table_md=TABLE_MD.read_text() if TABLE_MD.is_file() else None,
        tests_md=tests_md, configuration=[tuple(line) for line in meta.get("configuration", [])],
        protocol=protocol, experiment=experiment,
    )
    if not publish:
        click.echo(rep.report_outline(wandb_report))
        click.echo("(not published: `absld report --publish` uploads it)")
        return
    try:
        wandb_report.save()
    except Exception as exc:  # noqa: BLE001 - any failure of the upload is one line for the user
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StageError(f"W&B did not save the report ({type(exc).__name__}: {message})") from None
    click.echo(f"published: {wandb_report.url}")


def _default_entity() -> str:
    """The logged-in user's default W&B entity (a network call)."""
    import wandb

    try:
        entity = wandb.Api().default_entity
    except Exception as exc:  # noqa: BLE001
        raise StageError(f"cannot reach W&B to find your default entity ({type(exc).__name__}); "
                         "set wandb.entity in params.yaml") from None
    if not entity:
        raise StageError("W&B reports no default entity for this key; set wandb.entity in params.yaml")
    return str(entity)
