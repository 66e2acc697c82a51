"""The evaluate stage: every attack on the same test samples -> per-sample records, metrics, figures."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import data as data_lib
from ..params import Params, fraction_of_255
from ..errors import StageError
from ..fairness import Summary
from ..io import atomic_dir, sha256_file, short_hash, write_json
from ..labels import attack_label, metric_name
from ..layout import Layout
from ..models import check_fits, checkpoint_meta, load_checkpoint
from ..runtime import Runtime, setup
from ..tracking import Tracker, artifact_name, class_key, student_config
from ..vocab import ModelId
from ..attacks.accuracy import first_n
from .cascade import evaluate_model, protocol, summarize_records, tf32_active
from .plots import plot_classwise
from .progress import EvalProgress
from .records import Records

EVAL_SAVE_SECONDS_ENV = "ABSLD_EVAL_SAVE_SECONDS"
"""How often (seconds, default 30) an evaluation saves its progress; 0: after every batch."""

SELECTION_KEYS = ("select", "selected_epoch", "selection_split", "selection_score")
"""Checkpoint meta written by the distill stage about how the checkpoint was chosen."""


def run_evaluate(params: Params, model_id: str, layout: Layout, *, code: str, echo: Callable[[str], None]) -> None:
    """Attack ``model_id`` (teacher or <method>/seed<S>) and write its records, metrics and figures
    (``code``: the stage's code digest, part of the resume fingerprint)."""
    cfg = params.evaluate
    checkpoint = layout.model_checkpoint(model_id)
    if not checkpoint.is_file():
        raise _missing_checkpoint(params, model_id, checkpoint)
    if layout.ad_hoc:
        echo(layout.scratch_note(model_id))
    progress_every = _save_seconds()
    rt = setup(params.runtime)
    prepared = data_lib.load_prepared(layout.data_dir(params.data.dataset))
    _check_test_samples(prepared, cfg.n_samples)
    if "aa" in cfg.attacks and cfg.aa.n_samples is not None and (cfg.n_samples is None or cfg.aa.n_samples < cfg.n_samples):
        _check_test_samples(prepared, cfg.aa.n_samples, key="evaluate.aa.n_samples")
    meta = checkpoint_meta(checkpoint)
    checkpoint_sha = sha256_file(checkpoint)  # once: the resume key and metrics.json
    model = _load_model(checkpoint, prepared, params.data.dataset, rt)
    config = {**_trained_by(params, model_id), "model": model_id, "profile": params.profile,
              "evaluate": cfg.model_dump(mode="json"), "data": params.data.model_dump(mode="json"),
              "runtime": params.runtime.model_dump(mode="json"), "checkpoint_sha256": checkpoint_sha}
    key = short_hash(code, model_id, checkpoint_sha, prepared.manifest["sha256"], cfg.model_dump(mode="json"),
                     protocol(cfg, rt.amp, tf32_active(rt.device)), params.runtime.model_dump(mode="json"), str(rt.device))
    progress = EvalProgress(layout.eval_resume(model_id), key, every_seconds=progress_every)
    progress.load()
    with Tracker(params, "evaluate", name=f"evaluate-{model_id}", config=config,
                 resume=(layout.eval_resume(model_id).parent, key), echo=echo) as tracker:
        records = evaluate_model(model, prepared.test_images, prepared.test_labels, rt, cfg,
                                 num_classes=prepared.num_classes, desc=model_id, progress=progress)
        tracker.use_artifact(artifact_name(model_id), "model", [checkpoint])
        ddof = params.analyze.nsd_ddof  # one NSD definition for metrics.json and the analysis
        summaries = summarize_records(records, prepared.num_classes, ddof=ddof)
        with atomic_dir(layout.eval_dir(model_id)) as out:
            records.save(out / "records.npz")
            write_json(out / "metrics.json",
                       _metrics(model_id, records, summaries, prepared.class_names, meta, checkpoint, checkpoint_sha, ddof))
        write_json(layout.logs / "eval" / f"{model_id}.json",  # untracked: times differ on every run
                   {"seconds": {name: round(t, 3) for name, t in records.seconds.items()}})
        class_acc = {name: s["class_acc"] for name, s in summaries.items()}
        _write_figures(layout.eval_plots(model_id), class_acc, prepared.class_names, records.protocol,
                       title=f"{model_id}: class-wise accuracy ({params.data.dataset}, "
                             f"eps {fraction_of_255(cfg.eps)}, n = {len(records.y)})",
                       method=ModelId.parse(model_id).method)
        _track(tracker, model_id, records, summaries, class_acc, prepared.class_names, layout.eval_plots(model_id))
        # what `absld report` selects the runs behind a table by
        tracker.summary({"records_sha256": sha256_file(layout.eval_dir(model_id) / "records.npz"),
                         "checkpoint_sha256": checkpoint_sha})
        tracker.complete()
    progress.remove()
    _echo(echo, model_id, records, summaries, prepared.class_names, layout.eval_dir(model_id), cascade=cfg.cascade,
          test_selected=meta.get("selection_split") == "test")


def _trained_by(params: Params, model_id: str) -> dict[str, Any]:
    """The W&B config of what trained the model: a student's distill run config
    (:func:`absld.tracking.student_config`: ``distill.<method>``, ``distill.train``, ...), or the
    teacher's section."""
    model = ModelId.parse(model_id)
    if model.is_teacher:
        return {"teacher": params.teacher.model_dump(mode="json")}
    return student_config(params, model.method, model.seed)


def _save_seconds() -> float:
    """How often an evaluation saves its progress: $ABSLD_EVAL_SAVE_SECONDS (default 30; 0: every batch)."""
    raw = os.environ.get(EVAL_SAVE_SECONDS_ENV, "30")
    try:
        every = float(raw)
        if not every >= 0:
            raise ValueError
    except ValueError:
        raise StageError(f"{EVAL_SAVE_SECONDS_ENV}={raw!r} is not a number of seconds >= 0") from None
    return every



def _missing_checkpoint(params: Params, model_id: str, path: Path) -> StageError:
    """The missing checkpoint and what makes it: the stage where it is one of DVC's matrix, otherwise
    the ad-hoc command and how to add the method or seed to the matrix."""
    model = ModelId.parse(model_id)
    if model.is_teacher:
        return StageError(f"{path} is missing; run `absld teacher` (or `dvc repro teacher`) first")
    method, seed = model.method, model.seed
    command = f"`absld distill --method {method} --seed {seed}`"
    methods, seeds = list(params.distill.methods), list(params.seeds)
    if method in methods and seed in seeds:
        return StageError(f"{path} is missing; run {command} (or `dvc repro distill@{method}-{seed}`) first")
    outside, settings = [], []
    if method not in methods:
        outside.append(f"method {method} is not in distill.methods [{', '.join(methods)}]")
        settings.append(f"-S 'distill.methods=[{','.join(methods + [method])}]'")
    if seed not in seeds:
        outside.append(f"seed {seed} is not in seeds [{', '.join(map(str, seeds))}]")
        settings.append(f"-S 'seeds=[{','.join(str(s) for s in sorted(seeds + [seed]))}]'")
    return StageError(f"{path} is missing and {' and '.join(outside)}, so no DVC stage trains it; train it ad hoc "
                      f"with {command}, or add it to the study with `dvc exp run -S profile={params.profile} "
                      f"{' '.join(settings)}`")


def _metrics(model_id: str, records: Records, summaries: dict[str, Summary], class_names: list[str],
             meta: dict[str, Any], checkpoint: Path, checkpoint_sha: str, ddof: int) -> dict[str, Any]:
    """metrics.json: one entry per attack (avg, worst, nsd, class_acc) and the run's context."""
    out: dict[str, Any] = {
        metric_name(name, records.protocol): {"avg": s["avg"], "worst": s["worst"], "nsd": s["nsd"],
                                              "class_acc": s["class_acc"]}
        for name, s in summaries.items()
    }
    out.update({
        "model": model_id,
        "n": int(records.y.shape[0]),
        "eps": records.eps,
        "eps_255": fraction_of_255(records.eps),
        "cascade": records.cascade,
        "protocol": records.protocol,
        "nsd_ddof": ddof,
        "columns": records.names,
        "class_names": class_names,
        "checkpoint": {"path": str(checkpoint), "sha256": checkpoint_sha},
    })
    selection = {key: meta[key] for key in SELECTION_KEYS if key in meta}
    if selection:
        out["selection"] = selection
    return out


def _check_test_samples(prepared: data_lib.Prepared, n_samples: int | None, key: str = "evaluate.n_samples") -> None:
    """The first ``n_samples`` test images exist and hold every class (class accuracies need them)."""
    if n_samples is not None and n_samples > len(prepared.test_labels):
        raise StageError(f"{key} = {n_samples} exceeds the {len(prepared.test_labels)} test images; "
                         "lower it or set it to null (all of them)")
    _, labels = first_n(prepared.test_images, prepared.test_labels, n_samples)
    empty = [prepared.class_names[k] for k in prepared.classes_without_images(labels)]
    if empty:
        raise StageError(f"the first {len(labels)} test images ({key}) hold no image of class(es) "
                         f"{', '.join(empty)}; raise {key} or set it to null (all)")


def _load_model(checkpoint: Path, prepared: data_lib.Prepared, dataset: str, rt: Runtime) -> torch.nn.Module:
    model = load_checkpoint(checkpoint)
    check_fits(model, num_classes=prepared.num_classes, in_channels=prepared.in_channels,
               image_shape=prepared.manifest["image_shape"], what=str(checkpoint), dataset=dataset,
               fix="evaluate it with the dataset it was trained on (data.dataset)")
    return rt.to_device(model).eval().requires_grad_(False)


def _write_figures(folder: Path, class_acc: dict[str, list[float]], class_names: list[str], protocol: Any,
                   title: str, method: str | None) -> None:
    """plots/eval/<model>/classwise.png: the grouped bars of every attack (legend: AA*), in the
    model's colour. The class accuracies themselves are in results/eval/<model>/metrics.json, and
    ``dvc plots`` draws every model's from plots/analyze/classwise/."""
    with atomic_dir(folder) as out:
        plot_classwise(class_acc, class_names, out / "classwise.png", title=title, protocol=protocol, method=method)


def _track(tracker: Tracker, model_id: str, records: Records, summaries: dict[str, Summary],
           class_acc: dict[str, list[float]], class_names: list[str], plots: Path) -> None:
    """The class x attack table, a bar chart per attack, the figure and the summaries in W&B."""
    names = records.names
    tracker.log_table("classwise", ["class", *(metric_name(n, records.protocol) for n in names)],
                      [[c, *(class_acc[n][k] for n in names)]
                                                       for k, c in enumerate(class_names)])
    for name in names:
        tracker.log_bar(f"classwise/{metric_name(name, records.protocol)}", class_names, class_acc[name],
                        title=f"{model_id} {attack_label(name, protocol=records.protocol)}")
    tracker.log_image("classwise_png", str(plots / "classwise.png"))
    tracker.summary({f"{metric_name(name, records.protocol)}/{key}": summaries[name][key]  # type: ignore[literal-required]
                     for name in names for key in ("avg", "worst", "nsd")})
    tracker.summary({f"{metric_name(name, records.protocol)}/class/{class_key(c)}": class_acc[name][k]
                     for name in names for k, c in enumerate(class_names)})
    tracker.summary({f"seconds/{name}": t for name, t in records.seconds.items()})


def _echo(echo: Callable[[str], None], model_id: str, records: Records, summaries: dict[str, Summary],
          class_names: list[str], out: Path, *, cascade: bool, test_selected: bool) -> None:
    """One line per attack: Avg, the worst class and NSD, and the attack's time."""
    mode = "cascade" if cascade else "every attack on every clean-correct sample"
    echo(f"{model_id}: {len(records.y)} test images, eps {fraction_of_255(records.eps)}, {mode} "
               f"-> {out / 'records.npz'}")
    for name, s in summaries.items():
        worst_class = class_names[int(np.argmin(s["class_acc"]))]
        seconds = f"{records.seconds[name]:8.1f}s" if name in records.seconds else ""
        echo(f"  {attack_label(name, protocol=records.protocol):<10} avg {s['avg']:7.2%}  worst {s['worst']:7.2%} ({worst_class})  "
                   f"nsd {s['nsd']:.3f}{seconds}")
    if test_selected:
        echo("note: this checkpoint was selected on the test set (distill.select test_fair_best), "
                   "like the reference code; its numbers are optimistic")
