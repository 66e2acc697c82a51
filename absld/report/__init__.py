"""Tables, sentences and report specs from per-sample evaluation records (METHOD.md §6).

Pure functions: no click, no params file, no layout. The ``absld analyze`` and ``absld report``
commands decide which files to read and where to write; this module turns

- ``records.npz`` arrays (:class:`Records`) into the ``results/fairness.json`` contract
  (:func:`fairness_table`), seed summaries (:func:`seed_summaries`) and the paired tests of the
  reference method against every baseline (:func:`compare_to_reference`);
- those numbers into the paper-style table in markdown, LaTeX and CSV (:func:`results_table`,
  :func:`table_markdown`, :func:`table_latex`, :func:`table_csv`), plain-words test results
  (:func:`findings`), the markdown report (:func:`markdown_report`);
- and into a W&B report spec (:func:`build_wandb_report`, :func:`report_outline`), built without
  touching the network.

Units: every number stored is a fraction in [0, 1] (NSD a ratio); tables and sentences show Avg and
Worst in percent ("points" for differences) and NSD as a decimal. Undefined values (NaN, e.g. NSD
when every class accuracy is 0) become ``null`` in JSON (:func:`json_safe`) and "–" in tables.

**Several seeds** (a choice, documented here and in the report): the tests compare the reference
and a baseline on *seed-matched pairs stacked*: the records of ``ref/seed<S>`` are paired with those
of ``baseline/seed<S>`` for every seed S both have, and the pairs (sample i, seed S) are pooled into
one paired sample of size N x #seeds. Avg, Worst and NSD are then those of the seed-pooled class
accuracies (the mean over seeds of acc_k, since every seed sees the same samples), and the tests
(McNemar exact, paired permutation) swap the two methods' outcomes within each (sample, seed) pair.
The p-values are conditional on the trained models: they measure test-sample noise, not the
variability of training; the spread over training seeds is reported separately
(:func:`seed_summaries`: mean, std, t-interval). With one seed this is the plain paired comparison.
"""

from __future__ import annotations

# The package's public names, one module per job (labels, evaluations, analysis, words, published,
# tables, markdown, wandb_report); `from absld import report as rep` keeps working.
from ..records import WORST, Records  # noqa: F401 - the records the analysis reads (absld.records owns them)
from .base import (  # noqa: F401
    ReportError,
)
from .labels import (  # noqa: F401
    format_p,
    METHOD_LABELS,
    Protocol,
    SELECTION_RULES,
    STAT_LABELS,
    aa_description,
    aa_is_standard,
    attack_label,
    attack_sort_key,
    dataset_label,
    method_label,
    metric_name,
    model_label,
    order_attacks,
)
from .evaluations import (  # noqa: F401
    check_same_samples,
    load_evaluations,
    protocol_differences,
    read_records,
)
from .analysis import (  # noqa: F401
    Comparisons,
    FAIRNESS_KEYS,
    Fairness,
    FairnessEntry,
    MethodSeeds,
    POOLING,
    PairComparison,
    PairedTest,
    SeedComparisons,
    class_ranking,
    compare_to_reference,
    fairness_table,
    headline_attack,
    interval_note,
    intervals_excluding_the_estimate,
    json_safe,
    seed_comparisons,
    seed_summaries,
    seed_tests_markdown,
    verdict,
    worst_classes,
)
from .words import (  # noqa: F401
    findings,
    findings_markdown,
)
from .published import (  # noqa: F401
    Published,
    published_numbers,
)
from .tables import (  # noqa: F401
    Cell,
    ResultsTable,
    Row,
    RowSpec,
    describe_selection,
    format_cell,
    latex_escape,
    results_table,
    row_specs,
    table_caption,
    table_csv,
    table_latex,
    table_markdown,
)
from .markdown import (  # noqa: F401
    classes_markdown,
    describe_configuration,
    markdown_report,
    seed_markdown,
)
from .wandb_report import (  # noqa: F401
    build_wandb_report,
    report_outline,
)
