"""Which weights a student's checkpoint holds: distill.select (last, val_fair_best, test_fair_best) or a
method's own weight average (CFA's FAWA/EMA), to which distill.select does not apply."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..attacks.accuracy import class_accuracy, first_n
from ..params import DistillConfig, TrainConfig, fraction_of_255
from ..data import Prepared
from ..errors import StageError
from ..runtime import Runtime


def averaged(cfg: DistillConfig, method_name: str) -> str | None:
    """The kind of weight average the method writes as its student (CFA's fawa/ema), else None."""
    average = getattr(cfg.method_config(method_name), "average", "none")
    return None if average == "none" else average


@dataclass(frozen=True)
class Selection:
    """distill.select for one student: the score function (None: no selection PGD), the epochs it runs
    after, and the rule in words (for the checkpoint meta and metrics.json)."""

    score: Callable[[torch.nn.Module], dict[str, float]] | None
    epochs: list[int]
    rule: str


def selection(cfg: DistillConfig, method_name: str, train_cfg: TrainConfig, prepared: Prepared, rt: Runtime,
              seed: int) -> Selection:
    """The checkpoint selection of ``method_name``; refuses, before any training, a split that cannot serve it."""
    if cfg.select == "val_fair_best" and len(prepared.val_labels) == 0:
        raise StageError("distill.select val_fair_best needs a validation split; set data.val_per_class > 0")
    select_epochs = cfg.selection_epochs(method_name)  # the method's own milestones count
    average = averaged(cfg, method_name)
    if average:
        return Selection(None, [], f"the weight average after the last epoch ({train_cfg.epochs}; "
                                   f"distill.{method_name}.average = {average}); distill.select does not apply to it")
    if cfg.select == "last":
        return Selection(None, select_epochs, f"the last epoch ({train_cfg.epochs})")
    sel = cfg.select_eval
    split = "validation" if cfg.select == "val_fair_best" else "test"
    images, labels = ((prepared.val_images, prepared.val_labels) if split == "validation"
                      else (prepared.test_images, prepared.test_labels))
    images, labels = first_n(images, labels, sel.n_samples)
    missing = prepared.classes_without_images(labels)
    if missing:
        raise StageError(f"distill.select_eval.n_samples = {sel.n_samples}: the first {len(labels)} {split} images "
                         f"hold no image of {len(missing)} class(es), so the worst-class score of distill.select "
                         f"{cfg.select} is undefined; raise it or set null (all)")

    def score(model: torch.nn.Module) -> dict[str, float]:
        acc = class_accuracy(model, images, labels, prepared.num_classes, rt, eps=sel.eps, step=sel.step,
                             steps=sel.steps, batch_size=sel.batch_size, seed=seed, stream="select", desc="select",
                             bf16=cfg.measure_amp)
        return {"score": acc.score, "pgd_avg": acc.robust_total, "pgd_worst": float(acc.robust.min())}

    return Selection(score, select_epochs, _rule(cfg, train_cfg, select_epochs, len(labels)))


def _rule(cfg: DistillConfig, train_cfg: TrainConfig, epochs: list[int], n: int) -> str:
    """distill.select in words."""
    sel = cfg.select_eval
    split = "the test set (model selection on the test set, as the official script)" \
        if cfg.select == "test_fair_best" else "the held-out validation split"
    first = train_cfg.milestones[0] if train_cfg.milestones else None
    when = f"e % {sel.every} == 0" + (f" or e >= {first} (the first LR milestone)" if first else "")
    return (f"max PGD-{sel.steps} avg + worst-class accuracy (CE, uniform start, eps "
            f"{fraction_of_255(sel.eps)}, step {fraction_of_255(sel.step)}) on {n} images of {split}, "
            f"after the {len(epochs)} epochs e with {when}")


def chosen_weights(cfg: DistillConfig, method_name: str, method: Any, result: Any, train_cfg: TrainConfig,
                   rule: str, echo: Callable[[str], None]) -> tuple[dict, dict[str, Any]]:
    """The state dict to write as the student and its selection record (select, selected_epoch,
    selection_split, selection_score, selection_on_test_set, selection_rule)."""
    state, epoch, select = result.final_state, train_cfg.epochs, cfg.select
    if averaged(cfg, method_name):  # e.g. CFA's weight average: distill.select does not apply
        select, state = "weight_average", method.output_state()
        if state is None:
            echo(f"note: {method_name} averaged no epoch (the validation gate never passed: "
                 f"distill.{method_name}.threshold); the last epoch's trained weights are written")
            state, select = result.final_state, "last"
            rule = f"the last epoch ({train_cfg.epochs}): no epoch averaged (distill.{method_name}.threshold)"
    elif cfg.select != "last":
        state, epoch = result.best_state, result.best_epoch
    return state, {"select": select, "selected_epoch": epoch,
                   "selection_split": {"val_fair_best": "validation", "test_fair_best": "test"}.get(select),
                   "selection_score": result.best_score, "selection_on_test_set": select == "test_fair_best",
                   "selection_rule": rule}
