"""The distill stage: one student, trained by one method (from the teacher for the distillation methods),
resumable, its checkpoint chosen by distill.select, its logs, the method's artefacts and figures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import data as data_lib
from .. import distributed
from ..attacks.accuracy import ClassAccuracy, attack_seed, class_accuracy, first_n
from ..params import Params
from ..errors import StageError
from ..io import sha256_file, short_hash, write_csv, write_json
from ..layout import Layout
from ..methods import METHODS, MethodContext, build_method
from ..models import build_model, check_fits, load_checkpoint, save_checkpoint
from ..runtime import AtPrecision, Runtime, seed_everything, setup
from ..tracking import Tracker, artifact_name, name_classes, student_config
from ..vocab import METHOD_LABELS, ModelId
from .loop import FitResult, fit
from .plots import plot_class_state, plot_training
from ..figures import plot_temperatures
from .selection import chosen_weights, selection
from .teacher_links import recorded_digest
from .teacher_table import cached_table, choose


def run_distill(params: Params, method_name: str, seed: int, layout: Layout, *, code: str,
                echo: Callable[[str], None], stop_after: int | None = None) -> None:
    """Train student ``method_name``/seed ``seed`` and write it with its logs (``code``: the stage's code
    digest, part of the resume fingerprint)."""
    cfg = params.distill
    rt = setup(params.runtime)
    prepared = data_lib.load_prepared(layout.data_dir(params.data.dataset))
    method_cfg = cfg.method_config(method_name)
    train_cfg = method_cfg.train.apply(cfg.train)
    chosen = selection(cfg, method_name, train_cfg, prepared, rt, seed)
    teacher, teacher_sha = _teacher(method_name, prepared, rt, params.data.dataset, layout, cfg.teacher_amp)
    clean_teacher, clean_sha = _clean_teacher(params, method_name, prepared, rt, layout, cfg.teacher_amp)
    _check_validation_split(method_name, method_cfg, prepared)
    if layout.ad_hoc:
        echo(layout.scratch_note(str(ModelId.student(method_name, seed))))
    seed_everything(seed)
    student = _student(params, prepared, rt)
    validate = _validation(student, prepared, rt, seed, cfg.measure_amp) if method_cfg.validates else None
    validation_pass = _validation_pass(student, prepared, rt, seed, cfg.measure_amp) if method_cfg.validates else None
    method = build_method(method_name, method_cfg, MethodContext(
        num_classes=prepared.num_classes, attack=cfg.attack, teacher=teacher, clean_teacher=clean_teacher,
        kl_reduction=cfg.kl_reduction, student=student, validate=validate, validation_pass=validation_pass))
    images, labels = prepared.training_subset(cfg.train_per_class, params.data.split_seed, "distill.train_per_class")
    loader = data_lib.TensorLoader(
        images, labels, batch_size=train_cfg.batch_size, device=rt.device, shuffle=True,
        crop_padding=params.data.augment.crop_padding, flip=params.data.augment.flip, seed=seed,
        channels_last=rt.channels_last,
    )
    clean_logits, why = _clean_logits_source(cfg, method, loader, prepared.num_classes, train_cfg.epochs)
    if clean_logits != "none":
        echo(f"{method_name}/seed{seed}: the teacher's clean logits {clean_logits} ({why})")
    key = short_hash(code, method_name, seed, clean_logits, method_cfg.model_dump(mode="json"), train_cfg.model_dump(),
                     cfg.model_dump(mode="json", include={"student", "train_per_class", "attack", "kl_reduction",
                                                          "select", "select_eval"}),
                     params.data.augment.model_dump(), prepared.manifest["sha256"],
                     prepared.manifest["train_indices"][:50], teacher_sha, *([clean_sha] if clean_sha else []))
    resume = layout.distill_resume(method_name, seed)
    table = None
    if clean_logits == "table":
        source_sha = clean_sha if method.logits_teacher is clean_teacher else teacher_sha
        table = cached_table(method.logits_teacher, source_sha, loader, prepared.num_classes,
                             cache=layout.teacher_table, bf16=cfg.teacher_amp and rt.amp, write=rt.is_main, echo=echo)
    with Tracker(params, "distill", name=f"distill-{method_name}-seed{seed}", config=_run_config(params, method_name, seed, rt),
                 resume=(resume.parent, key), echo=echo) as tracker:
        result = fit(student, method, loader, train_cfg, rt, checkpoint=resume,
                     fingerprint=key, select_fn=chosen.score, select_epochs=chosen.epochs,
                     on_epoch=lambda row: tracker.log(name_classes(row, prepared.class_names)),
                     stop_after=stop_after, desc=f"{method_name}/seed{seed}",
                     timings_log=layout.logs / f"distill/{method_name}/seed{seed}.csv", teacher_table=table)
        if not rt.is_main:  # data-parallel training: the process of rank 0 writes
            return
        if len(result.history) < train_cfg.epochs:
            echo(f"stopped after epoch {len(result.history)} of {train_cfg.epochs}; run the stage again to continue")
            return
        state, meta = chosen_weights(cfg, method_name, method, result, train_cfg, chosen.rule, echo)
        student.load_state_dict(state)
        _write_student(params, method_name, seed, student, method, result, meta, prepared.class_names,
                       teacher_sha, tracker, layout, clean_sha, world=rt.world)
        tracker.complete()
    echo(f"{method_name}/seed{seed}: {train_cfg.epochs} epochs, checkpoint '{meta['select']}' "
         f"(epoch {meta['selected_epoch']}) -> {layout.student_checkpoint(method_name, seed)}")
    if meta["selection_on_test_set"]:
        echo("note: this checkpoint was selected on the test set (the official script's rule); "
             "its test-set numbers are not a held-out estimate")


def _clean_logits_source(cfg: Any, method: Any, loader: data_lib.TensorLoader, num_classes: int,
                         epochs: int) -> tuple[str, str]:
    """Where the method's clean teacher logits come from: ``none`` (no teacher, or a method that never
    reads them), ``live`` or ``table`` (distill.teacher_logits, :func:`absld.train.teacher_table.choose`),
    with the reason."""
    if method.logits_teacher is None or not method.reads_teacher_logits:
        return "none", "the method never reads the teacher's clean logits"
    return choose(cfg.teacher_logits, loader, num_classes, epochs, cfg.teacher_table_gib)


def _check_validation_split(method_name: str, method_cfg: Any, prepared: data_lib.Prepared) -> None:
    """Refuse, before any work, a method that measures the student on validation images that miss a
    class (the params check refuses data.val_per_class 0 for such methods already)."""
    if not method_cfg.validates:
        return
    n = method_cfg.validation.n_samples
    _, labels = first_n(prepared.val_images, prepared.val_labels, n)
    missing = prepared.classes_without_images(labels)
    if missing:
        shown = ", ".join(prepared.class_names[k] for k in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise StageError(f"distill.{method_name}.validation.n_samples = {n}: the first {len(labels)} validation "
                         f"images hold no image of {len(missing)} classes ({shown}), whose class-wise accuracy "
                         f"{method_name} needs; raise it or set null (all {len(prepared.val_labels)})")


def _validation(student: torch.nn.Module, prepared: data_lib.Prepared, rt: Runtime, seed: int, bf16: bool):
    """The method's measurement of ``student`` on the validation split (absld.methods.base.Validate),
    in float32 unless ``bf16`` (distill.measure_amp). Data-parallel: rank 0 measures, and every
    process gets its numbers (:func:`absld.distributed.from_main`)."""

    def validate(attack) -> ClassAccuracy:
        measured = None
        if rt.is_main:
            images, labels = first_n(prepared.val_images, prepared.val_labels, attack.n_samples)
            measured = class_accuracy(student, images, labels, prepared.num_classes, rt, eps=attack.eps,
                                      step=attack.step, steps=attack.steps, batch_size=attack.batch_size, seed=seed,
                                      stream="validate", desc="validate", bf16=bf16)
        return distributed.from_main(measured)

    return validate


def _validation_pass(student: torch.nn.Module, prepared: data_lib.Prepared, rt: Runtime, seed: int, bf16: bool):
    """A method's own pass over the validation split (absld.methods.base.ValidationPass), in
    float32 unless ``bf16`` (distill.measure_amp): the sum of what ``measure`` returns per batch,
    on the CPU. Data-parallel: rank 0 measures, and every process gets its sum
    (:func:`absld.distributed.from_main`)."""

    def validation_pass(attack, measure) -> torch.Tensor | None:
        total = None
        if rt.is_main:
            total = _measure_pass(student, prepared, rt, seed, bf16, attack, measure)
        return distributed.from_main(total)

    return validation_pass


def _measure_pass(student: torch.nn.Module, prepared: data_lib.Prepared, rt: Runtime, seed: int, bf16: bool,
                  attack: Any, measure: Any) -> torch.Tensor | None:
    """One process's validation pass (:func:`_validation_pass`)."""
    images, labels = first_n(prepared.val_images, prepared.val_labels, attack.n_samples)
    loader = data_lib.TensorLoader(images, labels, batch_size=attack.batch_size, device=rt.device,
                                   channels_last=rt.channels_last)
    generator = torch.Generator().manual_seed(attack_seed(seed, "validate"))
    was_training = student.training
    student.eval()
    total = None
    try:
        for batch in loader:
            with rt.precision(bf16):
                part = measure(student, batch, generator)
            if part is not None:
                total = torch.zeros_like(part) if total is None else total
                total += part
    finally:
        student.train(was_training)
    return None if total is None else total.cpu()


def _student(params: Params, prepared: data_lib.Prepared, rt: Runtime) -> torch.nn.Module:
    """A fresh distill.student on the device (initialised from the global seed)."""
    student = params.distill.student
    mean, std = (prepared.mean, prepared.std) if student.normalize else (None, None)
    return rt.to_device(build_model(student.arch, num_classes=prepared.num_classes,
                                    in_channels=prepared.in_channels, mean=mean, std=std))


def _teacher(method_name: str, prepared: data_lib.Prepared, rt: Runtime, dataset: str,
             layout: Layout, bf16: bool) -> tuple[torch.nn.Module | None, str | None]:
    """The frozen teacher on the device, every pass of it at one precision (float32 unless ``bf16``:
    distill.teacher_amp), and its checkpoint's sha256 (None, None for SAT/TRADES)."""
    if not METHODS[method_name].uses_teacher:
        return None, None
    path = layout.teacher_checkpoint
    if not path.is_file():
        raise StageError(f"{path} is missing; run `absld teacher` (or `dvc repro teacher`)")
    teacher = load_checkpoint(path)
    check_fits(teacher, num_classes=prepared.num_classes, in_channels=prepared.in_channels,
               image_shape=prepared.manifest["image_shape"], what=f"the teacher {path}", dataset=dataset,
               fix="make the teacher for this dataset (`absld teacher`, or `dvc repro teacher`)")
    frozen = rt.to_device(teacher).eval().requires_grad_(False)
    return AtPrecision(frozen, rt, bf16=bf16).eval(), sha256_file(path)


def _clean_teacher(params: Params, method_name: str, prepared: data_lib.Prepared, rt: Runtime,
                   layout: Layout, bf16: bool) -> tuple[torch.nn.Module | None, str | None]:
    """The frozen clean teacher of a method that distils from one (B-MTARD), at the teachers' one
    precision (float32 unless ``bf16``: distill.teacher_amp), and its sha256, checked against what
    the teacher-clean stage recorded for the method (its DVC dependency); (None, None) for every
    other method."""
    if not METHODS[method_name].uses_clean_teacher:
        return None, None
    remake = "run `absld teacher --clean` (or `dvc repro teacher-clean`)"
    if params.teacher_clean.source == "none":
        raise StageError(f"{method_name} distils from a clean teacher too, but teacher_clean.source is none; set it to "
                         f"train or file (teacher_clean.path/url and sha256), then {remake}")
    path = layout.teacher_clean_checkpoint
    recorded = recorded_digest(layout, method_name)
    if not path.is_file() or recorded is None:
        raise StageError(f"{path} or its record {layout.teacher_clean_of(method_name)} is missing; {remake}")
    digest = sha256_file(path)
    if digest != recorded:
        raise StageError(f"{path} (sha256 {digest[:12]}...) is not the clean teacher recorded in "
                         f"{layout.teacher_clean_of(method_name)} ({recorded[:12]}...); {remake}")
    teacher = load_checkpoint(path)
    check_fits(teacher, num_classes=prepared.num_classes, in_channels=prepared.in_channels,
               image_shape=prepared.manifest["image_shape"], what=f"the clean teacher {path}",
               dataset=params.data.dataset, fix=f"make the clean teacher for this dataset ({remake})")
    frozen = rt.to_device(teacher).eval().requires_grad_(False)
    return AtPrecision(frozen, rt, bf16=bf16).eval(), digest


def _run_config(params: Params, method_name: str, seed: int, rt: Runtime) -> dict[str, Any]:
    """The W&B run's config: this student's settings (:func:`absld.tracking.student_config`) and
    what the runtime settings came to on this machine (``runtime.cpu_bf16: auto``'s choice)."""
    return {**student_config(params, method_name, seed), "data": params.data.model_dump(mode="json"),
            "runtime": params.runtime.model_dump(mode="json"), "runtime_resolved": rt.resolved()}


def _write_student(params: Params, method_name: str, seed: int, student: torch.nn.Module, method: Any,
                   result: FitResult, selection_meta: dict[str, Any], class_names: list[str],
                   teacher_sha: str | None, tracker: Tracker, layout: Layout, clean_sha: str | None = None,
                   world: int = 1) -> None:
    """The chosen checkpoint, the training log, metrics.json, the method's artefacts and the figures
    (``world``: how many data-parallel processes trained it, in metrics.json and the W&B summary)."""
    epochs, chosen_epoch = len(result.history), selection_meta["selected_epoch"]
    results, figures, history = layout.distill_results(method_name, seed), layout.distill_plots(method_name, seed), \
        result.history
    metrics = {"method": method_name, "seed": seed, "epochs": epochs, "world": world, **selection_meta,
               "final": {k: v for k, v in history[-1].items() if "/" not in k}}
    write_csv(results / "train_log.csv", [{k: v for k, v in row.items() if "/" not in k} for row in history])
    where = f"({params.data.dataset}, seed {seed})"
    plot_training(history, figures / "training.png", title=f"{METHOD_LABELS[method_name]} {where}", method=method_name)
    extra = method.artefacts(chosen_epoch, class_names, history)  # e.g. ABSLD's temperatures
    for file_name, (rows, columns) in extra.tables.items():
        write_csv(results / file_name, rows, columns)
    metrics.update(extra.metrics)
    if extra.temperatures is not None:
        png = figures / "temperatures.png"
        plot_temperatures(extra.temperatures, class_names, png,
                          title=f"{METHOD_LABELS[method_name]} class-wise temperatures {where}")
        tracker.log_image("temperatures", str(png))
    for figure, (rows, keys) in extra.curves.items():  # e.g. FRL's weights, CFA's radii
        png = figures / f"{figure}.png"
        plot_class_state(rows, keys, class_names, png, title=f"{METHOD_LABELS[method_name]} class-wise state {where}")
        tracker.log_image(figure, str(png))
    write_json(results / "metrics.json", metrics)
    checkpoint = layout.student_checkpoint(method_name, seed)
    extra_meta = {"teacher_clean_sha256": clean_sha} if clean_sha else {}
    save_checkpoint(checkpoint, student.cpu(), method=method_name, seed=seed, dataset=params.data.dataset,
                    teacher_sha256=teacher_sha, **extra_meta, **selection_meta)
    tracker.summary({"selected_epoch": chosen_epoch, "select": selection_meta["select"], "world": world,
                     "selection_on_test_set": selection_meta["selection_on_test_set"],
                     "checkpoint_sha256": sha256_file(checkpoint)})  # what `absld report` selects runs by
    tracker.use_artifact(f"data-{params.data.dataset}", "dataset", [layout.data_dir(params.data.dataset) / "manifest.json"])
    tracker.use_artifact("teacher", "model", [layout.teacher_checkpoint, layout.teacher_info])
    if clean_sha:
        tracker.use_artifact("teacher-clean", "model", [layout.teacher_clean_checkpoint, layout.teacher_clean_info])
    tracker.log_artifact(artifact_name(str(ModelId.student(method_name, seed))), "model", [checkpoint],
                         metadata=selection_meta)
