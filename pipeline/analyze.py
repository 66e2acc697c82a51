"""``absld analyze``: fairness statistics over every evaluated model -> fairness.json, tables, report, plots."""

from __future__ import annotations

import click

from absld.analyze.study import run_analyze

from .common import LAYOUT, load, locked, params_option, user_errors


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
    run_analyze(load(params_path), LAYOUT, echo=click.echo)
