"""``absld distill --method M --seed S``: one student -> models/students/<M>/seed<S>.pt."""

from __future__ import annotations

import click

from absld.train.distill import run_distill
from absld.vocab import METHOD_NAMES

from .common import code, load, locked, model_layout, params_option, user_errors


@click.command()
@params_option
@click.option("--method", "method_name", required=True, type=click.Choice(METHOD_NAMES),
              help="The training method (its settings: distill.<method> in params.yaml).")
@click.option("--seed", required=True, type=click.IntRange(min=0),
              help="The student's seed (initialisation, batch order, augmentation, attacks).")
@click.option("--stop-after", type=click.IntRange(min=1), default=None,
              help="Stop after this many epochs in this call (the next call resumes).")
@user_errors
@locked(lambda method_name, seed, **_: f"distill-{method_name}-seed{seed}")
def distill(params_path: str, method_name: str, seed: int, stop_after: int | None) -> None:
    """Train one student with METHOD (from the teacher in models/teacher.pt for the distillation
    methods; sat, trades, frl_rw, frl_rwrm and cfa train without one).

    The recipe is distill.train (SGD, milestones) changed by distill.<method>.train, the attack is
    distill.attack, the student is distill.student. The run resumes from
    checkpoints/distill/<method>/seed<seed>/ after an interruption. distill.select picks the
    checkpoint: last (default), val_fair_best or test_fair_best (max PGD avg + worst-class accuracy
    on the held-out validation split or, like the official script, on the test set: model
    selection on the test set), evaluated with distill.select_eval after the epochs e with
    e % every == 0 or e >= the method's first LR milestone (select_* columns of the training log).
    The selection never changes training. Writes the student to
    models/students/<method>/seed<seed>.pt and its logs (for ABSLD the class-wise temperatures,
    temperatures.csv and a PNG; metrics.json's final_tau_* are those used during the selected
    epoch) to results/distill/<method>/seed<seed>/. FRL and CFA measure the student on the
    validation split (data.val_per_class) after every epoch and log their class-wise state
    (frl_state.csv / cfa_state.csv and a PNG); CFA writes its weight average
    (distill.cfa.average), to which distill.select does not apply. A METHOD or SEED outside
    distill.methods x seeds (no DVC stage) writes these under scratch/ instead (scratch/models/...,
    scratch/results/..., scratch/plots/...; gitignored, never read by analyze), and says so.
    """
    params = load(params_path)
    layout = model_layout(params, f"{method_name}/seed{seed}")
    run_distill(params, method_name, seed, layout, code=code("distill"), echo=click.echo, stop_after=stop_after)
