"""The W&B report spec, built without touching the network."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
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
from ..vocab import ModelId
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
                       protocol: Protocol | None = None, runs: "RunSelection | None" = None,
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

    ``runs`` (:class:`RunSelection`) keeps only the runs behind the table: the evaluate runs that
    wrote its records (``records_sha256`` in their summary) and the reference's distill runs that
    wrote the checkpoints evaluated (``checkpoint_sha256``), whichever DVC experiment ran them; a
    "Runs" block says which they are and which models had none to select. Without it, every run of
    the group.

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
        if runs is not None:
            shas = runs.records if job_type == "evaluate" else runs.student_checkpoints(reference)
            key = "records_sha256" if job_type == "evaluate" else "checkpoint_sha256"
            extra = (*extra, expr.Summary(key).isin(sorted(set(shas.values()))))
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
        *([wr.H1("Runs"), wr.MarkdownBlock(runs.markdown(reference))] if runs is not None else []),
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


@dataclass(frozen=True)
class RunSelection:
    """The runs behind a results table, by what they wrote: ``records`` maps each model of the table
    to the sha256 of its ``results/eval/<model>/records.npz``, ``checkpoints`` to the sha256 of the
    checkpoint evaluated (its ``metrics.json``); ``source`` says where the table was read (the
    workspace, or a DVC experiment's commit); ``missing`` the models whose files were not there."""

    source: str
    records: dict[str, str]
    checkpoints: dict[str, str]
    missing: tuple[str, ...] = ()

    def student_checkpoints(self, method: str) -> dict[str, str]:
        return {m: sha for m, sha in self.checkpoints.items() if not ModelId.parse(m).is_teacher
                and ModelId.parse(m).method == method}

    def markdown(self, reference: str) -> str:
        lines = [f"The table was read from {self.source}. Its panels show the runs that made it, whichever "
                 "DVC experiment ran them (DVC skips the stages an experiment did not change):",
                 "- evaluate runs whose `records_sha256` is that of the table's records: "
                 + ", ".join(f"{model_label(m)} `{sha[:12]}`" for m, sha in self.records.items()),
                 f"- {method_label(reference)} distill runs whose `checkpoint_sha256` is that of the "
                 f"checkpoint evaluated: " + (", ".join(f"{model_label(m)} `{sha[:12]}`" for m, sha in
                                                       self.student_checkpoints(reference).items()) or "none")]
        if self.missing:
            lines.append(f"- **not shown**: {', '.join(map(model_label, self.missing))} (no records.npz beside "
                         "the table: their runs cannot be matched; run `dvc repro`)")
        return "\n".join(lines)


def select_runs(fairness: Mapping[str, Any], layout: Layout, read: Callable[[Path], bytes | None],
                source: str) -> RunSelection:
    """The :class:`RunSelection` of a table: ``read(path)`` gives a file of the table's source."""
    records, checkpoints, missing = {}, {}, []
    for model in fairness:
        blob = read(layout.eval_dir(model) / "records.npz")
        if blob is None:
            missing.append(model)
            continue
        records[model] = hashlib.sha256(blob).hexdigest()
        metrics = read(layout.eval_dir(model) / "metrics.json")
        sha = json.loads(metrics).get("checkpoint", {}).get("sha256") if metrics is not None else None
        if sha:
            checkpoints[model] = sha
    return RunSelection(source, records, checkpoints, tuple(missing))


def _read_workspace(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def experiment_reader(name: str) -> tuple[Callable[[Path], bytes | None], str]:
    """A reader of the files of DVC experiment ``name`` (its commit under ``refs/exps/``, where
    `dvc exp run` keeps it, results/ included) and the words for it; a :class:`StageError` when
    there is no such experiment or the name is ambiguous."""
    def git(*args: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(["git", *args], capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StageError(f"cannot run git to find DVC experiment {name!r} ({type(exc).__name__})") from None

    listed = git("for-each-ref", "--format=%(refname) %(objectname)", "refs/exps/")
    if listed.returncode != 0:
        raise StageError(f"cannot list DVC experiments here (not a Git repository?): {name!r} not found")
    found = [line.split() for line in listed.stdout.decode().splitlines()
             if line.split()[0].rsplit("/", 1)[-1] == name]
    if not found:
        raise StageError(f"no DVC experiment named {name!r} in this repository (`dvc exp show` lists them)")
    if len({sha for _, sha in found}) > 1:
        raise StageError(f"{len(found)} DVC experiments are named {name!r} ({', '.join(r for r, _ in found)}); "
                         "remove the ones you do not mean (`dvc exp remove`)")
    commit = found[0][1]

    def read(path: Path) -> bytes | None:
        shown = git("show", f"{commit}:./{path.as_posix()}")
        return shown.stdout if shown.returncode == 0 else None

    return read, f"DVC experiment {name} (commit {commit[:7]})"


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
    """Build the study's W&B report from results/fairness.json; print its outline, or publish it.

    The table, its tests and the runs shown are one consistent set: without ``experiment`` the
    workspace's results; with it, the results committed to that DVC experiment (read from Git, so
    the workspace may hold another one). Either way the panels show the runs that wrote those
    results (:class:`RunSelection`), not every run labelled with the experiment's name: an
    experiment re-runs only the stages it changed, and the rest of its table comes from runs of
    earlier experiments."""
    read, source = (_read_workspace, "the workspace") if experiment is None else experiment_reader(experiment)
    where_table = layout.fairness_json if experiment is None else f"{layout.fairness_json} of {source}"
    raw = read(layout.fairness_json)
    if raw is None:
        raise StageError(f"{where_table} is missing; run `absld analyze` (or `dvc repro analyze`) first")
    fairness = json.loads(raw)
    if not fairness:
        raise StageError(f"{where_table} holds no models; run `absld analyze` again")
    comparisons, table = read(layout.comparisons_json), read(layout.table("md"))
    extra = json.loads(comparisons) if comparisons is not None else {}
    meta = extra.get("meta", {})
    attacks = order_attacks(list(next(iter(fairness.values()))))
    class_names = meta.get("class_names")
    if class_names is None and (layout.data_dir(params.data.dataset) / MANIFEST).is_file():
        class_names = read_manifest(layout.data_dir(params.data.dataset), keys=("class_names",))["class_names"]
    protocol = meta.get("protocol")
    tests_md = (findings_markdown(extra["comparisons"], meta.get("n_samples"), protocol)
                if "comparisons" in extra else None)
    runs = select_runs(fairness, layout, read, source)

    where = wandb_settings(params.profile)
    entity = where.entity
    if publish:
        if not wandb_credentials_available():
            raise StageError("no W&B API key: set WANDB_API_KEY or run `wandb login`, then `absld report --publish`")
        if entity is None:
            entity = _default_entity()
    wandb_report = build_wandb_report(
        where.project, entity, where.group, fairness, attacks, class_names=class_names,
        reference=params.analyze.reference, table_md=table.decode() if table is not None else None,
        tests_md=tests_md, configuration=[tuple(line) for line in meta.get("configuration", [])],
        protocol=protocol, runs=runs,
    )
    echo(f"runs: those that wrote the {len(runs.records)} models' records of {source} (group {where.group})")
    if experiment is None:  # the workspace: records written after the table would select other runs
        made = layout.fairness_json.stat().st_mtime
        newer = [m for m in runs.records if (layout.eval_dir(m) / "records.npz").stat().st_mtime > made]
        if newer:
            echo(f"note: the records of {', '.join(newer)} are newer than {layout.fairness_json}: run `absld analyze` "
                 "(or `dvc repro analyze`) so that the table is made of them")
    if runs.missing:
        echo(f"note: no records.npz for {', '.join(runs.missing)} beside the table of {source}: "
             "their runs are not shown")
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
                         "set WANDB_ENTITY (e.g. `WANDB_ENTITY=my-team absld report --publish`)") from None
    if not entity:
        raise StageError("W&B reports no default entity for this key; set WANDB_ENTITY "
                         "(e.g. `WANDB_ENTITY=my-team absld report --publish`)")
    return str(entity)
