"""The paper-style results table: markdown, LaTeX and CSV."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


from ..params import fraction_of_255
from ..vocab import ModelId
from ..fairness import (
    STATISTICS,
    seed_summary,
)
from ..labels import _finite
from ..labels import Protocol
from ..labels import SELECTION_RULES
from ..labels import STAT_LABELS
from ..labels import aa_description
from ..labels import aa_is_standard
from ..labels import attack_label
from ..labels import dataset_label
from ..labels import method_label
from ..labels import order_attacks
from .published import Published


@dataclass(frozen=True)
class Cell:
    """A table cell: a point value, with a bootstrap interval (one seed) or a std over seeds."""

    value: float | None
    low: float | None = None
    high: float | None = None
    std: float | None = None


@dataclass(frozen=True)
class Row:
    label: str
    cells: dict[tuple[str, str], Cell]  # (attack, stat) -> Cell
    published: bool = False


@dataclass(frozen=True)
class RowSpec:
    """One row of the table: ``key`` is ``teacher`` or a method (published lookup), ``models`` its
    model ids (several seeds: the row shows their mean ± std)."""

    key: str
    label: str
    models: tuple[str, ...]


@dataclass(frozen=True)
class ResultsTable:
    attacks: list[str]
    rows: list[Row]
    caption: str
    notes: list[str] = field(default_factory=list)
    protocol: dict[str, Any] = field(default_factory=dict)  # the evaluation's (labels a non-standard AA)


def row_specs(methods: Sequence[str], seeds: Sequence[int], teacher: bool = True) -> list[RowSpec]:
    """Rows like the paper: the teacher first, then the methods in ``distill.methods`` order."""
    specs = [RowSpec("teacher", method_label("teacher"), ("teacher",))] if teacher else []
    specs += [RowSpec(m, method_label(m), tuple(f"{m}/seed{s}" for s in seeds)) for m in methods]
    return specs


def _cell(fairness: Mapping[str, Mapping[str, Mapping[str, Any]]], models: Sequence[str], attack: str,
          stat: str) -> Cell:
    if len(models) == 1:
        entry = fairness[models[0]][attack]
        ci = entry.get(f"{stat}_ci") or [None, None]
        return Cell(_finite(entry[stat]), _finite(ci[0]), _finite(ci[1]))
    values = [_finite(fairness[m][attack][stat]) for m in models]
    if any(v is None for v in values):
        return Cell(None)
    summary = seed_summary([float(v) for v in values])  # type: ignore[arg-type]
    return Cell(summary["mean"], std=summary["std"])


def published_key(attack: str, protocol: Protocol | None) -> str:
    """The key of ``attack`` in references/published.yaml: PGD's is ``pgd<steps>`` (``pgd20``), so a
    published PGD-20 number is only ever shown beside our PGD with 20 steps; the others are theirs."""
    steps = ((protocol or {}).get("pgd") or {}).get("steps")
    return f"pgd{steps}" if attack == "pgd" and steps else attack


def results_table(fairness: Mapping[str, Mapping[str, Mapping[str, Any]]], specs: Sequence[RowSpec],
                  attacks: Sequence[str], *, caption: str, published: Mapping[str, Published] | None = None,
                  protocol: Protocol | None = None, notes: Sequence[str] = ()) -> ResultsTable:
    """The paper's layout: one row per spec (plus an "… (published)" row right after it where
    published numbers exist for any of the table's attacks), one (Avg, Worst, NSD) group per attack.
    ``notes``: footnotes to keep (the published anchors left out, and why)."""
    published = published or {}
    attacks = order_attacks(list(attacks))
    rows: list[Row] = []
    notes = list(notes)
    for spec in specs:
        cells = {(a, s): _cell(fairness, spec.models, a, s) for a in attacks for s in STATISTICS}
        rows.append(Row(spec.label, cells))
        anchor = published.get(spec.key)
        if anchor is None:
            continue
        pub_cells = {(a, s): Cell(anchor.values[published_key(a, protocol)][s]) for a in attacks for s in STATISTICS
                     if s in anchor.values.get(published_key(a, protocol), {})}
        if pub_cells:
            rows.append(Row(f"{spec.label} (published)", pub_cells, published=True))
            notes.append(f"{spec.label} (published): {anchor.source or 'source not given'}"
                         + (f" — {anchor.description}" if anchor.description else ""))
    return ResultsTable(attacks=attacks, rows=rows, caption=caption, notes=notes, protocol=dict(protocol or {}))


def format_cell(cell: Cell | None, stat: str, *, latex: bool = False, empty: str = "–") -> str:
    """``84.92 [84.2, 85.6]`` (Avg/Worst in %, interval to 1 decimal), ``0.087 [0.071, 0.102]`` (NSD),
    ``84.92 ± 0.31`` (mean ± std over seeds), or ``empty``."""
    if cell is None or cell.value is None:
        return empty
    scale, digits, ci_digits = (1.0, 3, 3) if stat == "nsd" else (100.0, 2, 1)
    text = f"{scale * cell.value:.{digits}f}"
    if cell.std is not None:
        pm = r"$\pm$" if latex else "±"
        extra = f"{pm} {scale * cell.std:.{digits}f}" if math.isfinite(cell.std) else ""
        return f"{text} {extra}".strip()
    if cell.low is not None and cell.high is not None:
        interval = f"[{scale * cell.low:.{ci_digits}f}, {scale * cell.high:.{ci_digits}f}]"
        return f"{text}{{\\scriptsize\\,{interval}}}" if latex else f"{text} {interval}"
    return text


def _column_names(attacks: Sequence[str], protocol: Protocol | None = None) -> list[str]:
    return [f"{attack_label(a, protocol=protocol)} {STAT_LABELS[s]}" + ("" if s == "nsd" else " (%)") for a in attacks for s in STATISTICS]


def table_markdown(table: ResultsTable) -> str:
    """The table in markdown (caption above, sources of published numbers below)."""
    header = ["Method"] + _column_names(table.attacks, table.protocol)
    lines = [f"Table: {table.caption}", "", "| " + " | ".join(header) + " |",
             "|:---|" + "---:|" * (len(header) - 1)]
    for row in table.rows:
        label = f"*{row.label}*" if row.published else row.label
        cells = [format_cell(row.cells.get((a, s)), s) for a in table.attacks for s in STATISTICS]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    if table.notes:
        lines += ["", "Published numbers: " + "; ".join(table.notes) + "."]
    return "\n".join(lines) + "\n"


def table_csv(table: ResultsTable) -> str:
    """The table as CSV (one header row; cells as in markdown, empty where there is no number)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["Method", *_column_names(table.attacks, table.protocol)])
    for row in table.rows:
        writer.writerow([row.label, *(format_cell(row.cells.get((a, s)), s, empty="")
                                      for a in table.attacks for s in STATISTICS)])
    return buffer.getvalue()


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text; ``∞`` and ``±`` become math."""
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text).replace("L∞", r"$L_\infty$")
    return out.replace("∞", r"$\infty$").replace("±", r"$\pm$").replace("α", r"$\alpha$").replace("—", "---")


def table_latex(table: ResultsTable, label: str = "tab:class-wise-robustness") -> str:
    """The table as a booktabs ``table*`` (needs ``\\usepackage{booktabs,graphicx}``)."""
    n_attacks = len(table.attacks)
    spec = "l" + "ccc" * n_attacks
    groups = " & ".join(rf"\multicolumn{{3}}{{c}}{{{attack_label(a, latex=True, protocol=table.protocol)}}}"
                         for a in table.attacks)
    rules = " ".join(rf"\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}" for i in range(n_attacks))
    stats = " & ".join(STAT_LABELS[s] for _ in table.attacks for s in STATISTICS)
    caption = latex_escape(table.caption)
    if table.notes:
        caption += " Published numbers: " + "; ".join(latex_escape(n) for n in table.notes) + "."
    lines = [
        "% Generated by `absld analyze`; needs \\usepackage{booktabs,graphicx}.",
        r"\begin{table*}[t]",
        r"\centering",
        rf"\caption{{{caption}}}",
        rf"\label{{{label}}}",
        r"\resizebox{\textwidth}{!}{%",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        rf" & {groups} \\",
        rules,
        rf"Method & {stats} \\",
        r"\midrule",
    ]
    for row in table.rows:
        cells = [format_cell(row.cells.get((a, s)), s, latex=True, empty="--") for a in table.attacks
                 for s in STATISTICS]
        name = latex_escape(row.label)
        if row.published:
            name = rf"\textit{{{name}}}"
            cells = [c if c == "--" else rf"\textit{{{c}}}" for c in cells]
        lines.append(f"{name} & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table*}"]
    return "\n".join(lines) + "\n"


def describe_checkpoints(metas: Mapping[str, Mapping[str, Any] | None], fallback: str | None = None) -> str:
    """The students' checkpoint-selection rule in words, from their selection meta (``select``,
    ``selected_epoch``, ``selection_split``), with the selected epochs per method; ``fallback``
    (params' ``distill.select``) where no student carries the meta."""
    rules: dict[str, dict[str, list[str]]] = {}  # select -> method -> epochs (seed order)
    for model, meta in metas.items():
        if not meta or meta.get("select") is None:
            continue
        method = ModelId.parse(model).method
        epoch = meta.get("selected_epoch")
        rules.setdefault(str(meta["select"]), {}).setdefault(method, []).append("?" if epoch is None else str(epoch))
    if not rules:
        if fallback is None:
            return "Checkpoint selection: not recorded."
        return f"Students' checkpoint: {SELECTION_RULES.get(fallback, fallback)} (distill.select = {fallback})."
    parts = []
    for select, by_method in rules.items():
        rule = f"{SELECTION_RULES.get(select, select)} (distill.select = {select})"
        epochs = {e for es in by_method.values() for e in es}
        if select == "last":
            pass
        elif len(epochs) == 1:
            rule += f", epoch {epochs.pop()} for every student"
        else:
            rule += "; selected epochs " + ", ".join(f"{method_label(m)} {'/'.join(es)}" for m, es in by_method.items())
        parts.append(rule)
    prefix = "Students' checkpoint: " if len(parts) == 1 else "Students' checkpoints differ in selection: "
    return prefix + "; ".join(parts) + "."


def table_caption(*, dataset: str, n_samples: int, eps: float, ddof: int, confidence: float, n_bootstrap: int,
                  selection: str, several_seeds: bool = False, n_seeds: int = 1,
                  protocol: Protocol | None = None, bootstrap_method: str = "percentile",
                  num_classes: int | None = None, classes_shown: int | None = None) -> str:
    """The caption: what the numbers are, the intervals, the NSD ddof, the selection rule, and from
    the records' ``protocol``: the cascade, bf16 evaluation, and any AutoAttack that is not the
    standard one (so a CPU stand-in is never read as AA). With more than ``2 * classes_shown`` of
    ``num_classes`` classes (figures then show some classes only) it says that Worst and NSD are
    over all of them."""
    protocol = protocol or {}
    level = int(round(confidence * 100))
    spread = (f"Students: mean ± std over {n_seeds} seeds (teacher: {level}% intervals, Avg and NSD by a stratified "
              f"{bootstrap_method} bootstrap of {n_bootstrap} resamples, Worst by inverting the exact binomial law "
              f"of the smallest class accuracy)" if several_seeds else
              f"Brackets: {level}% intervals, Avg and NSD by a stratified {bootstrap_method} bootstrap "
              f"({n_bootstrap} resamples), Worst by inverting the exact (mid-p) binomial law of the smallest class "
              f"accuracy, the other classes at their estimates (the bootstrap of a minimum under-covers when "
              f"classes are close)")
    many = num_classes is not None and classes_shown is not None and num_classes > 2 * classes_shown
    worst, spread_of = ((f"worst-class accuracy over all {num_classes} classes", f"the {num_classes} class accuracies")
                        if many else ("worst-class accuracy", "the class accuracies"))
    text = (f"Class-wise robustness on {dataset_label(dataset)} ({n_samples} test samples, L∞ eps = "
            f"{fraction_of_255(eps)}). Avg: overall accuracy (%); Worst: {worst} (%); "
            f"NSD: std/mean of {spread_of} (ddof = {ddof}; lower is fairer). {spread}. {selection}")
    if protocol.get("cascade"):
        text += (" Attacks run as a cascade: each column counts samples robust to that attack and every "
                 "earlier one.")
    if protocol.get("precision", "float32") != "float32":
        text += f" Clean, FGSM, PGD and CW were evaluated under {protocol['precision']} (not float32)."
    if not aa_is_standard(protocol):
        text += f" {aa_description(protocol)}."
    aa_subset = (protocol.get("aa") or {}).get("n_samples")
    if aa_subset is not None and aa_subset < n_samples:
        text += (f" {attack_label('aa', protocol=protocol)} and Worst-case cover the first {aa_subset} of the "
                 f"{n_samples} test samples only (evaluate.aa.n_samples).")
    return text
