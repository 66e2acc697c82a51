"""``absld evaluate --model ID``: every attack on the same test samples -> per-sample records."""

from __future__ import annotations

import click

from absld.evaluate.run import run_evaluate
from absld.vocab import ModelId

from .common import code, load, locked, model_layout, params_option, user_errors


def parse_model_id(ctx: click.Context | None, param: click.Parameter | None, value: str) -> str:
    """``teacher`` or ``<method>/seed<S>`` with a known method; the canonical form (``seed007`` -> ``seed7``)."""
    try:
        return str(ModelId.parse(value))
    except ValueError as exc:
        raise click.BadParameter(f"{exc} (e.g. absld/seed0)") from None


@click.command()
@params_option
@click.option("--model", "model_id", required=True, callback=parse_model_id, metavar="ID",
              help="teacher, or <method>/seed<S> for the student models/students/<method>/seed<S>.pt "
                   "(scratch/models/... outside distill.methods x seeds).")
@user_errors
@locked(lambda model_id, **_: f"evaluate-{model_id}")
def evaluate(params_path: str, model_id: str) -> None:
    """Attack one model and record, per test sample, whether it survives each attack.

    ID is `teacher` (models/teacher.pt) or `<method>/seed<S>` (models/students/<method>/seed<S>.pt).
    Every model is evaluated on the same first evaluate.n_samples test images (null: all), at eps =
    evaluate.eps, in eval mode: clean, then evaluate.attacks in order -- fgsm, pgd (recorded as pgd
    whatever its steps; labelled PGD-<steps>), cw (PGD on the CW margin) and aa (AutoAttack through evaluate.aa.backend; a custom
    or rand version, or torchattacks' port, is labelled AA*). An attack runs on clean-correct
    samples only (evaluate.cascade true: only on those robust to every earlier attack). Random
    starts are drawn per sample from evaluate.seed; float32 unless evaluate.amp. A killed run
    resumes from checkpoints/eval/ID/progress.npz (saved every $ABSLD_EVAL_SAVE_SECONDS, default 30).

    \b
    Writes results/eval/ID/records.npz (index, y, correct_<attack>, eps, protocol) and metrics.json
    (avg, worst, nsd, class_acc per attack), plots/eval/ID/classwise.png,
    logs/eval/ID.json (seconds per attack) and a W&B run. A student outside distill.methods x seeds
    (no DVC stage) is read from and written under scratch/ (as `absld distill` put it there:
    gitignored, never read by analyze). Details: docs/evaluation.md.
    """
    params = load(params_path)
    run_evaluate(params, model_id, model_layout(params, model_id), code=code("evaluate"), echo=click.echo)
