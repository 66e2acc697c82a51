"""``absld distill --method M --seed S``: one student -> models/students/<M>/seed<S>.pt."""

from __future__ import annotations

from typing import Any, Callable

import click
import torch

from absld import data as data_lib
from absld.config import DISTILL_METHODS, DistillConfig, Params, TrainConfig, fraction_of_255
from absld.evaluate import fair_score, first_n, validation_accuracy
from absld.io import sha256_file, write_csv, write_json
from absld.methods import METHODS, ClassAccuracy, MethodContext, build_method
from absld.models import build_model, load_checkpoint, save_checkpoint
from absld.plots import plot_class_state, plot_temperatures, plot_training
from absld.runtime import Runtime, seed_everything, setup
from absld.tracking import Tracker, artifact_name, name_classes
from absld.train import FitResult, fit
from absld.vocab import METHOD_LABELS

from .common import (
    locked,
    TEACHER_CHECKPOINT, TEACHER_INFO, StageError, data_dir, distill_plots, distill_resume, distill_results,
    fingerprint, load, params_option, student_checkpoint, student_id, user_errors, write_timings,
)



@click.command()
@params_option
@click.option("--method", "method_name", required=True, type=click.Choice(DISTILL_METHODS),
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
    (distill.cfa.average), to which distill.select does not apply.
    """
    params = load(params_path)
    cfg = params.distill
    if seed not in params.seeds:
        click.echo(f"note: seed {seed} is not in params seeds {params.seeds} (DVC will not track it)")
    rt = setup(params.runtime)
    prepared = data_lib.load_prepared(data_dir(params))
    method_cfg = cfg.method_config(method_name)
    train_cfg = method_cfg.train.apply(cfg.train)
    select_fn, select_epochs, selection_rule = _selection(params, method_name, train_cfg, prepared, rt, seed)
    teacher, teacher_sha = _teacher(method_name, prepared, rt, params.data.dataset)

    _check_method_needs(params, method_name, method_cfg, prepared)
    seed_everything(seed)
    student = _student(params, prepared, rt)
    validate = _validation(student, prepared, rt, seed) if method_cfg.validates else None
    method = build_method(method_name, method_cfg, MethodContext(
        num_classes=prepared.num_classes, attack=cfg.attack, teacher=teacher, kl_reduction=cfg.kl_reduction,
        student=student, validate=validate))
    images, labels = prepared.training_subset(cfg.train_per_class, params.data.split_seed, "distill.train_per_class")
    loader = data_lib.TensorLoader(
        images, labels, batch_size=train_cfg.batch_size, device=rt.device, shuffle=True,
        crop_padding=params.data.augment.crop_padding, flip=params.data.augment.flip, seed=seed,
        channels_last=rt.channels_last,
    )
    key = _resume_key(params, method_name, seed, train_cfg, prepared.manifest, teacher_sha)
    with Tracker(params, "distill", name=f"distill-{method_name}-seed{seed}",
                 config=_run_config(params, method_name, seed)) as tracker:
        result = fit(student, method, loader, train_cfg, rt, checkpoint=distill_resume(method_name, seed),
                     fingerprint=key, select_fn=select_fn, select_epochs=select_epochs,
                     on_epoch=lambda row: tracker.log(name_classes(row, prepared.class_names)),
                     stop_after=stop_after, desc=f"{method_name}/seed{seed}")
        if not rt.is_main:  # data-parallel training: the process of rank 0 writes
            return
        if len(result.history) < train_cfg.epochs:
            click.echo(f"stopped after epoch {len(result.history)} of {train_cfg.epochs}; "
                       "run the stage again to continue")
            return
        selection = _write_student(params, method_name, seed, student, method, result, train_cfg, selection_rule,
                                   prepared.class_names, teacher_sha, tracker)
    click.echo(f"{method_name}/seed{seed}: {train_cfg.epochs} epochs, checkpoint '{selection['select']}' "
               f"(epoch {selection['selected_epoch']}) -> {student_checkpoint(method_name, seed)}")
    if selection["selection_on_test_set"]:
        click.echo("note: this checkpoint was selected on the test set (the official script's rule); "
                   "its test-set numbers are not a held-out estimate")


def _selection(params: Params, method_name: str, train_cfg: TrainConfig, prepared: data_lib.Prepared,
               rt: Runtime, seed: int) -> tuple[Callable[[torch.nn.Module], dict[str, float]] | None, list[int], str]:
    """distill.select as (score function or None for ``last``, the epochs it runs after, the rule in words)."""
    cfg = params.distill
    if cfg.select == "val_fair_best" and len(prepared.val_labels) == 0:
        raise StageError("distill.select val_fair_best needs a validation split; set data.val_per_class > 0")
    select_epochs = cfg.selection_epochs(method_name)  # the method's own milestones count
    average = averaged(cfg, method_name)
    if average:
        return None, [], (f"the weight average after the last epoch ({train_cfg.epochs}; distill.{method_name}.average"
                          f" = {average}); distill.select does not apply to it")
    if cfg.select == "last":
        return None, select_epochs, f"the last epoch ({train_cfg.epochs})"
    if not select_epochs:
        raise StageError(f"distill.select_eval.every = {cfg.select_eval.every} picks no epoch of {method_name}'s "
                         f"{train_cfg.epochs} (milestones {train_cfg.milestones}); lower it (1: every epoch)")
    sel = cfg.select_eval
    images, labels = ((prepared.val_images, prepared.val_labels) if cfg.select == "val_fair_best"
                      else (prepared.test_images, prepared.test_labels))
    images, labels = first_n(images, labels, sel.n_samples)

    def select_fn(model: torch.nn.Module) -> dict[str, float]:
        return fair_score(model, images, labels, prepared.num_classes, rt, eps=sel.eps,
                          step=sel.step, steps=sel.steps, batch_size=sel.batch_size, seed=seed)

    return select_fn, select_epochs, _selection_rule(cfg, train_cfg, select_epochs, len(labels))


def _check_method_needs(params: Params, method_name: str, method_cfg: Any, prepared: data_lib.Prepared) -> None:
    """Refuse, before any work, a method that measures the student on a validation split when the
    prepared data has none (the params check refuses data.val_per_class 0 already) or when the
    images it measures on miss a class."""
    if not method_cfg.validates:
        return
    if len(prepared.val_labels) == 0:
        raise StageError(f"{method_name} measures the student on the validation split after every epoch, but "
                         f"{params.data.dataset} was prepared with data.val_per_class = 0; set it > 0 "
                         "(the official FRL code holds out 300 images per class, CFA's 2%)")
    n = method_cfg.validation.n_samples
    _, labels = first_n(prepared.val_images, prepared.val_labels, n)
    missing = prepared.classes_without_images(labels)
    if missing:
        shown = ", ".join(prepared.class_names[k] for k in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise StageError(f"distill.{method_name}.validation.n_samples = {n}: the first {len(labels)} validation "
                         f"images hold no image of {len(missing)} classes ({shown}), whose class-wise accuracy "
                         f"{method_name} needs; raise it or set null (all {len(prepared.val_labels)})")


def _validation(student: torch.nn.Module, prepared: data_lib.Prepared, rt: Runtime, seed: int):
    """The method's measurement of ``student`` on the validation split (absld.methods.base.Validate)."""
    num_classes = prepared.num_classes

    def validate(attack) -> ClassAccuracy:
        images, labels = first_n(prepared.val_images, prepared.val_labels, attack.n_samples)
        acc = validation_accuracy(student, images, labels, num_classes, rt, eps=attack.eps, step=attack.step,
                                  steps=attack.steps, batch_size=attack.batch_size, seed=seed)
        return ClassAccuracy(clean=torch.as_tensor(acc["clean"]), robust=torch.as_tensor(acc["robust"]),
                             clean_total=acc["clean_total"], robust_total=acc["robust_total"], n=acc["n"])

    return validate


def averaged(cfg: DistillConfig, method_name: str) -> str | None:
    """The kind of weight average the method writes as its student (CFA's fawa/ema), else None."""
    average = getattr(cfg.method_config(method_name), "average", "none")
    return None if average == "none" else average


def _student(params: Params, prepared: data_lib.Prepared, rt: Runtime) -> torch.nn.Module:
    """A fresh distill.student on the device (initialised from the global seed)."""
    student = params.distill.student
    mean, std = (prepared.mean, prepared.std) if student.normalize else (None, None)
    return rt.to_device(build_model(student.arch, num_classes=prepared.num_classes,
                                    in_channels=prepared.in_channels, mean=mean, std=std))


def _teacher(method_name: str, prepared: data_lib.Prepared, rt: Runtime,
             dataset: str) -> tuple[torch.nn.Module | None, str | None]:
    """The frozen teacher on the device and its checkpoint's sha256 (None, None for SAT/TRADES)."""
    if not METHODS[method_name].uses_teacher:
        return None, None
    if not TEACHER_CHECKPOINT.is_file():
        raise StageError(f"{TEACHER_CHECKPOINT} is missing; run `absld teacher` (or `dvc repro teacher`)")
    teacher = load_checkpoint(TEACHER_CHECKPOINT)
    if teacher.num_classes != prepared.num_classes:
        raise StageError(f"the teacher predicts {teacher.num_classes} classes but {dataset} has {prepared.num_classes}")
    return rt.to_device(teacher).eval().requires_grad_(False), sha256_file(TEACHER_CHECKPOINT)


def _resume_key(params: Params, method_name: str, seed: int, train_cfg: TrainConfig, manifest: dict,
                teacher_sha: str | None) -> str:
    """What a resumable checkpoint must match to be resumed: every setting of this student's training."""
    cfg = params.distill
    return fingerprint(method_name, seed, cfg.method_config(method_name).model_dump(mode="json"),
                       train_cfg.model_dump(),
                       cfg.model_dump(mode="json", include={"student", "train_per_class", "attack", "kl_reduction",
                                                            "select", "select_eval"}),
                       params.data.augment.model_dump(), manifest["sha256"], manifest["train_indices"][:50],
                       teacher_sha)


def _run_config(params: Params, method_name: str, seed: int) -> dict[str, Any]:
    """The W&B run's config: this student's settings."""
    return {"method": method_name, "seed": seed, "profile": params.profile,
            "distill": params.distill.model_dump(mode="json", include={"student", "train", "attack", "kl_reduction",
                                                                        "select", "select_eval", method_name}),
            "data": params.data.model_dump(mode="json"), "runtime": params.runtime.model_dump(mode="json")}


def _write_student(params: Params, method_name: str, seed: int, student: torch.nn.Module, method: Any,
                   result: FitResult, train_cfg: TrainConfig, selection_rule: str, class_names: list[str],
                   teacher_sha: str | None, tracker: Tracker) -> dict[str, Any]:
    """The chosen checkpoint, the training log, metrics.json, the method's artefacts and the figures;
    returns the selection record (also stored in the checkpoint and metrics.json)."""
    cfg = params.distill
    chosen_state, chosen_epoch, select = result.final_state, train_cfg.epochs, cfg.select
    if averaged(cfg, method_name):  # e.g. CFA's weight average: distill.select does not apply
        select = "weight_average"
        chosen_state = method.output_state()
        if chosen_state is None:
            click.echo(f"note: {method_name} averaged no epoch (the validation gate never passed: "
                       f"distill.{method_name}.threshold); the last epoch's trained weights are written")
            chosen_state, select = result.final_state, "last"
            selection_rule = f"the last epoch ({train_cfg.epochs}): no epoch averaged (distill.{method_name}.threshold)"
    elif cfg.select != "last":
        chosen_state, chosen_epoch = result.best_state, result.best_epoch
    student.load_state_dict(chosen_state)
    selection = {"select": select, "selected_epoch": chosen_epoch,
                 "selection_split": {"val_fair_best": "validation", "test_fair_best": "test"}.get(select),
                 "selection_score": result.best_score, "selection_on_test_set": select == "test_fair_best",
                 "selection_rule": selection_rule}
    results, figures, history = distill_results(method_name, seed), distill_plots(method_name, seed), result.history
    metrics = {"method": method_name, "seed": seed, "epochs": train_cfg.epochs, **selection,
               "final": {k: v for k, v in history[-1].items() if "/" not in k}}
    write_csv(results / "train_log.csv", [{k: v for k, v in row.items() if "/" not in k} for row in history])
    write_timings(f"distill/{method_name}/seed{seed}", result.timings)
    plot_training(history, figures / "training.png", title=f"{method_name} ({params.data.dataset}, seed {seed})")
    extra = method.artefacts(chosen_epoch, class_names, history)  # e.g. ABSLD's temperatures
    for file_name, (rows, columns) in extra.tables.items():
        write_csv(results / file_name, rows, columns)
    metrics.update(extra.metrics)
    if extra.temperatures is not None:
        png = figures / "temperatures.png"
        plot_temperatures(extra.temperatures, class_names, png, title=f"{METHOD_LABELS[method_name]} class-wise "
                          f"temperatures ({params.data.dataset}, seed {seed})")
        tracker.log_image("temperatures", str(png))
    for figure, (rows, keys) in extra.curves.items():  # e.g. FRL's weights, CFA's radii
        png = figures / f"{figure}.png"
        plot_class_state(rows, keys, class_names, png, title=f"{METHOD_LABELS[method_name]} class-wise state "
                         f"({params.data.dataset}, seed {seed})")
        tracker.log_image(figure, str(png))
    write_json(results / "metrics.json", metrics)
    save_checkpoint(student_checkpoint(method_name, seed), student.cpu(), method=method_name, seed=seed,
                    dataset=params.data.dataset, teacher_sha256=teacher_sha, **selection)
    tracker.summary({"selected_epoch": chosen_epoch, "select": select,
                     "selection_on_test_set": selection["selection_on_test_set"]})
    tracker.use_artifact(f"data-{params.data.dataset}", "dataset", [data_dir(params) / "manifest.json"])
    tracker.use_artifact("teacher", "model", [TEACHER_CHECKPOINT, TEACHER_INFO])
    tracker.log_artifact(artifact_name(student_id(method_name, seed)), "model",
                         [student_checkpoint(method_name, seed)], metadata=selection)
    return selection


def _selection_rule(cfg: DistillConfig, train_cfg: TrainConfig, epochs: list[int], n: int) -> str:
    """distill.select in words, for the checkpoint meta and metrics.json."""
    sel = cfg.select_eval
    split = "the test set (model selection on the test set, as the official script)" \
        if cfg.select == "test_fair_best" else "the held-out validation split"
    first = train_cfg.milestones[0] if train_cfg.milestones else None
    when = f"e % {sel.every} == 0" + (f" or e >= {first} (the first LR milestone)" if first else "")
    return (f"max PGD-{sel.steps} avg + worst-class accuracy (CE, uniform start, eps "
            f"{fraction_of_255(sel.eps)}, step {fraction_of_255(sel.step)}) on {n} images of {split}, "
            f"after the {len(epochs)} epochs e with {when}")
