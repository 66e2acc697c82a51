"""Evaluation of a model on a fixed set of samples, clean and under attacks."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .attacks import ce_loss, pgd
from .data import TensorLoader
from .fairness import class_accuracies
from .runtime import Runtime

Attack = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``attack(model, x, y) -> x_adv``."""


def first_n(images: np.ndarray, labels: np.ndarray, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` samples in test-set order (all when ``n`` is None)."""
    if n is None:
        return images, labels
    return images[:n], labels[:n]


def pgd_attack(eps: float, step: float, steps: int) -> Attack:
    """PGD on the CE loss with a uniform random start (the PGD-20 of METHOD.md §6)."""

    def attack(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return pgd(model, x, ce_loss(y), eps=eps, step=step, steps=steps, start="uniform")

    return attack


def predict_correct(model: nn.Module, images: np.ndarray, labels: np.ndarray, rt: Runtime, *,
                    batch_size: int, attack: Attack | None = None, desc: str = "eval") -> np.ndarray:
    """Per-sample correctness ``(N,)`` bool of ``model`` (eval mode) on clean or attacked inputs."""
    if model.training:
        raise ValueError("evaluate the model in eval mode (model.eval())")
    loader = TensorLoader(images, labels, batch_size=batch_size, device=rt.device,
                          channels_last=rt.channels_last)
    out = []
    for batch in tqdm(loader, desc=f"[{desc}]", leave=False, disable=not rt.progress):
        x = batch.x
        if attack is not None:
            with rt.autocast():
                x = attack(model, x, batch.y)
        with torch.no_grad(), rt.autocast():
            out.append(model(x).argmax(1) == batch.y)
    return torch.cat(out).cpu().numpy() if out else np.zeros(0, dtype=bool)


def clean_and_pgd_accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, rt: Runtime, *,
                           eps: float, step: float, steps: int, batch_size: int,
                           desc: str = "eval") -> dict[str, float]:
    """Clean and PGD (CE, uniform start) accuracy, model in eval mode."""
    model.eval()
    clean = predict_correct(model, images, labels, rt, batch_size=batch_size, desc=f"{desc} clean")
    robust = predict_correct(model, images, labels, rt, batch_size=batch_size,
                             attack=pgd_attack(eps, step, steps), desc=f"{desc} PGD-{steps}")
    return {"clean_acc": float(clean.mean()), "pgd_acc": float(robust.mean()), "n": int(len(labels))}


def fair_score(model: nn.Module, images: np.ndarray, labels: np.ndarray, num_classes: int,
               rt: Runtime, *, eps: float, step: float, steps: int, batch_size: int) -> dict[str, float]:
    """The reference code's checkpoint-selection score: PGD avg + worst-class accuracy."""
    robust = predict_correct(model, images, labels, rt, batch_size=batch_size,
                             attack=pgd_attack(eps, step, steps), desc=f"select PGD-{steps}")
    class_acc = class_accuracies(robust, labels, num_classes)
    avg, worst = float(robust.mean()), float(class_acc.min())
    return {"score": avg + worst, "pgd_avg": avg, "pgd_worst": worst}
