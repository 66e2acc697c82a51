"""The W&B report spec, built without touching the network."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any


from ..params import Params
from ..data import MANIFEST, read_manifest
from ..errors import StageError
from ..layout import Layout
from ..tracking import BAND_SUFFIX, CLASSES_SHOWN, class_key, wandb_credentials_available, wandb_settings
from ..fairness import (
    STATISTICS,
)
from ..labels import _finite
from ..labels import Protocol
from ..labels import STAT_LABELS
from ..labels import attack_label
from ..labels import method_label
from ..labels import metric_name
from ..labels import model_label
from ..labels import order_attacks
from .analysis import class_ranking
from .tables import Cell
from .words import findings_markdown
from .tables import format_cell

if TYPE_CHECKING:  # pragma: no cover
    from wandb_workspaces.reports.v2 import Report


def _fallback_table(fairness: Mapping[str, Mapping[str, Mapping[str, Any]]], attacks: Sequence[str],
                    protocol: Protocol | None = None) -> str:
    header = ["Model"] + [f"{attack_label(a, protocol=protocol)} {STAT_LABELS[s]}" for a in attacks for s in STATISTICS]
    lines = ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * (len(header) - 1)]
    for model, by_attack in fairness.items():
        cells = [format_cell(Cell(_finite(by_attack[a][s])), s) if a in by_attack else "–"
                 for a in attacks for s in STATISTICS]
        lines.append(f"| {model_label(model)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_wandb_report(project: str, entity: str | None, study: str,
                       fairness: Mapping[str, Mapping[str, Mapping[str, Any]]], attacks: Sequence[str], *,
                       class_names: Sequence[str] | None = None, reference: str = "absld",
                       table_md: str | None = None, tests_md: str | None = None,
                       configuration: Sequence[tuple[str, str]] = (), title: str | None = None,
                       eval_metric: str = "{attack}/{stat}", summary_table: str = "fairness_table",
                       protocol: Protocol | None = None, experiment: str | None = None,
                       classes_shown: int = CLASSES_SHOWN) -> "Report":
    """The W&B report of a study, as a ``wandb_workspaces.reports.v2.Report`` (not saved).

    Blocks: a table of contents; "Class-wise robustness" (the results table as markdown); "Statistical
    tests" (the tests in words); "Per-attack accuracy of the evaluated models": a panel grid over the
    runs of ``job_type`` evaluate in group ``study``, one bar panel per attack (``eval_metric`` with
    stats avg and worst, e.g. ``aa/avg``; ``attack`` is :func:`metric_name`, so a non-standard AA of
    ``protocol`` reads ``aa_star/avg``) and one of NSD per attack; "Class-wise accuracy per
    attack": one bar panel per attack over the same runs with ``<attack>/class/<class name>`` (what
    the evaluate stage logs); "<reference> temperatures": a panel grid over the reference's distill
    runs with line plots of ``tau_adv/<class name>`` and ``tau_nat/<class name>`` against epoch;
    "Summary table": the ``summary_table`` W&B table logged by the analyze run; "Configuration".

    ``experiment`` keeps only the runs of one DVC experiment (their ``dvc_experiment`` config).

    With more than ``2 * classes_shown`` classes the per-class panels show the ``classes_shown``
    worst and best classes (:func:`absld.report.class_ranking`: the reference's class accuracy
    under the headline attack, mean over its seeds; :func:`absld.plots.select_classes`), their
    titles say how many are omitted, and each temperature gets a second panel with its min, median
    and max over all classes (``tau_adv_classes/min`` ..., logged by the distill stage).

    Building the object touches no network (``entity=None`` is stored as "" — resolve it before
    ``save()``); ``report.save()`` uploads it and needs a W&B login.
    """
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    entity = entity or ""
    attacks = order_attacks(list(attacks))
    ref = method_label(reference)
    title = title or f"{study}: class-wise robustness of {ref} and its baselines"

    def runset(name: str, job_type: str, *extra: Any) -> Any:
        if experiment is not None:
            extra = (*extra, expr.Config("dvc_experiment") == experiment)
        filters = expr.And(expr.Metric("JobType") == job_type, expr.Metric("Group") == study, *extra)
        return wr.Runset(entity=entity, project=project, name=name, filters=filters)

    def metric(attack: str, stat: str) -> str:
        return eval_metric.format(attack=metric_name(attack, protocol), stat=stat)

    bars = [wr.BarPlot(title=f"{attack_label(a, protocol=protocol)}: Avg and worst-class accuracy",
                       metrics=[metric(a, "avg"), metric(a, "worst")], orientation="v",
                       range_x=(0, 1), title_y="accuracy") for a in attacks]
    bars.append(wr.BarPlot(title="NSD per attack (lower is fairer)", metrics=[metric(a, "nsd") for a in attacks],
                           orientation="v", title_y="NSD"))
    num_classes = len(class_names) if class_names else len(next(iter(fairness.values()))[attacks[0]]["class_acc"])
    names = list(class_names) if class_names else [str(k) for k in range(num_classes)]
    keys = [class_key(name) for name in names]
    subset, omitted = "", 0
    if num_classes > 2 * classes_shown:
        from ..figures import describe_selection, select_classes  # matplotlib: only for many classes

        ranking, ranked_by = class_ranking(fairness, attacks, reference, protocol)
        selection = select_classes(ranking, classes_shown)
        keys, omitted = [keys[k] for k in selection.indices], selection.omitted
        subset = f" ({describe_selection(selection, ranked_by)})"
    tau_lines = [wr.LinePlot(title=f"{symbol} per class (used during each epoch){subset}", x="epoch",
                             y=[f"{kind}/{key}" for key in keys], title_x="epoch", title_y="temperature")
                 for kind, symbol in (("tau_adv", "τ_adv"), ("tau_nat", "τ_nat"))]
    if omitted:
        tau_lines += [wr.LinePlot(title=f"{symbol}: min, median and max over all {num_classes} classes", x="epoch",
                                  y=[f"{kind}{BAND_SUFFIX}/{s}" for s in ("min", "median", "max")], title_x="epoch",
                                  title_y="temperature") for kind, symbol in (("tau_adv", "τ_adv"), ("tau_nat", "τ_nat"))]
    classwise = [wr.BarPlot(title=f"{attack_label(a, protocol=protocol)}: accuracy per class{subset}",
                            metrics=[f"{metric_name(a, protocol)}/class/{key}" for key in keys], orientation="h",
                            range_x=(0, 1), title_x="accuracy") for a in attacks]

    blocks: list[Any] = [
        wr.TableOfContents(),
        wr.P(f"Study {study}: Avg, worst-class accuracy and NSD (std/mean of class accuracies, lower is "
             f"fairer) of {ref} and its baselines under every attack; built by `absld report` from "
             "results/fairness.json."),
        wr.H1("Class-wise robustness"),
        wr.MarkdownBlock(table_md or _fallback_table(fairness, attacks, protocol)),
        wr.H1("Statistical tests"),
        wr.MarkdownBlock(tests_md or "No tests recorded (run `absld analyze`)."),
        wr.H1("Per-attack accuracy of the evaluated models"),
        wr.PanelGrid(runsets=[runset("evaluate runs", "evaluate")], panels=bars),
        wr.H1("Class-wise accuracy per attack"),
        wr.PanelGrid(runsets=[runset("evaluate runs", "evaluate")], panels=classwise),
        wr.H1(f"{ref} temperatures"),
        wr.MarkdownBlock(f"Class-wise temperatures of the {ref} students, per class name."),
        wr.PanelGrid(runsets=[runset(f"{ref} distill runs", "distill", expr.Config("method") == reference)],
                     panels=tau_lines),
        wr.H1("Summary table"),
        wr.WeaveBlockSummaryTable(entity=entity, project=project, table_name=summary_table),
    ]
    if configuration:
        blocks += [wr.H1("Configuration"),
                   wr.MarkdownBlock("\n".join(["| setting | value |", "|:---|:---|"]
                                              + [f"| {n} | {v} |" for n, v in configuration]))]
    return wr.Report(project=project, entity=entity, title=title[:128],
                     description=f"ABSLD reproduction, study {study}", blocks=blocks)


def _block_text(block: Any) -> str:
    text = getattr(block, "text", "")
    if isinstance(text, list):
        text = "".join(str(t) for t in text)
    return str(text)


def report_outline(report: "Report") -> str:
    """A plain-text outline of a W&B report: its title, then one line per block (headings, markdown
    sizes, panel grids with their runsets and panels)."""
    lines = [f"W&B report '{report.title}' ({report.entity or '<default entity>'}/{report.project})"]
    for block in report.blocks:
        kind = type(block).__name__
        if kind in ("H1", "H2", "H3"):
            lines.append(f"{kind}: {_block_text(block)}")
        elif kind == "MarkdownBlock":
            lines.append(f"  MarkdownBlock: {len(block.text.splitlines())} lines")
        elif kind == "P":
            lines.append(f"  P: {_block_text(block)[:80]}")
        elif kind == "PanelGrid":
            runsets = "; ".join(f"'{rs.name}'" for rs in block.runsets)
            lines.append(f"  PanelGrid over runset {runsets}:")
            for panel in block.panels:
                ys = getattr(panel, "metrics", None) or getattr(panel, "y", None) or []
                shown = ", ".join(map(str, ys[:4])) + (", ..." if len(ys) > 4 else "")
                lines.append(f"    {type(panel).__name__} '{panel.title}': {shown}")
        elif kind == "WeaveBlockSummaryTable":
            lines.append(f"  WeaveBlockSummaryTable: {block.table_name}")
        else:
            lines.append(f"  {kind}")
    return "\n".join(lines)


def run_report(params: Params, layout: Layout, *, publish: bool, experiment: str | None,
               echo: Callable[[str], None]) -> None:
    """Build the study's W&B report from results/fairness.json; print its outline, or publish it."""
    if not layout.fairness_json.is_file():
        raise StageError(f"{layout.fairness_json} is missing; run `absld analyze` (or `dvc repro analyze`) first")
    fairness = json.loads(layout.fairness_json.read_text())
    if not fairness:
        raise StageError(f"{layout.fairness_json} holds no models; run `absld analyze` again")
    extra = json.loads(layout.comparisons_json.read_text()) if layout.comparisons_json.is_file() else {}
    meta = extra.get("meta", {})
    attacks = order_attacks(list(next(iter(fairness.values()))))
    class_names = meta.get("class_names")
    if class_names is None and (layout.data_dir(params.data.dataset) / MANIFEST).is_file():
        class_names = read_manifest(layout.data_dir(params.data.dataset), keys=("class_names",))["class_names"]
    protocol = meta.get("protocol")
    tests_md = (findings_markdown(extra["comparisons"], meta.get("n_samples"), protocol)
                if "comparisons" in extra else None)

    where = wandb_settings(params.profile)
    entity = where.entity
    if publish:
        if not wandb_credentials_available():
            raise StageError("no W&B API key: set WANDB_API_KEY or run `wandb login`, then `absld report --publish`")
        if entity is None:
            entity = _default_entity()
    wandb_report = build_wandb_report(
        where.project, entity, where.group, fairness, attacks, class_names=class_names,
        reference=params.analyze.reference, table_md=layout.table("md").read_text() if layout.table("md").is_file() else None,
        tests_md=tests_md, configuration=[tuple(line) for line in meta.get("configuration", [])],
        protocol=protocol, experiment=experiment,
    )
    if not publish:
        echo(report_outline(wandb_report))
        echo("(not published: `absld report --publish` uploads it)")
        return
    try:
        wandb_report.save()
    except Exception as exc:  # noqa: BLE001 - any failure of the upload is one line for the user
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StageError(f"W&B did not save the report ({type(exc).__name__}: {message})") from None
    echo(f"published: {wandb_report.url}")


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
