"""The teacher stage: train the teacher (PGD-AT or TRADES, resumable) or get it from elsewhere, a
checkpoint file or URL (sha256-checked) or RobustBench, then check its clean and PGD accuracy.

The imported weights are always loaded into this project's own architecture (strictly, every
key), so an imported teacher behaves exactly like a trained one downstream. Files are loaded with
``torch.load(..., weights_only=True)``: a checkpoint can never run code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .. import data as data_lib
from ..attacks.accuracy import class_accuracy, first_n
from ..params import Params, TeacherConfig
from ..errors import StageError, UserError
from ..io import atomic_path, sha256_file, short_hash, write_csv, write_json
from ..layout import Layout
from ..methods import MethodContext, build_method
from ..models import ModelError, build_model, load_weights, save_checkpoint
from ..runtime import Runtime, seed_everything, setup
from ..tracking import Tracker
from .loop import FitResult, fit


class TeacherImportError(UserError, RuntimeError):
    """The teacher cannot be imported; the message says why and what to do."""


def _state_dict_from(obj: object, source: str) -> dict:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TeacherImportError(f"{source}: not a state_dict (a mapping of names to tensors)")
    return obj


def load_into(arch: str, state_dict: dict, *, num_classes: int, in_channels: int,
              mean: list[float] | None, std: list[float] | None, source: str) -> nn.Module:
    model = build_model(arch, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)
    try:
        load_weights(model, state_dict, source=source)
    except ModelError as exc:
        raise TeacherImportError(f"{exc}; set teacher.model.arch to the checkpoint's architecture") from None
    return model.eval()


def fetch(url: str, directory: Path) -> Path:
    """Download ``url`` into ``directory`` (atomically) unless it is already there."""
    target = directory / Path(url.split("?")[0]).name
    if target.is_file():
        return target
    try:
        with atomic_path(target) as tmp:
            torch.hub.download_url_to_file(url, str(tmp), progress=True)
    except Exception as exc:
        raise TeacherImportError(
            f"cannot download {url} ({exc.__class__.__name__}: {exc}); download it by hand and set "
            "teacher.path to the file instead of teacher.url"
        ) from None
    return target


def check_sha256(path: Path, expected: str) -> str:
    got = sha256_file(path)
    if got != expected.lower():
        raise TeacherImportError(
            f"{path}: sha256 {got} does not match teacher.sha256 {expected}; the file is not the "
            "expected checkpoint (a broken download or other weights). Delete it and fetch it "
            "again, or correct teacher.sha256 if you meant to use these weights"
        )
    return got


def import_file(path: Path, sha256: str, *, arch: str, num_classes: int, in_channels: int,
                mean: list[float] | None, std: list[float] | None) -> tuple[nn.Module, str]:
    """Verify ``path``'s sha256, then load its weights into ``arch``."""
    if not path.is_file():
        raise TeacherImportError(f"teacher.path {str(path)!r} does not exist")
    digest = check_sha256(path, sha256)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TeacherImportError(f"{path}: cannot be read as a weights-only checkpoint ({exc})") from None
    state = _state_dict_from(obj, str(path))
    return load_into(arch, state, num_classes=num_classes, in_channels=in_channels, mean=mean,
                     std=std, source=str(path)), digest


ROBUSTBENCH_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100"}


def import_robustbench(model_id: str, dataset: str, *, arch: str, num_classes: int,
                       in_channels: int, model_dir: Path) -> tuple[nn.Module, str]:
    """Load RobustBench's ``model_id`` (L-inf) and copy its weights into ``arch``."""
    if dataset not in ROBUSTBENCH_DATASETS:
        raise TeacherImportError(
            f"RobustBench has no L-inf models for dataset {dataset!r}; use teacher.source train or file"
        )
    try:
        from robustbench.utils import load_model
    except ImportError:
        raise TeacherImportError(
            "teacher.source robustbench needs the robustbench package: "
            "pip install -e '.[robustbench]' (or set teacher.source: train | file)"
        ) from None
    try:
        rb_model = load_model(model_name=model_id, dataset=dataset, threat_model="Linf",
                              model_dir=str(model_dir))
    except Exception as exc:
        raise TeacherImportError(
            f"RobustBench could not load {model_id!r} ({exc.__class__.__name__}: {exc}); check the id "
            "and the network, or download the weights by hand and use teacher.source: file"
        ) from None
    files = sorted(model_dir.rglob(f"{model_id}.pt"))
    digest = sha256_file(files[0]) if files else "unknown"
    model = load_into(arch, rb_model.state_dict(), num_classes=num_classes, in_channels=in_channels,
                      mean=None, std=None, source=f"robustbench:{model_id}")
    return model, digest


def run_teacher(params: Params, layout: Layout, *, code: str, echo: Callable[[str], None],
                stop_after: int | None = None) -> None:
    """Train or import the teacher, check it on the test split and write models/teacher.{pt,json} and
    results/teacher/ (``code``: the stage's code digest, part of the resume fingerprint)."""
    cfg = params.teacher
    rt = setup(params.runtime)
    prepared = data_lib.load_prepared(layout.data_dir(params.data.dataset))
    info: dict = {"source": cfg.source, "arch": cfg.model.arch, "dataset": params.data.dataset}
    run_config = params.model_dump(mode="json", include={"profile", "runtime", "data", "teacher"})
    resume = (layout.teacher_resume.parent, _resume_key(params, prepared, code)) if cfg.source == "train" else None
    with Tracker(params, "teacher", config=run_config, resume=resume, echo=echo) as tracker:
        if cfg.source == "train":
            trained = _train(params, prepared, rt, tracker, layout, code, echo, stop_after)
            if trained is None:
                return
            model, result = trained
            info.update(method=cfg.method, epochs=len(result.history), seed=cfg.seed)
        else:
            model, result = _import(params, prepared, info, layout), None
        model = rt.to_device(model).eval()
        images, labels = first_n(prepared.test_images, prepared.test_labels, cfg.eval.n_samples)
        acc = class_accuracy(model, images, labels, prepared.num_classes, rt, eps=cfg.eval.eps, step=cfg.eval.step,
                             steps=cfg.eval.steps, batch_size=cfg.eval.batch_size, seed=None, desc="teacher")
        metrics = {"clean_acc": acc.clean_total, "pgd_acc": acc.robust_total, "n": acc.n}
        if cfg.source != "train":
            _check_published(cfg, metrics)
        info.update(metrics)
        info["eval"] = cfg.eval.model_dump(mode="json")
        save_checkpoint(layout.teacher_checkpoint, model.cpu(),
                        **{k: v for k, v in info.items() if k not in ("eval", "arch")})
        write_json(layout.teacher_info, info)
        write_json(layout.teacher_results / "metrics.json", metrics)
        write_csv(layout.teacher_results / "train_log.csv", (result.history if result else None) or [{"epoch": 0}])
        tracker.summary({f"teacher/{k}": v for k, v in metrics.items()})
        tracker.use_artifact(f"data-{params.data.dataset}", "dataset",
                             [layout.data_dir(params.data.dataset) / "manifest.json"])
        tracker.log_artifact("teacher", "model", [layout.teacher_checkpoint, layout.teacher_info], metadata=metrics)
        tracker.complete()
    echo(f"teacher ({cfg.source}): clean {metrics['clean_acc']:.2%}, PGD-{cfg.eval.steps} {metrics['pgd_acc']:.2%} "
         f"on {metrics['n']} test images -> {layout.teacher_checkpoint}")


def _resume_key(params: Params, prepared: data_lib.Prepared, code: str) -> str:
    """The fingerprint of the teacher's resumable training (its checkpoint and its W&B run)."""
    return short_hash(code, params.teacher.model_dump(mode="json", exclude={"eval"}), params.data.augment.model_dump(),
                      prepared.manifest["sha256"], prepared.manifest["train_indices"][:50])


def _train(params: Params, prepared: data_lib.Prepared, rt: Runtime, tracker: Tracker, layout: Layout, code: str,
           echo: Callable[[str], None], stop_after: int | None) -> tuple[torch.nn.Module, FitResult] | None:
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
    result = fit(model, method, loader, train_cfg, rt, checkpoint=layout.teacher_resume,
                 fingerprint=_resume_key(params, prepared, code),
                 on_epoch=tracker.log, stop_after=stop_after, desc=f"teacher/{cfg.method}",
                 timings_log=layout.logs / "teacher.csv")
    if not rt.is_main:  # data-parallel training: the process of rank 0 evaluates and writes
        return None
    if len(result.history) < train_cfg.epochs:
        echo(f"stopped after epoch {len(result.history)} of {train_cfg.epochs}; run the stage again to continue")
        return None
    return model, result


def _import(params: Params, prepared: data_lib.Prepared, info: dict, layout: Layout) -> torch.nn.Module:
    """teacher.source file or robustbench: the checksummed weights in our architecture (``info`` gets
    where they came from and their sha256)."""
    cfg = params.teacher
    mean, std = (prepared.mean, prepared.std) if cfg.model.normalize else (None, None)
    shape = dict(num_classes=prepared.num_classes, in_channels=prepared.in_channels)
    if cfg.source == "file":
        path = fetch(cfg.url, layout.teacher_downloads) if cfg.url else Path(cfg.path)
        model, digest = import_file(path, cfg.sha256, arch=cfg.model.arch, mean=mean, std=std, **shape)
        info.update(file=str(cfg.url or cfg.path), sha256=digest)
    else:
        model, digest = import_robustbench(cfg.robustbench_id, params.data.dataset, arch=cfg.model.arch,
                                           model_dir=layout.teacher_downloads, **shape)
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
