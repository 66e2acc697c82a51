"""Evaluation of a model on a fixed set of test samples, under attacks."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .attacks import ce_loss, pgd
from .data import TensorLoader
from .runtime import Runtime


def first_n(images: np.ndarray, labels: np.ndarray, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` samples in test-set order (all when ``n`` is None)."""
    if n is None:
        return images, labels
    return images[:n], labels[:n]


def clean_and_pgd_accuracy(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    rt: Runtime,
    *,
    eps: float,
    step: float,
    steps: int,
    batch_size: int,
    desc: str = "eval",
) -> dict[str, float]:
    """Clean accuracy and PGD (CE, uniform start) robust accuracy, model in eval mode."""
    model.eval()
    loader = TensorLoader(images, labels, batch_size=batch_size, device=rt.device,
                          channels_last=rt.channels_last)
    correct_clean = torch.zeros((), device=rt.device)
    correct_pgd = torch.zeros((), device=rt.device)
    for batch in tqdm(loader, desc=f"[{desc}] clean + PGD-{steps}", leave=False, disable=not rt.progress):
        with torch.no_grad(), rt.autocast():
            correct_clean += (model(batch.x).argmax(1) == batch.y).sum()
        with rt.autocast():
            x_adv = pgd(model, batch.x, ce_loss(batch.y), eps=eps, step=step, steps=steps, start="uniform")
        with torch.no_grad(), rt.autocast():
            correct_pgd += (model(x_adv).argmax(1) == batch.y).sum()
    n = len(labels)
    return {"clean_acc": float(correct_clean) / n, "pgd_acc": float(correct_pgd) / n, "n": n}
