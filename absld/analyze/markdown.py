"""The markdown report (results/report.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


from ..params import AnalyzeConfig, EvaluateConfig, fraction_of_255
from ..fairness import (
    STATISTICS,
    SeedSummary,
)
from ..labels import _finite
from ..labels import Protocol
from ..labels import STAT_LABELS
from ..labels import aa_is_standard
from ..labels import attack_label
from ..labels import dataset_label
from ..labels import method_label
from ..labels import model_label
from .tables import Cell
from .tables import format_cell


def describe_configuration(evaluate: EvaluateConfig, analyze: AnalyzeConfig, *, dataset: str, n_samples: int,
                           eps: float, attacks: Sequence[str], seeds: Sequence[int], selection: str,
                           protocol: Protocol | None = None) -> list[tuple[str, str]]:
    """(name, value) lines of the configuration behind the numbers (for report.md and W&B); the
    evaluation's own settings come from the records' ``protocol`` where it has them."""
    protocol = protocol or {}
    aa = protocol.get("aa") or evaluate.aa.model_dump(mode="json")
    aa_text = (f"{aa['backend']} {aa.get('package_version') or ''}".rstrip() + f", version {aa['version']}"
               + (f" ({', '.join(aa['attacks'])})" if aa.get("attacks") else "")
               + ("" if aa_is_standard(protocol) else " — AA*: not the standard AutoAttack"))
    return [
        ("dataset", dataset_label(dataset)),
        ("test samples", f"{n_samples} (the first {'all' if evaluate.n_samples is None else evaluate.n_samples} "
                         "in test-set order)"),
        ("eps", f"{fraction_of_255(eps)} (L∞, pixel space)"),
        ("attacks", ", ".join(attack_label(a, protocol=protocol) for a in attacks)),
        ("FGSM", f"one step of eps, start x + {evaluate.fgsm.gauss_std:g}·N(0, I)"),
        ("PGD", f"{evaluate.pgd.steps} steps of {fraction_of_255(evaluate.pgd.step)}, uniform start, CE"),
        ("CW∞", f"{evaluate.cw.steps} steps of {fraction_of_255(evaluate.cw.step)}, margin loss, "
                f"kappa = {evaluate.cw.kappa:g}"),
        ("AutoAttack", aa_text),
        ("cascade", str(protocol.get("cascade", evaluate.cascade)).lower()),
        ("precision", str(protocol.get("precision", "float32" if not evaluate.amp else "bf16-autocast"))),
        ("evaluate seed", str(evaluate.seed)),
        ("seeds", ", ".join(map(str, seeds))),
        ("checkpoint selection", selection),
        ("NSD ddof", str(analyze.nsd_ddof)),
        ("intervals", f"{analyze.confidence:g} stratified bootstrap, {analyze.n_bootstrap} resamples, "
                      f"seed {analyze.seed}"),
        ("tests", f"McNemar exact (Avg), paired permutation ({analyze.n_permutations} resamples; Worst, NSD), "
                  f"Holm across baselines, reference {method_label(analyze.reference)}"),
    ]


def _clip(stat: str, interval: Sequence[Any]) -> tuple[float | None, float | None]:
    """An interval clipped to the range of the statistic (accuracies in [0, 1], NSD >= 0)."""
    low, high = _finite(interval[0]), _finite(interval[1])
    top = math.inf if stat == "nsd" else 1.0
    return (None if low is None else min(max(low, 0.0), top), None if high is None else min(max(high, 0.0), top))


def seed_markdown(summaries: Mapping[str, Mapping[str, Mapping[str, SeedSummary | None]]], attacks: Sequence[str],
                  confidence: float, protocol: Protocol | None = None) -> str:
    """Markdown tables of mean [t-interval] over seeds, one per statistic ('' with fewer than two seeds)."""
    if not summaries:
        return ""
    lines: list[str] = []
    for stat in STATISTICS:
        lines += [f"**{STAT_LABELS[stat]}** (mean [{int(round(confidence * 100))}% t-interval, clipped to the "
                  "statistic's range] over seeds)", "",
                  "| Method | " + " | ".join(attack_label(a, protocol=protocol) for a in attacks) + " |",
                  "|:---|" + "---:|" * len(attacks)]
        for method, by_attack in summaries.items():
            cells = []
            for attack in attacks:
                s = by_attack.get(attack, {}).get(stat)
                cells.append("–" if s is None else format_cell(Cell(s["mean"], *_clip(stat, s["ci"])), stat))
            lines.append(f"| {method_label(method)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def classes_markdown(class_names: Sequence[str], class_acc: Mapping[str, Sequence[float]], *,
                     worst: Sequence[int], best: Sequence[int], attack_name: str, ranked_by: str,
                     worst_by_model: Mapping[str, tuple[int, float] | None], full_csv: str) -> str:
    """The report's per-class table when only some classes are shown (many classes): the ``worst``
    and ``best`` classes (indices, in display order) with each row's accuracy (``class_acc``:
    ``{row label: [acc_k for every class]}``, fractions) under the headline attack, a row marking
    the classes omitted, and a sentence naming every model's worst class over *all* classes
    (``worst_by_model``: :func:`absld.report.worst_classes`), which is what the Worst columns report."""
    num_classes = len(class_names)
    omitted = num_classes - len(worst) - len(best)
    labels = list(class_acc)

    def row(rank: int, k: int) -> str:
        cells = [format_cell(Cell(_finite(class_acc[label][k])), "avg") for label in labels]
        return f"| {rank} | {class_names[k]} | " + " | ".join(cells) + " |"

    lines = [f"Table: {attack_name} accuracy (%) of the {len(worst)} worst and the {len(best)} best of the "
             f"{num_classes} classes, ranked by {ranked_by} (rank 1: the worst). The {omitted} classes between "
             f"are omitted here; every class of every model under every attack is in {full_csv}. Avg, Worst and "
             f"NSD in the tables above are computed over all {num_classes} classes.", "",
             "| rank | class | " + " | ".join(labels) + " |", "|---:|:---|" + "---:|" * len(labels)]
    lines += [row(i + 1, k) for i, k in enumerate(worst)]
    lines.append(f"| | … {omitted} classes omitted … |" + " |" * len(labels))
    lines += [row(num_classes - len(best) + i + 1, k) for i, k in enumerate(best)]
    named = [f"{model_label(m)}: {class_names[w[0]]} ({100 * w[1]:.2f} %)" for m, w in worst_by_model.items()
             if w is not None]
    lines += ["", f"Worst class over all {num_classes} classes under {attack_name} (shown above or not): "
              + "; ".join(named) + "."]
    return "\n".join(lines) + "\n"


def markdown_report(*, title: str, intro: str, table_md: str, tests_md: str,
                    figures: Sequence[tuple[str, str]], configuration: Sequence[tuple[str, str]],
                    seeds_md: str = "", notes: Sequence[str] = (), classes_md: str = "") -> str:
    """``results/report.md``: the table (and ``notes`` below it), the tests in words, the figures
    (``(caption, relative path)``) and the configuration; with many classes ``classes_md``
    (:func:`classes_markdown`) after the table, under "Worst and best classes"."""
    lines = [f"# {title}", "", intro, "", "## Class-wise robustness", "", table_md.rstrip(), ""]
    lines += [line for note in notes if note for line in (note, "")]
    if classes_md:
        lines += ["## Worst and best classes", "", classes_md.rstrip(), ""]
    if seeds_md:
        lines += ["## Across training seeds", "", seeds_md.rstrip(), ""]
    lines += ["## Statistical tests", "", tests_md.rstrip(), "", "## Figures", ""]
    for caption, path in figures:
        lines += [f"![{caption}]({path})", "", f"*{caption}*", ""]
    lines += ["## Configuration", "", "| setting | value |", "|:---|:---|"]
    lines += [f"| {name} | {value} |" for name, value in configuration]
    return "\n".join(lines) + "\n"
