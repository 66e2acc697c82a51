"""The teacher stage: train the teacher (PGD-AT or TRADES, resumable) or get it from elsewhere, a
checkpoint file or URL (sha256-checked) or RobustBench, then check its clean and PGD accuracy.

The teacher-clean stage (``clean=True``) makes B-MTARD's second, clean teacher the same way from
``teacher_clean`` (plain cross-entropy training, or a checksummed file), into files of its own, so
that neither teacher is remade when the other's params change. With ``teacher_clean.source: none``
it writes a small constant placeholder; either way it writes one line per method
(:meth:`absld.layout.Layout.teacher_clean_of`) that the distill stages depend on.

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
from ..params import AttackConfig, CleanTeacherConfig, Params, TeacherConfig, TrainConfig
from ..errors import StageError, UserError
from ..io import atomic_path, sha256_file, short_hash, write_csv, write_json, write_torch
from ..layout import Layout
from ..methods import MethodContext, Natural, build_method
from ..models import ModelError, build_model, load_weights, save_checkpoint
from ..runtime import Runtime, seed_everything, setup
from ..tracking import Tracker
from .loop import FitResult, fit
from .teacher_links import write_links


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
              mean: list[float] | None, std: list[float] | None, source: str, section: str = "teacher") -> nn.Module:
    model = build_model(arch, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)
    try:
        load_weights(model, state_dict, source=source)
    except ModelError as exc:
        raise TeacherImportError(f"{exc}; set {section}.model.arch to the checkpoint's architecture") from None
    return model.eval()


def fetch(url: str, directory: Path, section: str = "teacher") -> Path:
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
            f"{section}.path to the file instead of {section}.url"
        ) from None
    return target


def check_sha256(path: Path, expected: str, section: str = "teacher") -> str:
    got = sha256_file(path)
    if got != expected.lower():
        raise TeacherImportError(
            f"{path}: sha256 {got} does not match {section}.sha256 {expected}; the file is not the "
            "expected checkpoint (a broken download or other weights). Delete it and fetch it "
            f"again, or correct {section}.sha256 if you meant to use these weights"
        )
    return got


def import_file(path: Path, sha256: str, *, arch: str, num_classes: int, in_channels: int,
                mean: list[float] | None, std: list[float] | None, section: str = "teacher") -> tuple[nn.Module, str]:
    """Verify ``path``'s sha256, then load its weights into ``arch`` (``section``: whose params, for messages)."""
    if not path.is_file():
        raise TeacherImportError(f"{section}.path {str(path)!r} does not exist")
    digest = check_sha256(path, sha256, section)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TeacherImportError(f"{path}: cannot be read as a weights-only checkpoint ({exc})") from None
    state = _state_dict_from(obj, str(path))
    return load_into(arch, state, num_classes=num_classes, in_channels=in_channels, mean=mean,
                     std=std, source=str(path), section=section), digest


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
                stop_after: int | None = None, clean: bool = False) -> None:
    """Train or import the teacher, check it on the test split and write models/teacher.{pt,json} and
    results/teacher/ (``code``: the stage's code digest, part of the resume fingerprint); ``clean``:
    the same for the clean teacher of ``teacher_clean`` (:func:`run_clean_teacher`)."""
    if clean:
        run_clean_teacher(params, layout, code=code, echo=echo, stop_after=stop_after)
        return
    cfg = params.teacher
    rt = setup(params.runtime)
    prepared = data_lib.load_prepared(layout.data_dir(params.data.dataset))
    info: dict = {"source": cfg.source, "arch": cfg.model.arch, "dataset": params.data.dataset}
    run_config = {**params.model_dump(mode="json", include={"profile", "runtime", "data", "teacher"}),
                  "runtime_resolved": rt.resolved()}  # e.g. what runtime.cpu_bf16: auto came to here
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
        metrics = _check_and_write(params, cfg, model, result, info, prepared, rt, tracker, layout, "teacher")
        tracker.complete()
    echo(f"teacher ({cfg.source}): clean {metrics['clean_acc']:.2%}, PGD-{cfg.eval.steps} {metrics['pgd_acc']:.2%} "
         f"on {metrics['n']} test images -> {layout.teacher_checkpoint}")


def _files(layout: Layout, role: str) -> tuple[Path, Path, Path]:
    """(checkpoint, info, results folder) of ``role`` (teacher | teacher_clean)."""
    if role == "teacher":
        return layout.teacher_checkpoint, layout.teacher_info, layout.teacher_results
    return layout.teacher_clean_checkpoint, layout.teacher_clean_info, layout.teacher_clean_results


def _check_and_write(params: Params, cfg: TeacherConfig | CleanTeacherConfig, model: nn.Module,
                     result: FitResult | None, info: dict, prepared: data_lib.Prepared, rt: Runtime,
                     tracker: Tracker, layout: Layout, role: str) -> dict:
    """Measure ``model`` on the test split (clean and PGD), stop if an imported one is far from its
    published accuracy, then write its checkpoint, info, metrics and training log; the metrics."""
    checkpoint, info_path, results = _files(layout, role)
    model = rt.to_device(model).eval()
    images, labels = first_n(prepared.test_images, prepared.test_labels, cfg.eval.n_samples)
    acc = class_accuracy(model, images, labels, prepared.num_classes, rt, eps=cfg.eval.eps, step=cfg.eval.step,
                         steps=cfg.eval.steps, batch_size=cfg.eval.batch_size, seed=None, desc=role)
    metrics = {"clean_acc": acc.clean_total, "pgd_acc": acc.robust_total, "n": acc.n}
    if cfg.source != "train":
        _check_published(cfg, metrics)
    info.update(metrics)
    info["eval"] = cfg.eval.model_dump(mode="json")
    save_checkpoint(checkpoint, model.cpu(), **{k: v for k, v in info.items() if k not in ("eval", "arch")})
    write_json(info_path, info)
    write_json(results / "metrics.json", metrics)
    write_csv(results / "train_log.csv", (result.history if result else None) or [{"epoch": 0}])
    tracker.summary({f"{role}/{k}": v for k, v in metrics.items()})
    tracker.use_artifact(f"data-{params.data.dataset}", "dataset",
                         [layout.data_dir(params.data.dataset) / "manifest.json"])
    tracker.log_artifact(role.replace("_", "-"), "model", [checkpoint, info_path], metadata=metrics)
    return metrics


PLACEHOLDER = {"placeholder": "no clean teacher: teacher_clean.source is none"}
"""The teacher-clean stage's checkpoint when there is no clean teacher: constant bytes, so that nothing
downstream reruns, and not a model (load_checkpoint refuses it, naming the missing keys)."""


def run_clean_teacher(params: Params, layout: Layout, *, code: str, echo: Callable[[str], None],
                      stop_after: int | None = None) -> None:
    """teacher_clean: train (plain CE) or import B-MTARD's clean teacher, check it on the test split and
    write models/teacher_clean.{pt,json}, results/teacher_clean/ and models/teacher_clean_of/; with
    source none, a constant placeholder in their place."""
    cfg = params.teacher_clean
    if cfg.source == "none":
        write_torch(layout.teacher_clean_checkpoint, PLACEHOLDER)
        write_json(layout.teacher_clean_info, {"source": "none"})
        write_json(layout.teacher_clean_results / "metrics.json", {"source": "none"})
        write_csv(layout.teacher_clean_results / "train_log.csv", [{"epoch": 0}])
        write_links(layout, None)
        echo(f"teacher_clean.source none: no clean teacher (placeholder {layout.teacher_clean_checkpoint})")
        return
    rt = setup(params.runtime)
    prepared = data_lib.load_prepared(layout.data_dir(params.data.dataset))
    info: dict = {"source": cfg.source, "arch": cfg.model.arch, "dataset": params.data.dataset}
    run_config = {**params.model_dump(mode="json", include={"profile", "runtime", "data", "teacher_clean"}),
                  "runtime_resolved": rt.resolved()}  # e.g. what runtime.cpu_bf16: auto came to here
    key = _clean_resume_key(params, prepared, code)
    resume = (layout.teacher_clean_resume.parent, key) if cfg.source == "train" else None
    with Tracker(params, "teacher", name="teacher-clean", config=run_config, resume=resume, echo=echo) as tracker:
        if cfg.source == "train":
            trained = _fit(params, cfg, Natural(cfg, MethodContext(num_classes=prepared.num_classes, attack=AttackConfig())),
                           cfg.train, prepared, rt, tracker, layout.teacher_clean_resume, key, echo, stop_after,
                           "teacher_clean", layout.logs / "teacher_clean.csv")
            if trained is None:
                return
            model, result = trained
            info.update(method="natural", epochs=len(result.history), seed=cfg.seed)
        else:
            model, result = _import_file(cfg, prepared, info, layout.teacher_clean_downloads, "teacher_clean"), None
        metrics = _check_and_write(params, cfg, model, result, info, prepared, rt, tracker, layout, "teacher_clean")
        write_links(layout, sha256_file(layout.teacher_clean_checkpoint))
        tracker.complete()
    echo(f"clean teacher ({cfg.source}): clean {metrics['clean_acc']:.2%}, PGD-{cfg.eval.steps} "
         f"{metrics['pgd_acc']:.2%} on {metrics['n']} test images -> {layout.teacher_clean_checkpoint}")


def _clean_resume_key(params: Params, prepared: data_lib.Prepared, code: str) -> str:
    """The fingerprint of the clean teacher's resumable training (its checkpoint and its W&B run)."""
    return short_hash(code, "teacher_clean", params.teacher_clean.model_dump(mode="json", exclude={"eval"}),
                      params.data.augment.model_dump(), prepared.manifest["sha256"], prepared.manifest["train_indices"][:50])


def _resume_key(params: Params, prepared: data_lib.Prepared, code: str) -> str:
    """The fingerprint of the teacher's resumable training (its checkpoint and its W&B run)."""
    return short_hash(code, params.teacher.model_dump(mode="json", exclude={"eval"}), params.data.augment.model_dump(),
                      prepared.manifest["sha256"], prepared.manifest["train_indices"][:50])


def _train(params: Params, prepared: data_lib.Prepared, rt: Runtime, tracker: Tracker, layout: Layout, code: str,
           echo: Callable[[str], None], stop_after: int | None) -> tuple[torch.nn.Module, FitResult] | None:
    """teacher.source train: PGD-AT or TRADES, resumable; None when stopped before the last epoch."""
    cfg = params.teacher
    method_cfg = getattr(cfg, cfg.method)
    method = build_method(cfg.method, method_cfg, MethodContext(num_classes=prepared.num_classes, attack=cfg.attack))
    return _fit(params, cfg, method, method_cfg.train.apply(cfg.train), prepared, rt, tracker, layout.teacher_resume,
                _resume_key(params, prepared, code), echo, stop_after, "teacher", layout.logs / "teacher.csv",
                desc=f"teacher/{cfg.method}")


def _fit(params: Params, cfg: TeacherConfig | CleanTeacherConfig, method, train_cfg: TrainConfig,
         prepared: data_lib.Prepared, rt: Runtime, tracker: Tracker, checkpoint: Path, key: str,
         echo: Callable[[str], None], stop_after: int | None, section: str, timings_log: Path,
         desc: str | None = None) -> tuple[torch.nn.Module, FitResult] | None:
    """Train a fresh ``cfg.model`` with ``method`` (resumable from ``checkpoint``); None when stopped early."""
    seed_everything(cfg.seed)
    mean, std = (prepared.mean, prepared.std) if cfg.model.normalize else (None, None)
    model = rt.to_device(build_model(cfg.model.arch, num_classes=prepared.num_classes,
                                     in_channels=prepared.in_channels, mean=mean, std=std))
    images, labels = prepared.training_subset(cfg.train_per_class, params.data.split_seed, f"{section}.train_per_class")
    loader = data_lib.TensorLoader(
        images, labels, batch_size=train_cfg.batch_size, device=rt.device, shuffle=True, drop_last=False,
        crop_padding=params.data.augment.crop_padding, flip=params.data.augment.flip, seed=cfg.seed,
        channels_last=rt.channels_last,
    )
    result = fit(model, method, loader, train_cfg, rt, checkpoint=checkpoint, fingerprint=key,
                 on_epoch=tracker.log, stop_after=stop_after, desc=desc or section, timings_log=timings_log)
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
    shape = dict(num_classes=prepared.num_classes, in_channels=prepared.in_channels)
    if cfg.source == "file":
        model = _import_file(cfg, prepared, info, layout.teacher_downloads, "teacher")
    else:
        model, digest = import_robustbench(cfg.robustbench_id, params.data.dataset, arch=cfg.model.arch,
                                           model_dir=layout.teacher_downloads, **shape)
        info.update(robustbench_id=cfg.robustbench_id, sha256=digest)
    return model


def _import_file(cfg: TeacherConfig | CleanTeacherConfig, prepared: data_lib.Prepared, info: dict,
                 downloads: Path, section: str) -> torch.nn.Module:
    """source file: ``cfg.path`` or ``cfg.url`` (downloaded into ``downloads``), sha256-checked, in ``cfg.model``."""
    mean, std = (prepared.mean, prepared.std) if cfg.model.normalize else (None, None)
    path = fetch(cfg.url, downloads, section) if cfg.url else Path(cfg.path)
    model, digest = import_file(path, cfg.sha256, arch=cfg.model.arch, num_classes=prepared.num_classes,
                                in_channels=prepared.in_channels, mean=mean, std=std, section=section)
    info.update(file=str(cfg.url or cfg.path), sha256=digest)
    return model


def _check_published(cfg: TeacherConfig | CleanTeacherConfig, metrics: dict) -> None:
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
