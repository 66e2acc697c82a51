"""The analyze stage: one :class:`Study` built once from the evaluations, handed to every renderer
(fairness.json, the tables, the report, the figures, DVC's plot data, the W&B run)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..params import Params, fraction_of_255
from ..data import MANIFEST, read_manifest
from ..errors import StageError
from ..evaluate.records import Records
from ..fairness import STATISTICS
from ..figures import ClassSelection, describe_selection as describe_shown, plot_temperatures, select_classes
from ..io import atomic_dir, dumps_json, write_csv, write_text
from ..labels import Protocol, _finite, attack_label, dataset_label, headline_attack, method_label, metric_name
from ..layout import Layout
from ..tracking import Tracker
from ..vocab import ModelId
from .analysis import (Fairness, class_ranking, compare_to_reference, fairness_table, interval_note,
                       intervals_excluding_the_estimate, json_safe, seed_comparisons, seed_summaries,
                       seed_tests_markdown, verdict, worst_classes)
from .evaluations import load_evaluations
from .markdown import classes_markdown, describe_configuration, markdown_report, seed_markdown
from .plots import plot_class_accuracy, plot_fairness_tradeoff
from .published import Published, anchors_that_match, published_numbers
from .tables import (describe_checkpoints, results_table, row_specs, table_caption, table_csv, table_latex,
                     table_markdown)
from .words import findings_markdown

SELECTION_KEYS = ("select", "selected_epoch", "selection_split")
DVC_TRAINING_KEYS = ("train_loss", "train_acc_adv")
"""The per-epoch training columns every method logs (plots/analyze/training.csv)."""

Row = tuple[str, "str | None", list[str]]
"""A row of the table and the figures: (label, method or None for the teacher, its model ids)."""


def dumps_strict(obj: Any) -> str:
    """Strict JSON (NaN/inf -> null), as every reader of the metrics files expects (:func:`absld.io.dumps_json`)."""
    return dumps_json(obj)


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV written by the distill stage (temperatures.csv, train_log.csv) as dicts."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@dataclass
class Study:
    """Everything the analysis shows, computed once: the models, their records and statistics, the
    seed summaries and tests, the checkpoint choices and the classes the figures show."""

    params: Params
    layout: Layout
    class_names: list[str]
    groups: dict[str, dict[int, str]]  # method -> seed -> model id
    models: list[str]  # teacher first
    records: dict[str, Records]
    fairness: Fairness
    seed_stats: dict
    comparisons: dict
    seed_tests: dict
    published: dict[str, Published]
    published_notes: list[str]  # the anchors left out, and why
    selections: dict[str, dict[str, Any] | None]
    selection: str  # the checkpoint choice in words
    configuration: list[tuple[str, str]]
    ranking: list[float]
    ranked_by: str
    shown: ClassSelection

    @property
    def first(self) -> Records:
        return self.records["teacher"]

    @property
    def attacks(self) -> list[str]:
        return self.first.names

    @property
    def protocol(self) -> Protocol:
        return self.first.protocol

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def dataset(self) -> str:
        return dataset_label(self.params.data.dataset)

    @property
    def rows(self) -> list[Row]:
        """The teacher, then each method (its seeds)."""
        return [("Teacher", None, ["teacher"])] + [(method_label(m), m, list(s.values())) for m, s in self.groups.items()]

    def row_class_acc(self, attacks: list[str]) -> dict[str, dict[str, list[float]]]:
        """``{row label: {attack: [acc_k]}}``: each row's class accuracies (a method's: the mean over seeds)."""
        return {label: {a: [sum(self.fairness[m][a]["class_acc"][k] for m in ms) / len(ms)
                            for k in range(self.num_classes)] for a in attacks} for label, _, ms in self.rows}

    @classmethod
    def build(cls, params: Params, layout: Layout) -> "Study":
        cfg = params.analyze
        methods, seeds = list(params.distill.methods), list(params.seeds)
        groups = {m: {s: str(ModelId.student(m, s)) for s in seeds} for m in methods}
        models = ["teacher"] + [groups[m][s] for m in methods for s in seeds]
        _check_evaluated(models, layout)
        class_names = _class_names(params, layout)
        records = load_evaluations({m: layout.eval_dir(m) / "records.npz" for m in models})
        fairness = fairness_table(records, len(class_names), cfg)
        raw = yaml.safe_load(layout.published.read_text()) if layout.published.is_file() else {}
        first = records["teacher"]
        selections = {groups[m][s]: _selection_meta(groups[m][s], m, s, layout) for m in methods for s in seeds}
        selection = describe_checkpoints(selections, fallback=params.distill.select)
        configuration = describe_configuration(params.evaluate, cfg, dataset=params.data.dataset, n_samples=first.n,
                                               eps=first.eps, attacks=first.names, seeds=seeds, selection=selection,
                                               protocol=first.protocol)
        ranking, ranked_by = class_ranking(fairness, first.names, cfg.reference, first.protocol)
        published, published_notes = applicable(published_numbers(raw, params.data.dataset), params, eps=first.eps,
                                                protocol=first.protocol)
        return cls(params=params, layout=layout, class_names=class_names, groups=groups, models=models,
                   records=records, fairness=fairness, seed_stats=seed_summaries(fairness, groups, cfg.confidence),
                   comparisons=compare_to_reference(records, groups, len(class_names), cfg),
                   seed_tests=seed_comparisons(fairness, groups, cfg),
                   published=published, published_notes=published_notes,
                   selections=selections, selection=selection, configuration=configuration, ranking=ranking,
                   ranked_by=ranked_by, shown=select_classes(ranking, cfg.classes_shown))


def run_analyze(params: Params, layout: Layout, *, echo: Callable[[str], None]) -> None:
    """Build the study and write every output of the analyze stage; echo the markdown table."""
    study = Study.build(params, layout)
    write_metrics(study)
    table_md = write_tables(study)
    figures = write_figures(study)
    write_report(study, table_md, figures)
    track(study, [name for _, name in figures], echo=echo)
    echo(table_md.rstrip("\n"))


def _check_evaluated(models: list[str], layout: Layout) -> None:
    missing = [m for m in models if not (layout.eval_dir(m) / "records.npz").is_file()]
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        stages = " ".join(_evaluate_stage(m) for m in missing[:6])
        raise StageError(f"not evaluated yet: {shown} (no results/eval/<model>/records.npz); run "
                         f"`dvc repro {stages}`{' ...' if len(missing) > 6 else ''} or `dvc repro analyze`")


def _evaluate_stage(model: str) -> str:
    """The DVC stage that writes results/eval/<model> (dvc.yaml's names)."""
    model_id = ModelId.parse(model)
    return "evaluate-teacher" if model_id.is_teacher else f"evaluate@{model_id.method}-{model_id.seed}"


def _class_names(params: Params, layout: Layout) -> list[str]:
    """Class names from data/<dataset>/manifest.json (the arrays are not loaded)."""
    folder = layout.data_dir(params.data.dataset)
    names = read_manifest(folder, keys=("class_names",))["class_names"]
    if not names:
        raise StageError(f"{folder / MANIFEST} has no class_names; re-run `absld prepare`")
    return [str(n) for n in names]


def _selection_meta(model: str, method: str, seed: int, layout: Layout) -> dict[str, Any] | None:
    """The checkpoint's selection meta (select, selected_epoch, selection_split): from
    results/eval/<model>/metrics.json (its ``selection`` entry), else the distill stage's metrics.json."""
    for path in (layout.eval_dir(model) / "metrics.json", layout.distill_results(method, seed) / "metrics.json"):
        if not path.is_file():
            continue
        meta = json.loads(path.read_text())
        if isinstance(meta, dict) and isinstance(meta.get("selection"), dict):
            meta = meta["selection"]
        if isinstance(meta, dict) and "select" in meta:
            return {k: meta.get(k) for k in SELECTION_KEYS}
    return None


def _training_summary(method: str, seed: int, layout: Layout) -> dict[str, Any]:
    """The checkpoint choice and the last epoch's training metrics of one student (its distill
    metrics.json); empty when the stage wrote none (e.g. a student trained elsewhere)."""
    path = layout.distill_results(method, seed) / "metrics.json"
    if not path.is_file():
        return {}
    metrics = json.loads(path.read_text())
    keys = ("select", "selected_epoch", "selection_score", "final_tau_epoch")
    return {**{k: metrics[k] for k in keys if k in metrics}, "final": metrics.get("final", {})}


def applicable(published: dict[str, Published], params: Params, *, eps: float,
               protocol: Protocol | None) -> tuple[dict[str, Published], list[str]]:
    """Published numbers that describe the models of this study, and a footnote for each one left
    out (:func:`anchors_that_match`): the teacher's only when it was imported (not trained here),
    any entry only where its architecture, eps and norm are ours, its AutoAttack only beside a
    standard one."""
    ours = {} if params.teacher.source == "train" else {"teacher": params.teacher.model.arch}
    ours.update({m: params.distill.student.arch for m in params.distill.methods})
    return anchors_that_match(published, ours, eps=eps, protocol=protocol)


HEADLINE_ATTACKS = ("clean", "pgd", "aa")
"""The attacks of ``results/headline.json`` (those the study ran): the paper's clean and PGD columns
and AutoAttack (``aa_star`` when it is not the standard one)."""


def headline(study: Study) -> dict[str, dict[str, float | None]]:
    """``results/headline.json``: per model -- ``teacher`` and each method, its seeds averaged (the
    mean of each seed's statistic; one seed: that seed's) -- ``clean_avg`` and, for PGD and AA,
    ``<attack>_avg``, ``<attack>_worst``, ``<attack>_nsd`` (``<attack>`` from :func:`metric_name`:
    ``pgd`` whatever its steps, ``aa`` or ``aa_star``). Few enough columns for ``dvc exp show
    --only-changed`` in a normal terminal; every other number is in fairness.json (not listed by
    DVC, read with ``dvc metrics show results/fairness.json``)."""
    protocol = study.protocol
    attacks = [a for a in study.attacks if metric_name(a, protocol) in (*HEADLINE_ATTACKS, "aa_star")]
    by_model: dict[str, list[str]] = {"teacher": ["teacher"]} if "teacher" in study.fairness else {}
    by_model.update({method: list(seeds.values()) for method, seeds in study.groups.items()})
    out: dict[str, dict[str, float | None]] = {}
    for key, models in by_model.items():
        row: dict[str, float | None] = {}
        for attack in attacks:
            name = metric_name(attack, protocol)
            for stat in (("avg",) if name == "clean" else STATISTICS):
                values = [_finite(study.fairness[m][attack][stat]) for m in models]
                row[f"{name}_{stat}"] = (None if any(v is None for v in values)
                                         else float(sum(values) / len(values)))  # type: ignore[arg-type]
        out[key] = row
    return out


# ---------------------------------------------------------------------------------------------
# renderers: each reads the study
def write_metrics(study: Study) -> None:
    """results/headline.json (DVC's metrics), fairness.json (the contract), classwise.csv,
    training.json and comparisons.json."""
    params, layout, first, cfg = study.params, study.layout, study.first, study.params.analyze
    protocol = study.protocol
    write_text(layout.headline_json, dumps_strict(headline(study)))
    write_text(layout.fairness_json, dumps_strict({model: {metric_name(attack, protocol): entry
                                                           for attack, entry in by_attack.items()}
                                                   for model, by_attack in study.fairness.items()}))
    write_csv(layout.classwise_csv, [{"model": model, "attack": metric_name(attack, protocol), "class": name,
                                      "accuracy": entry["class_acc"][k]}
                                     for model in study.models for attack, entry in study.fairness[model].items()
                                     for k, name in enumerate(study.class_names)],
              columns=["model", "attack", "class", "accuracy"])
    write_text(layout.training_json, dumps_strict({study.groups[m][s]: _training_summary(m, s, layout)
                                                   for m in study.groups for s in study.groups[m]}))
    write_text(layout.comparisons_json, dumps_strict({
        "meta": {"dataset": params.data.dataset, "class_names": study.class_names, "models": study.models,
                 "attacks": first.names, "n_samples": first.n, "eps": first.eps,
                 "eps_255": fraction_of_255(first.eps), "nsd_ddof": cfg.nsd_ddof, "confidence": cfg.confidence,
                 "n_bootstrap": cfg.n_bootstrap, "seed": cfg.seed, "selection": study.selections,
                 "selection_rule": study.selection, "configuration": study.configuration, "protocol": first.protocol},
        "seed_summary": study.seed_stats, "seed_comparisons": study.seed_tests, "comparisons": study.comparisons,
    }))


def write_tables(study: Study) -> str:
    """results/table.{md,tex,csv} (the paper-style table); returns its markdown."""
    params, first, cfg, seeds = study.params, study.first, study.params.analyze, list(study.params.seeds)
    caption = table_caption(dataset=params.data.dataset, n_samples=first.n, eps=first.eps, ddof=cfg.nsd_ddof,
                            confidence=cfg.confidence, n_bootstrap=cfg.n_bootstrap, selection=study.selection,
                            several_seeds=len(seeds) > 1, n_seeds=len(seeds), protocol=first.protocol,
                            bootstrap_method=cfg.bootstrap_method, num_classes=study.num_classes,
                            classes_shown=cfg.classes_shown)
    table = results_table(study.fairness, row_specs(list(params.distill.methods), seeds), first.names,
                          caption=caption, published=study.published, protocol=first.protocol,
                          notes=study.published_notes)
    table_md = table_markdown(table)
    write_text(study.layout.table("md"), table_md)
    write_text(study.layout.table("tex"), table_latex(table))
    write_text(study.layout.table("csv"), table_csv(table))
    return table_md


def classes_table(study: Study) -> str:
    """The report's "Worst and best classes" table when some classes are omitted; '' otherwise."""
    shown = study.shown
    if shown.gap is None:
        return ""
    attack = headline_attack(study.attacks)
    class_acc = {label: acc[attack] for label, acc in study.row_class_acc([attack]).items()}
    return classes_markdown(study.class_names, class_acc, worst=shown.worst, best=shown.best,
                            attack_name=attack_label(attack, protocol=study.protocol), ranked_by=study.ranked_by,
                            worst_by_model=worst_classes(study.fairness, attack),
                            full_csv=str(study.layout.classwise_csv))


def write_report(study: Study, table_md: str, figures: list[tuple[str, str]]) -> None:
    """results/report.md: the verdict first, then the table, the tests, the seeds and the figures."""
    params, first, layout, protocol = study.params, study.first, study.layout, study.protocol
    cfg = params.analyze
    intro = verdict(study.seed_tests, study.seed_stats, study.attacks, comparisons=study.comparisons,
                    baseline=cfg.verdict_baseline, dataset=params.data.dataset, protocol=protocol) + "\n\n" + (
        f"Profile `{params.profile}`: the teacher and {len(params.distill.methods)} method(s) x "
        f"{len(params.seeds)} seed(s), every model evaluated on the same {first.n} {study.dataset} test images at "
        f"L∞ eps = {fraction_of_255(first.eps)}. Generated by `absld analyze` from results/eval/; do not edit by hand.")
    write_text(layout.report_md, markdown_report(
        title=f"{method_label(cfg.reference)} and its baselines: class-wise robustness on {study.dataset}",
        intro=intro, table_md=table_md, tests_md=findings_markdown(study.comparisons, first.n, protocol),
        figures=[(caption, os.path.relpath(layout.analysis_plots / name, layout.analysis_dir))
                 for caption, name in figures],
        configuration=study.configuration,
        seeds_md="\n".join(part for part in (seed_markdown(study.seed_stats, study.attacks, cfg.confidence, protocol),
                                              seed_tests_markdown(study.seed_tests, protocol)) if part),
        notes=[interval_note(intervals_excluding_the_estimate(study.fairness),
                             int(np.bincount(first.y, minlength=study.num_classes).min()), protocol)],
        classes_md=classes_table(study)))


def _tradeoff_points(study: Study) -> dict[str, dict[str, Any]]:
    """Per row and attack (Avg, its interval, NSD, its interval): bootstrap intervals for one model,
    t-intervals over seeds for several."""
    points: dict[str, dict[str, Any]] = {}
    for label, method, ms in study.rows:
        points[label] = {}
        for a in study.attacks:
            if len(ms) == 1:
                entry = study.fairness[ms[0]][a]
                points[label][a] = (entry["avg"], tuple(entry["avg_ci"]), entry["nsd"], tuple(entry["nsd_ci"]))
            else:
                avg, nsd = study.seed_stats[method][a]["avg"], study.seed_stats[method][a]["nsd"]
                points[label][a] = (avg["mean"], tuple(avg["ci"]), None if nsd is None else nsd["mean"],
                                    None if nsd is None else tuple(nsd["ci"]))
    return points


def write_figures(study: Study) -> list[tuple[str, str]]:
    """Write every PNG of plots/analyze/ afresh (stale figures go) and DVC's plot data; return
    (caption, file name) pairs. Per-class figures show the classes of ``study.shown``."""
    params, layout, shown, ranked_by = study.params, study.layout, study.shown, study.ranked_by
    attack_cols = [(a, attack_label(a, protocol=study.protocol)) for a in study.attacks]
    class_acc = study.row_class_acc(study.attacks)
    classes = dict(classes_shown=params.analyze.classes_shown, ranking=study.ranking, ranked_by=ranked_by)
    subset = (f": {describe_shown(shown, ranked_by)} (every class in {layout.classwise_csv})"
              if shown.gap is not None else "")
    points = _tradeoff_points(study)
    several = len(params.seeds) > 1
    seeds_note = f", mean over {len(params.seeds)} seeds" if several else ""
    figures = [
        (f"Class-wise accuracy per attack ({study.dataset}{seeds_note}){subset}", "class_accuracy.png"),
        (f"NSD against Avg per attack ({study.dataset}; error bars: "
         f"{'t-intervals over seeds' if several else 'bootstrap intervals'})", "tradeoff.png"),
    ]
    with atomic_dir(layout.analysis_plots) as tmp:
        plot_class_accuracy(study.class_names, class_acc, attack_cols, tmp / "class_accuracy.png",
                            title=f"Class-wise accuracy on {study.dataset}{seeds_note}", **classes)
        plot_fairness_tradeoff(points, attack_cols, tmp / "tradeoff.png",
                               title=f"Accuracy against class-wise unfairness on {study.dataset}")
        write_dvc_plot_data(study, tmp, class_acc, points)
        for seed in study.groups.get("absld", {}):
            csv_path = layout.distill_results("absld", seed) / "temperatures.csv"
            if not csv_path.is_file():
                continue
            name = f"temperatures_absld_seed{seed}.png"
            plot_temperatures(read_rows(csv_path), study.class_names, tmp / name,
                              title=f"ABSLD class-wise temperatures ({study.dataset}, seed {seed})", **classes)
            band = (f": min–max band and median over all {study.num_classes} classes, curves of "
                    f"{describe_shown(shown, ranked_by)}" if shown.gap is not None else "")
            figures.append((f"ABSLD class-wise temperatures per epoch (seed {seed}){band}", name))
    return figures


def class_intervals(study: Study, attack: str) -> dict[str, tuple[list[float], list[float], str]]:
    """Per row, the intervals of its class accuracies under ``attack``: ``(lo, hi, how)`` with one
    value per class (NaN where unknown). One model: the exact (Clopper-Pearson) binomial interval of
    each class's hits among its evaluated images; a method over several seeds: the Student-t
    interval over seeds of its class accuracy (that of :func:`absld.fairness.seed_summary`)."""
    from scipy import stats

    from ..fairness import seed_summary

    confidence, num_classes = study.params.analyze.confidence, study.num_classes
    tail = (1.0 - confidence) / 2
    level = f"{100 * confidence:g} %"
    out: dict[str, tuple[list[float], list[float], str]] = {}
    for label, _, ms in study.rows:
        if len(ms) == 1:
            correct, y = study.records[ms[0]].column(attack)
            n = np.bincount(y, minlength=num_classes).astype(float)
            hits = np.bincount(y, weights=correct.astype(float), minlength=num_classes)
            with np.errstate(all="ignore"):
                lo = np.where(hits > 0, stats.beta.ppf(tail, hits, n - hits + 1), 0.0)
                hi = np.where(hits < n, stats.beta.ppf(1 - tail, hits + 1, n - hits), 1.0)
            lo, hi = np.where(n > 0, lo, np.nan), np.where(n > 0, hi, np.nan)
            out[label] = (lo.tolist(), hi.tolist(), f"{level} exact binomial interval")
        else:
            cis = [seed_summary([study.fairness[m][attack]["class_acc"][k] for m in ms], confidence)["ci"]
                   for k in range(num_classes)]
            out[label] = ([c[0] for c in cis], [c[1] for c in cis], f"{level} t-interval over {len(ms)} seeds")
    return out


def _bounded(value: float | None, low: float = 0.0, high: float = 1.0) -> float | str:
    """An interval end for the plot data: clipped to the statistic's range, '' when unknown."""
    if value is None or not np.isfinite(value):
        return ""
    return float(min(max(value, low), high))


def write_dvc_plot_data(study: Study, folder: Path, class_acc: dict[str, dict[str, list[float]]],
                        points: dict[str, dict[str, Any]]) -> None:
    """The data of dvc.yaml's top-level plots (templates in .dvc/plots/, built by absld.charts), in
    long form so that one chart holds every model: classwise/<attack>.csv (models side by side, each
    class accuracy with its interval ``lo``-``hi`` and the ``attack``'s label for the chart's
    heading), training.csv (every student's curves overlaid), temperatures.csv (ABSLD's tau_adv and
    tau_nat per class and epoch) and tradeoff.csv (Avg against NSD per model and attack, with their
    intervals ``avg_lo``... as in the tradeoff figure). Models are the table's rows, named by their
    labels, which fix their colours (:mod:`absld.palette`); ``interval`` says what each interval is."""
    rows, layout, protocol, names = study.rows, study.layout, study.protocol, study.class_names
    level = f"{100 * study.params.analyze.confidence:g} %"
    for attack in study.attacks:
        intervals = class_intervals(study, attack)
        write_csv(folder / "classwise" / f"{metric_name(attack, protocol)}.csv",
                  [{"model": label, "class": name, "accuracy": class_acc[label][attack][k],
                    "lo": _bounded(intervals[label][0][k]), "hi": _bounded(intervals[label][1][k]),
                    "attack": attack_label(attack, protocol=protocol), "interval": intervals[label][2]}
                   for label, _, _ in rows for k, name in enumerate(names)],
                  columns=["model", "class", "accuracy", "lo", "hi", "attack", "interval"])
    tradeoff = []
    for label, _, ms in rows:
        how = f"{level} t-interval over {len(ms)} seeds" if len(ms) > 1 else f"{level} bootstrap interval"
        for order, attack in enumerate(study.attacks):
            avg, avg_ci, nsd_value, nsd_ci = points[label][attack]
            if nsd_value is None:
                continue
            avg_ci, nsd_ci = avg_ci or (None, None), nsd_ci or (None, None)
            tradeoff.append({"model": label, "attack": attack_label(attack, protocol=protocol), "order": order,
                             "avg": avg, "nsd": nsd_value, "avg_lo": _bounded(avg_ci[0]), "avg_hi": _bounded(avg_ci[1]),
                             "nsd_lo": _bounded(nsd_ci[0], high=np.inf), "nsd_hi": _bounded(nsd_ci[1], high=np.inf),
                             "interval": how})
    write_csv(folder / "tradeoff.csv", tradeoff,
              columns=["model", "attack", "order", "avg", "nsd", "avg_lo", "avg_hi", "nsd_lo", "nsd_hi", "interval"])
    curves: list[dict[str, Any]] = []
    for method, by_seed in study.groups.items():
        for seed in by_seed:
            log = layout.distill_results(method, seed) / "train_log.csv"
            if log.is_file():
                curves += [{"method": method_label(method), "model": f"{method_label(method)} seed {seed}",
                            "epoch": int(row["epoch"]), **{k: float(row[k]) for k in DVC_TRAINING_KEYS if row.get(k)}}
                           for row in read_rows(log)]
    write_csv(folder / "training.csv", curves, columns=["method", "model", "epoch", *DVC_TRAINING_KEYS])
    temperatures = [{"seed": seed, "epoch": int(row["epoch"]), "class": names[int(row["class"])],
                     "tau_adv": float(row["tau_adv"]), "tau_nat": float(row["tau_nat"])}
                    for seed in study.groups.get("absld", {})
                    if (layout.distill_results("absld", seed) / "temperatures.csv").is_file()
                    for row in read_rows(layout.distill_results("absld", seed) / "temperatures.csv")]
    write_csv(folder / "temperatures.csv", temperatures, columns=["seed", "epoch", "class", "tau_adv", "tau_nat"])


def track(study: Study, figure_names: list[str], echo: Callable[[str], None] | None = None) -> None:
    """The summary table, headline numbers and figures in the stage's W&B run."""
    params, protocol = study.params, study.protocol
    config = {"profile": params.profile, "dataset": params.data.dataset, "seeds": list(params.seeds),
              "methods": list(params.distill.methods), "select": params.distill.select,
              "evaluate": params.evaluate.model_dump(mode="json"), "analyze": params.analyze.model_dump(mode="json")}
    columns = ["model", "attack"] + [f"{s}{suffix}" for s in STATISTICS for suffix in ("", "_lo", "_hi")]
    rows: list[list[Any]] = []
    summary: dict[str, Any] = {}
    for model in study.models:
        for attack, entry in study.fairness[model].items():
            row: list[Any] = [model, metric_name(attack, protocol)]
            for stat in STATISTICS:
                row += [entry[stat], *entry[f"{stat}_ci"]]  # type: ignore[literal-required]
                summary[f"{model}/{metric_name(attack, protocol)}/{stat}"] = entry[stat]  # type: ignore[literal-required]
            rows.append(json_safe(row))
    with Tracker(params, "analyze", config=config, echo=echo) as tracker:
        tracker.log_table("fairness_table", columns, rows)
        tracker.summary(json_safe(summary))
        for name in figure_names:
            tracker.log_image(f"analyze/{Path(name).stem}", str(study.layout.analysis_plots / name))
