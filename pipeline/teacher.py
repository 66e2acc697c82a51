"""``absld teacher``: train (PGD-AT / TRADES) or import the teacher -> models/teacher.pt."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from absld import data as data_lib
from absld import teacher as teacher_lib
from absld.evaluate import clean_and_pgd_accuracy, first_n
from absld.io import write_csv, write_json
from absld.methods import MethodContext, build_method
from absld.models import build_model, save_checkpoint
from absld.config import Params, TeacherConfig
from absld.runtime import Runtime, seed_everything, setup
from absld.tracking import Tracker
from absld.train import FitResult, fit

from .common import (
    locked,
    TEACHER_CHECKPOINT, TEACHER_DOWNLOADS, TEACHER_INFO, TEACHER_RESULTS, TEACHER_RESUME,
    StageError, data_dir, fingerprint, load, params_option, user_errors, write_timings,
)


@click.command()
@params_option
@click.option("--stop-after", type=click.IntRange(min=1), default=None,
              help="Stop after this many epochs in this call (the next call resumes).")
@user_errors
@locked(lambda **_: "teacher")
def teacher(params_path: str, stop_after: int | None) -> None:
    """Train or import the teacher and check its clean and PGD accuracy on the test split.

    teacher.source selects: `train` (teacher.method: sat = PGD-AT, or trades, with teacher.train
    and teacher.attack; resumable from checkpoints/teacher/), `file` (teacher.path or teacher.url,
    sha256-checked against teacher.sha256) or `robustbench` (teacher.robustbench_id through the
    robustbench package). An imported teacher whose clean accuracy is more than
    teacher.max_clean_gap from teacher.published_clean_acc stops the stage before anything is
    written. Writes models/teacher.pt, models/teacher.json and results/teacher/.
    """
    params = load(params_path)
    cfg = params.teacher
    rt = setup(params.runtime)
    prepared = data_lib.load_prepared(data_dir(params))
    info: dict = {"source": cfg.source, "arch": cfg.model.arch, "dataset": params.data.dataset}
    run_config = params.model_dump(mode="json", include={"profile", "runtime", "data", "teacher"})
    with Tracker(params, "teacher", config=run_config) as tracker:
        if cfg.source == "train":
            trained = _train(params, prepared, rt, tracker, stop_after)
            if trained is None:
                return
            model, result = trained
            info.update(method=cfg.method, epochs=len(result.history), seed=cfg.seed)
        else:
            model, result = _import(params, prepared, info), None
        model = rt.to_device(model).eval()
        images, labels = first_n(prepared.test_images, prepared.test_labels, cfg.eval.n_samples)
        metrics = clean_and_pgd_accuracy(model, images, labels, rt, eps=cfg.eval.eps, step=cfg.eval.step,
                                         steps=cfg.eval.steps, batch_size=cfg.eval.batch_size, desc="teacher")
        if cfg.source != "train":
            _check_published(cfg, metrics)
        info.update(metrics)
        info["eval"] = cfg.eval.model_dump(mode="json")
        save_checkpoint(TEACHER_CHECKPOINT, model.cpu(), **{k: v for k, v in info.items() if k not in ("eval", "arch")})
        write_json(TEACHER_INFO, info)
        write_json(TEACHER_RESULTS / "metrics.json", metrics)
        write_csv(TEACHER_RESULTS / "train_log.csv", (result.history if result else None) or [{"epoch": 0}])
        if result is not None and result.timings:
            write_timings("teacher", result.timings)
        tracker.summary({f"teacher/{k}": v for k, v in metrics.items()})
        tracker.use_artifact(f"data-{params.data.dataset}", "dataset", [data_dir(params) / "manifest.json"])
        tracker.log_artifact("teacher", "model", [TEACHER_CHECKPOINT, TEACHER_INFO], metadata=metrics)
    click.echo(f"teacher ({cfg.source}): clean {metrics['clean_acc']:.2%}, "
               f"PGD-{cfg.eval.steps} {metrics['pgd_acc']:.2%} on {metrics['n']} test images "
               f"-> {TEACHER_CHECKPOINT}")


def _train(params: Params, prepared: data_lib.Prepared, rt: Runtime, tracker: Tracker,
           stop_after: int | None) -> tuple[torch.nn.Module, FitResult] | None:
    """teacher.source train: PGD-AT or TRADES, resumable; None when stopped before the last epoch."""
    cfg = params.teacher
    seed_everything(cfg.seed)
    mean, std = (prepared.mean, prepared.std) if cfg.model.normalize else (None, None)
    model = rt.to_device(build_model(cfg.model.arch, num_classes=prepared.num_classes,
                                     in_channels=prepared.in_channels, mean=mean, std=std))
    method_cfg = getattr(cfg, cfg.method)
    train_cfg = method_cfg.train.apply(cfg.train)
    method = build_method(cfg.method, method_cfg, MethodContext(num_classes=prepared.num_classes, attack=cfg.attack))
    images, labels = prepared.training_subset(cfg.train_per_class, params.data.split_seed, "teacher.train_per_class")
    loader = data_lib.TensorLoader(
        images, labels, batch_size=train_cfg.batch_size, device=rt.device, shuffle=True, drop_last=False,
        crop_padding=params.data.augment.crop_padding, flip=params.data.augment.flip, seed=cfg.seed,
        channels_last=rt.channels_last,
    )
    key = fingerprint(cfg.model_dump(mode="json", exclude={"eval"}), params.data.augment.model_dump(),
                      prepared.manifest["sha256"], prepared.manifest["train_indices"][:50])
    result = fit(model, method, loader, train_cfg, rt, checkpoint=TEACHER_RESUME, fingerprint=key,
                 on_epoch=tracker.log, stop_after=stop_after, desc=f"teacher/{cfg.method}")
    if not rt.is_main:  # data-parallel training: the process of rank 0 evaluates and writes
        return None
    if len(result.history) < train_cfg.epochs:
        click.echo(f"stopped after epoch {len(result.history)} of {train_cfg.epochs}; run the stage again to continue")
        return None
    return model, result


def _import(params: Params, prepared: data_lib.Prepared, info: dict) -> torch.nn.Module:
    """teacher.source file or robustbench: the checksummed weights in our architecture (``info`` gets
    where they came from and their sha256)."""
    cfg = params.teacher
    mean, std = (prepared.mean, prepared.std) if cfg.model.normalize else (None, None)
    shape = dict(num_classes=prepared.num_classes, in_channels=prepared.in_channels)
    if cfg.source == "file":
        path = teacher_lib.fetch(cfg.url, TEACHER_DOWNLOADS) if cfg.url else Path(cfg.path)
        model, digest = teacher_lib.import_file(path, cfg.sha256, arch=cfg.model.arch, mean=mean, std=std, **shape)
        info.update(file=str(cfg.url or cfg.path), sha256=digest)
    else:
        model, digest = teacher_lib.import_robustbench(cfg.robustbench_id, params.data.dataset, arch=cfg.model.arch,
                                                       model_dir=TEACHER_DOWNLOADS, **shape)
        info.update(robustbench_id=cfg.robustbench_id, sha256=digest)
    return model


def _check_published(cfg: TeacherConfig, metrics: dict) -> None:
    """An imported teacher far from its published clean accuracy stops the stage (nothing written)."""
    if cfg.published_clean_acc is None:
        return
    gap = abs(metrics["clean_acc"] - cfg.published_clean_acc)
    if gap > cfg.max_clean_gap:
        raise StageError(
            f"the imported teacher's clean accuracy {metrics['clean_acc']:.2%} on "
            f"{metrics['n']} test images is {gap:.2%} from the published "
            f"{cfg.published_clean_acc:.2%} (allowed: {cfg.max_clean_gap:.2%}); usual causes: "
            "wrong weights, normalisation (teacher.model.normalize) or eval eps. Nothing was written"
        )
