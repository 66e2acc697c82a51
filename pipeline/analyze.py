"""``absld analyze``: fairness statistics over every evaluated model -> fairness.json, tables, report, plots."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import click
import numpy as np
import yaml

from absld import report as rep
from absld.config import Params, fraction_of_255
from absld.data import MANIFEST, read_manifest
from absld.fairness import STATISTICS
from absld.io import atomic_dir, write_csv, write_text
from absld.plots import (
    ClassSelection, describe_selection as describe_shown, plot_class_accuracy, plot_fairness_tradeoff,
    plot_temperatures, select_classes,
)
from absld.tracking import Tracker
from absld.vocab import ModelId

from .common import (
    locked,
    ANALYSIS_DIR, ANALYSIS_PLOTS, COMPARISONS_JSON, FAIRNESS_JSON, PUBLISHED, REPORT_MD, TABLE_CSV, TABLE_MD,
    TABLE_TEX, TRAINING_JSON, StageError, data_dir, distill_results, eval_dir, load,
    params_option, student_id, user_errors,
)

SELECTION_KEYS = ("select", "selected_epoch", "selection_split")
CLASSWISE_CSV = ANALYSIS_DIR / "classwise.csv"
"""Every class of every model (each seed) under every attack, long form: model, attack, class, accuracy.
The figures and the report's per-class table may show some classes only (analyze.classes_shown)."""


def dumps_strict(obj: Any) -> str:
    """Strict JSON (NaN/inf -> null), as every reader of the metrics files expects."""
    return json.dumps(rep.json_safe(obj), indent=2, allow_nan=False) + "\n"


def class_names_of(params: Params) -> list[str]:
    """Class names from data/<dataset>/manifest.json (the arrays are not loaded)."""
    names = read_manifest(data_dir(params), keys=("class_names",))["class_names"]
    if not names:
        raise StageError(f"{data_dir(params) / MANIFEST} has no class_names; re-run `absld prepare`")
    return [str(n) for n in names]


def evaluate_stage(model: str) -> str:
    """The DVC stage that writes results/eval/<model> (dvc.yaml's names)."""
    model_id = ModelId.parse(model)
    return "evaluate-teacher" if model_id.is_teacher else f"evaluate@{model_id.method}-{model_id.seed}"


def selection_meta(model: str, method: str, seed: int) -> dict[str, Any] | None:
    """The checkpoint's selection meta (select, selected_epoch, selection_split): from
    results/eval/<model>/metrics.json (its ``selection`` entry), else the distill stage's metrics.json."""
    for path in (eval_dir(model) / "metrics.json", distill_results(method, seed) / "metrics.json"):
        if not path.is_file():
            continue
        meta = json.loads(path.read_text())
        if isinstance(meta, dict) and isinstance(meta.get("selection"), dict):
            meta = meta["selection"]
        if isinstance(meta, dict) and "select" in meta:
            return {k: meta.get(k) for k in SELECTION_KEYS}
    return None


def training_summary(method: str, seed: int) -> dict[str, Any]:
    """The checkpoint choice and the last epoch's training metrics of one student (its distill
    metrics.json); empty when the stage wrote none (e.g. a student trained elsewhere)."""
    path = distill_results(method, seed) / "metrics.json"
    if not path.is_file():
        return {}
    metrics = json.loads(path.read_text())
    keys = ("select", "selected_epoch", "selection_score", "final_tau_epoch")
    return {**{k: metrics[k] for k in keys if k in metrics}, "final": metrics.get("final", {})}


def read_temperatures(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV written by the distill stage (temperatures.csv, train_log.csv) as dicts."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@click.command()
@params_option
@user_errors
@locked(lambda **_: "analyze")
def analyze(params_path: str) -> None:
    """Class-wise robustness of the teacher and every student, with intervals and paired tests.

    Reads results/eval/<model>/records.npz of the teacher and of every <method>/seed<S> in
    distill.methods x seeds (all evaluated on the same samples), and writes results/fairness.json
    (Avg, Worst, NSD, class accuracies and stratified bootstrap intervals per model and attack),
    results/comparisons.json (seed summaries; McNemar and paired permutation tests of
    analyze.reference against every other method, Holm-corrected), the paper-style table
    (results/table.md, .tex, .csv, with published numbers from references/published.yaml where they
    exist), results/report.md, results/training.json (each student's checkpoint choice and last
    epoch, for `dvc exp show`), results/classwise.csv (every class of every model under every
    attack) and figures in plots/analyze/. Prints the markdown table.

    With more than 2 x analyze.classes_shown classes (CIFAR-100, Tiny-ImageNet) the per-class
    figures and the report's per-class table show the classes_shown worst and best classes only,
    ranked by analyze.reference's class accuracy under the headline attack (the mean over its
    seeds); every statistic is still computed over all classes.
    """
    params = load(params_path)
    cfg = params.analyze
    methods, seeds = list(params.distill.methods), list(params.seeds)
    groups = {m: {s: student_id(m, s) for s in seeds} for m in methods}
    models = ["teacher"] + [groups[m][s] for m in methods for s in seeds]
    _check_evaluated(models)
    class_names = class_names_of(params)
    records, fairness, seed_stats, comparisons, seed_tests, published = _numbers(params, models, groups,
                                                                                 len(class_names))

    first = records["teacher"]
    metas = {groups[m][s]: selection_meta(groups[m][s], m, s) for m in methods for s in seeds}
    selection = rep.describe_selection(metas, fallback=params.distill.select)
    configuration = rep.describe_configuration(params.evaluate, cfg, dataset=params.data.dataset,
                                               n_samples=first.n, eps=first.eps, attacks=first.attacks, seeds=seeds,
                                               selection=selection, protocol=first.protocol)
    ranking, ranked_by = rep.class_ranking(fairness, first.attacks, cfg.reference, first.protocol)
    shown = select_classes(ranking, cfg.classes_shown)
    write_text(FAIRNESS_JSON, dumps_strict(fairness))
    _write_classwise_csv(fairness, models, class_names)
    write_text(TRAINING_JSON, dumps_strict({groups[m][s]: training_summary(m, s) for m in methods for s in seeds}))
    write_text(COMPARISONS_JSON, dumps_strict({
        "meta": {"dataset": params.data.dataset, "class_names": class_names, "models": models,
                 "attacks": first.attacks, "n_samples": first.n, "eps": first.eps,
                 "eps_255": fraction_of_255(first.eps), "nsd_ddof": cfg.nsd_ddof, "confidence": cfg.confidence,
                 "n_bootstrap": cfg.n_bootstrap, "seed": cfg.seed, "selection": metas, "selection_rule": selection,
                 "configuration": configuration, "protocol": first.protocol},
        "seed_summary": seed_stats, "seed_comparisons": seed_tests, "comparisons": comparisons,
    }))
    table_md = _write_tables(params, fairness, first, published, selection, len(class_names))
    figures = _write_figures(params, fairness, seed_stats, groups, class_names, first.attacks, first.protocol,
                             shown, ranking, ranked_by)
    classes_md = _classes_markdown(fairness, groups, class_names, first.attacks, first.protocol, shown, ranked_by)
    _write_report(params, first, fairness, seed_stats, seed_tests, comparisons, table_md, figures, configuration,
                  len(class_names), classes_md)
    _track(params, fairness, models, [name for _, name in figures], first.protocol)
    click.echo(table_md, nl=False)


def _numbers(params: Params, models: list[str], groups: dict[str, dict[int, str]], num_classes: int) -> tuple:
    """(records, fairness, seed summaries, per-sample comparisons, seed comparisons, published numbers)."""
    cfg = params.analyze
    published_raw = yaml.safe_load(PUBLISHED.read_text()) if PUBLISHED.is_file() else {}
    records = rep.load_evaluations({m: eval_dir(m) / "records.npz" for m in models})
    fairness = rep.fairness_table(records, num_classes, cfg)
    return (records, fairness, rep.seed_summaries(fairness, groups, cfg.confidence),
            rep.compare_to_reference(records, groups, num_classes, cfg), rep.seed_comparisons(fairness, groups, cfg),
            applicable(rep.published_numbers(published_raw, params.data.dataset), params))


def _check_evaluated(models: list[str]) -> None:
    missing = [m for m in models if not (eval_dir(m) / "records.npz").is_file()]
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        stages = " ".join(evaluate_stage(m) for m in missing[:6])
        raise StageError(f"not evaluated yet: {shown} (no results/eval/<model>/records.npz); run "
                         f"`dvc repro {stages}`{' ...' if len(missing) > 6 else ''} or `dvc repro analyze`")


def _write_tables(params: Params, fairness: rep.Fairness, first: rep.Records, published: dict,
                  selection: str, num_classes: int) -> str:
    """results/table.{md,tex,csv} (the paper-style table); returns its markdown."""
    cfg, seeds = params.analyze, list(params.seeds)
    caption = rep.table_caption(dataset=params.data.dataset, n_samples=first.n, eps=first.eps, ddof=cfg.nsd_ddof,
                                confidence=cfg.confidence, n_bootstrap=cfg.n_bootstrap, selection=selection,
                                several_seeds=len(seeds) > 1, n_seeds=len(seeds), protocol=first.protocol,
                                bootstrap_method=cfg.bootstrap_method, num_classes=num_classes,
                                classes_shown=cfg.classes_shown)
    table = rep.results_table(fairness, rep.row_specs(list(params.distill.methods), seeds), first.attacks,
                              caption=caption, published=published, protocol=first.protocol)
    table_md = rep.table_markdown(table)
    write_text(TABLE_MD, table_md)
    write_text(TABLE_TEX, rep.table_latex(table))
    write_text(TABLE_CSV, rep.table_csv(table))
    return table_md


def _write_report(params: Params, first: rep.Records, fairness: rep.Fairness, seed_stats: dict, seed_tests: dict,
                  comparisons: dict, table_md: str, figures: list[tuple[str, str]],
                  configuration: list[tuple[str, str]], num_classes: int, classes_md: str = "") -> None:
    """results/report.md: the verdict first, then the table, the tests, the seeds and the figures."""
    cfg, protocol = params.analyze, first.protocol
    dataset = rep.dataset_label(params.data.dataset)
    verdict = rep.verdict(seed_tests, seed_stats, first.attacks, baseline="rslad", dataset=params.data.dataset,
                          protocol=protocol)
    intro = verdict + "\n\n" + (
        f"Profile `{params.profile}`: the teacher and {len(params.distill.methods)} method(s) x "
        f"{len(params.seeds)} seed(s), every model evaluated on the same {first.n} {dataset} test images at "
        f"L∞ eps = {fraction_of_255(first.eps)}. Generated by `absld analyze` from results/eval/; do not edit by hand.")
    write_text(REPORT_MD, rep.markdown_report(
        title=f"{rep.method_label(cfg.reference)} and its baselines: class-wise robustness on {dataset}",
        intro=intro, table_md=table_md, tests_md=rep.findings_markdown(comparisons, first.n, protocol),
        figures=[(caption, os.path.relpath(ANALYSIS_PLOTS / name, ANALYSIS_DIR)) for caption, name in figures],
        configuration=configuration,
        seeds_md="\n".join(part for part in (rep.seed_markdown(seed_stats, first.attacks, cfg.confidence, protocol),
                                              rep.seed_tests_markdown(seed_tests, protocol)) if part),
        notes=[rep.interval_note(rep.intervals_excluding_the_estimate(fairness),
                                 int(np.bincount(first.y, minlength=num_classes).min()), protocol)],
        classes_md=classes_md))


def _write_classwise_csv(fairness: rep.Fairness, models: list[str], class_names: list[str]) -> None:
    """results/classwise.csv: one row per model id (teacher, every seed), attack and class, every class."""
    write_csv(CLASSWISE_CSV, [{"model": model, "attack": attack, "class": name, "accuracy": entry["class_acc"][k]}
                              for model in models for attack, entry in fairness[model].items()
                              for k, name in enumerate(class_names)],
              columns=["model", "attack", "class", "accuracy"])


def _table_rows(groups: dict[str, dict[int, str]]) -> list[tuple[str, str | None, list[str]]]:
    """The rows of the figures: (label, method or None, model ids): the teacher, then each method."""
    rows: list[tuple[str, str | None, list[str]]] = [("Teacher", None, ["teacher"])]
    return rows + [(rep.method_label(m), m, list(by_seed.values())) for m, by_seed in groups.items()]


def _row_class_acc(fairness: rep.Fairness, rows: list[tuple[str, str | None, list[str]]], attacks: list[str],
                   num_classes: int) -> dict[str, dict[str, list[float]]]:
    """``{row label: {attack: [acc_k]}}``: each row's class accuracies (a method's: the mean over seeds)."""
    return {label: {a: [sum(fairness[m][a]["class_acc"][k] for m in ms) / len(ms) for k in range(num_classes)]
                    for a in attacks} for label, _, ms in rows}


def _classes_markdown(fairness: rep.Fairness, groups: dict[str, dict[int, str]], class_names: list[str],
                      attacks: list[str], protocol: rep.Protocol, shown: ClassSelection, ranked_by: str) -> str:
    """The report's "Worst and best classes" table when some classes are omitted; '' otherwise."""
    if shown.gap is None:
        return ""
    attack = rep.headline_attack(attacks)
    rows = _table_rows(groups)
    class_acc = {label: acc[attack] for label, acc in _row_class_acc(fairness, rows, [attack], len(class_names)).items()}
    return rep.classes_markdown(class_names, class_acc, worst=shown.worst, best=shown.best,
                                attack_name=rep.attack_label(attack, protocol=protocol), ranked_by=ranked_by,
                                worst_by_model=rep.worst_classes(fairness, attack), full_csv=str(CLASSWISE_CSV))


def _write_figures(params: Params, fairness: rep.Fairness, seed_stats: dict, groups: dict[str, dict[int, str]],
                   class_names: list[str], attacks: list[str], protocol: rep.Protocol, shown: ClassSelection,
                   ranking: list[float], ranked_by: str) -> list[tuple[str, str]]:
    """Write every PNG of plots/analyze/ afresh (stale figures go); return (caption, file name) pairs.
    Per-class figures show the classes of ``shown`` (ranked by ``ranking``, in words ``ranked_by``)."""
    attack_cols = [(a, rep.attack_label(a, protocol=protocol)) for a in attacks]
    rows = _table_rows(groups)
    class_acc = _row_class_acc(fairness, rows, attacks, len(class_names))
    classes = dict(classes_shown=params.analyze.classes_shown, ranking=ranking, ranked_by=ranked_by)
    subset = (f": {describe_shown(shown, ranked_by)} (every class in {CLASSWISE_CSV})"
              if shown.gap is not None else "")
    points: dict[str, dict[str, Any]] = {}
    for label, method, ms in rows:
        points[label] = {}
        for a in attacks:
            if len(ms) == 1:  # one model: bootstrap intervals
                entry = fairness[ms[0]][a]
                points[label][a] = (entry["avg"], tuple(entry["avg_ci"]), entry["nsd"], tuple(entry["nsd_ci"]))
            else:  # several seeds: mean and t-interval over seeds
                avg, nsd = seed_stats[method][a]["avg"], seed_stats[method][a]["nsd"]
                points[label][a] = (avg["mean"], tuple(avg["ci"]), None if nsd is None else nsd["mean"],
                                    None if nsd is None else tuple(nsd["ci"]))
    dataset = rep.dataset_label(params.data.dataset)
    several = len(params.seeds) > 1
    seeds_note = f", mean over {len(params.seeds)} seeds" if several else ""
    figures = [
        (f"Class-wise accuracy per attack ({dataset}{seeds_note}){subset}", "class_accuracy.png"),
        (f"NSD against Avg per attack ({dataset}; error bars: "
         f"{'t-intervals over seeds' if several else 'bootstrap intervals'})", "tradeoff.png"),
    ]
    with atomic_dir(ANALYSIS_PLOTS) as tmp:
        plot_class_accuracy(class_names, class_acc, attack_cols, tmp / "class_accuracy.png",
                            title=f"Class-wise accuracy on {dataset}{seeds_note}", **classes)
        plot_fairness_tradeoff(points, attack_cols, tmp / "tradeoff.png",
                               title=f"Accuracy against class-wise unfairness on {dataset}")
        _write_dvc_plot_data(tmp, rows, class_acc, points, attacks, groups, class_names, protocol)
        if "absld" in groups:
            for seed in groups["absld"]:
                csv_path = distill_results("absld", seed) / "temperatures.csv"
                if not csv_path.is_file():
                    continue
                name = f"temperatures_absld_seed{seed}.png"
                plot_temperatures(read_temperatures(csv_path), class_names, tmp / name,
                                  title=f"ABSLD class-wise temperatures ({dataset}, seed {seed})", **classes)
                band = (f": min–max band and median over all {len(class_names)} classes, curves of "
                        f"{describe_shown(shown, ranked_by)}" if shown.gap is not None else "")
                figures.append((f"ABSLD class-wise temperatures per epoch (seed {seed}){band}", name))
    return figures


DVC_TRAINING_KEYS = ("train_loss", "train_acc_adv")
"""The per-epoch training columns every method logs (plots/analyze/training.csv)."""


def _write_dvc_plot_data(folder: Path, rows: list[tuple[str, str | None, list[str]]],
                         class_acc: dict[str, dict[str, list[float]]], points: dict[str, dict[str, Any]],
                         attacks: list[str], groups: dict[str, dict[int, str]], class_names: list[str],
                         protocol: rep.Protocol) -> None:
    """The data of dvc.yaml's top-level plots (templates in .dvc/plots/), in long form so that one
    chart holds every model: classwise/<attack>.csv (model, class, accuracy: models side by side),
    training.csv (every student's curves overlaid), temperatures.csv (ABSLD's tau_adv and tau_nat
    per class and epoch) and tradeoff.csv (Avg against NSD per model and attack). Models are the
    table's rows: the teacher and each method (its mean over seeds)."""
    for attack in attacks:
        write_csv(folder / "classwise" / f"{rep.metric_name(attack, protocol)}.csv",
                  [{"model": label, "class": name, "accuracy": class_acc[label][attack][k]}
                   for label, _, _ in rows for k, name in enumerate(class_names)],
                  columns=["model", "class", "accuracy"])
    write_csv(folder / "tradeoff.csv",
              [{"model": label, "attack": rep.attack_label(attack, protocol=protocol), "order": order,
                "avg": points[label][attack][0], "nsd": points[label][attack][2]}
               for label, _, _ in rows for order, attack in enumerate(attacks) if points[label][attack][2] is not None],
              columns=["model", "attack", "order", "avg", "nsd"])
    curves: list[dict[str, Any]] = []
    for method, by_seed in groups.items():
        for seed in by_seed:
            log = distill_results(method, seed) / "train_log.csv"
            if log.is_file():
                curves += [{"method": rep.method_label(method), "model": f"{rep.method_label(method)} seed {seed}",
                            "epoch": int(row["epoch"]), **{k: float(row[k]) for k in DVC_TRAINING_KEYS if row.get(k)}}
                           for row in read_temperatures(log)]
    write_csv(folder / "training.csv", curves, columns=["method", "model", "epoch", *DVC_TRAINING_KEYS])
    temperatures = [{"seed": seed, "epoch": int(row["epoch"]), "class": class_names[int(row["class"])],
                     "tau_adv": float(row["tau_adv"]), "tau_nat": float(row["tau_nat"])}
                    for seed in groups.get("absld", {})
                    if (distill_results("absld", seed) / "temperatures.csv").is_file()
                    for row in read_temperatures(distill_results("absld", seed) / "temperatures.csv")]
    write_csv(folder / "temperatures.csv", temperatures, columns=["seed", "epoch", "class", "tau_adv", "tau_nat"])


def _track(params: Params, fairness: rep.Fairness, models: list[str], figure_names: list[str],
           protocol: rep.Protocol) -> None:
    """The summary table, headline numbers and figures in the stage's W&B run."""
    config = {"profile": params.profile, "dataset": params.data.dataset, "seeds": list(params.seeds),
              "methods": list(params.distill.methods), "select": params.distill.select,
              "evaluate": params.evaluate.model_dump(mode="json"), "analyze": params.analyze.model_dump(mode="json")}
    columns = ["model", "attack"] + [f"{s}{suffix}" for s in STATISTICS for suffix in ("", "_lo", "_hi")]
    rows: list[list[Any]] = []
    summary: dict[str, Any] = {}
    for model in models:
        for attack, entry in fairness[model].items():
            row: list[Any] = [model, rep.metric_name(attack, protocol)]
            for stat in STATISTICS:
                row += [entry[stat], *entry[f"{stat}_ci"]]  # type: ignore[literal-required]
                summary[f"{model}/{rep.metric_name(attack, protocol)}/{stat}"] = entry[stat]  # type: ignore[literal-required]
            rows.append(rep.json_safe(row))
    with Tracker(params, "analyze", config=config) as tracker:
        tracker.log_table("fairness_table", columns, rows)
        tracker.summary(rep.json_safe(summary))
        for name in figure_names:
            tracker.log_image(f"analyze/{Path(name).stem}", str(ANALYSIS_PLOTS / name))


def applicable(published: dict[str, rep.Published], params) -> dict[str, rep.Published]:
    """Published numbers that describe the models of this study: the teacher's only when it was
    imported (not trained here), and any entry only for the architecture it was published for."""
    ours = {"teacher": params.teacher.model.arch}
    ours.update({m: params.distill.student.arch for m in params.distill.methods})
    keep = {}
    for key, entry in published.items():
        if key == "teacher" and params.teacher.source == "train":
            continue
        if entry.arch is not None and ours.get(key) != entry.arch:
            continue
        keep[key] = entry
    return keep
