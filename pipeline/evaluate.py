"""``absld evaluate --model ID``: every attack on the same test samples -> per-sample records."""

from __future__ import annotations

import click

from absld.evaluate.run import run_evaluate
from absld.vocab import ModelId

from .common import LAYOUT, code, load, locked, params_option, user_errors


def parse_model_id(ctx: click.Context | None, param: click.Parameter | None, value: str) -> str:
    """``teacher`` or ``<method>/seed<S>`` with a known method; the canonical form (``seed007`` -> ``seed7``)."""
    try:
        return str(ModelId.parse(value))
    except ValueError as exc:
        raise click.BadParameter(f"{exc} (e.g. absld/seed0)") from None


@click.command()
@params_option
@click.option("--model", "model_id", required=True, callback=parse_model_id, metavar="ID",
              help="teacher, or <method>/seed<S> for the student models/students/<method>/seed<S>.pt.")
@user_errors
@locked(lambda model_id, **_: f"evaluate-{model_id}")
def evaluate(params_path: str, model_id: str) -> None:
    """Attack one model and record, per test sample, whether it survives each attack.

    ID is `teacher` (models/teacher.pt) or `<method>/seed<S>` (models/students/<method>/seed<S>.pt).
    The model is evaluated on the first evaluate.n_samples test images in test-set order (all when
    null), the same for every model, at eps = evaluate.eps, in eval mode: clean, then the attacks
    of evaluate.attacks in order (docs/method.md §6) -- fgsm (one step of eps from x + gauss_std N(0, I)),
    pgd (PGD-<steps> on CE from a uniform start, recorded as pgd<steps>, e.g. pgd20), cw (the PGD
    loop on the CW margin with confidence kappa) and aa (AutoAttack through evaluate.aa.backend;
    version custom with a short attack list is a cheap CPU stand-in, not the paper's number).

    An attack only runs on clean-correct samples. evaluate.cascade false runs every attack on every
    clean-correct sample; true runs each attack only on the samples that survived every earlier
    one (faster; each column then means 'robust to this and all earlier attacks'). The column
    worst (robust to every attack) is the same either way for fgsm, pgd and cw: their random
    starts are drawn per sample from evaluate.seed, whatever the batch. AutoAttack seeds itself
    with evaluate.seed on each call of evaluate.aa.batch_size samples, so its restarts depend on
    which samples share a call. Everything runs in float32, as the reference evaluations, unless
    evaluate.amp is true: then clean, FGSM, PGD and CW use runtime.amp (bf16 autocast on CUDA);
    AutoAttack always runs in float32. records.npz keeps the evaluation's protocol (precision,
    cascade, seed, each attack's settings, the AutoAttack backend and its version), and a
    non-standard AutoAttack (a custom or rand version, or torchattacks' port) is labelled AA* and
    logged to W&B as aa_nonstandard.

    A killed evaluation resumes where it stopped: finished attacks and batches are saved to
    checkpoints/eval/ID/progress.npz (after each attack, and within one every
    $ABSLD_EVAL_SAVE_SECONDS seconds, default 30) and the records end the same as an uninterrupted
    run's; the file is ignored when the model, data, settings or code changed, and removed at the end.

    \b
    Writes (each directory replaced as a whole):
      results/eval/ID/records.npz   index, y, correct_<attack> (clean, ..., worst), eps, protocol
      results/eval/ID/metrics.json  per attack: avg, worst, nsd (analyze.nsd_ddof), class_acc; n, eps,
                                    cascade, protocol, checkpoint sha256, selection
      plots/eval/ID/<attack>.json   class-wise accuracy for DVC's bar_horizontal plots
      plots/eval/ID/classwise.png   grouped bars, one group per class
      logs/eval/ID.json             seconds per attack (untracked: times differ on every run)
    and logs a class x attack table, one bar chart per attack and the summary to W&B.
    """
    run_evaluate(load(params_path), model_id, LAYOUT, code=code("evaluate"), echo=click.echo, params_path=params_path)
