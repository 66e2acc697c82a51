"""The quick class-wise check that training needs: clean and PGD accuracy of a model, per class.

One function, :func:`class_accuracy`, serves the teacher stage's check of its teacher, the distill
stage's checkpoint selection (the official ABSLD script's score, PGD avg + worst-class accuracy)
and FRL's and CFA's measurement on the validation split. The full evaluation of ``absld evaluate``
(every attack, one verdict per sample) is :mod:`absld.evaluate.cascade`.

PGD here is CE with a uniform start (the PGD-20 of docs/method.md §6). With ``seed`` given, the
starts come from a CPU generator of their own, seeded from (``seed``, ``stream``): called inside
training, the check leaves the training's random stream, and so the trained weights, exactly as
without it, and every call with the same arguments uses the same starts. With ``seed=None`` they
come from the global torch RNG (the teacher's check, after training).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from absld.attacks.losses import ce_loss
from absld.attacks.pgd import pgd
from absld.data.loader import TensorLoader
from absld.runtime import Runtime

Attack = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``attack(model, x, y) -> x_adv``."""


def first_n(images: np.ndarray, labels: np.ndarray, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` samples in split order (all when ``n`` is None)."""
    if n is None:
        return images, labels
    return images[:n], labels[:n]


def attack_seed(seed: int, name: str) -> int:
    """A 63-bit generator seed from (``seed``, ``name``), stable across runs and platforms (sha256,
    not Python's salted ``hash``). The evaluation seeds each attack's starts with it too."""
    digest = hashlib.sha256(f"absld-evaluate/{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def pgd_attack(eps: float, step: float, steps: int, generator: torch.Generator | None = None) -> Attack:
    """PGD on the CE loss from a uniform start drawn from ``generator`` (each call draws the next
    batch's U(-1, 1) noise on the CPU) or, without one, from the global torch RNG."""

    def attack(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        noise = None
        if generator is not None:
            noise = torch.rand(tuple(x.shape), generator=generator).mul_(2.0).sub_(1.0).to(x.device)
        return pgd(model, x, ce_loss(y), eps=eps, step=step, steps=steps, start="uniform", noise=noise)

    return attack


def predict_correct(model: nn.Module, images: np.ndarray, labels: np.ndarray, rt: Runtime, *,
                    batch_size: int, attack: Attack | None = None, desc: str = "eval",
                    bf16: bool = True) -> np.ndarray:
    """Per-sample correctness ``(N,)`` bool of ``model`` (eval mode) on clean or attacked inputs,
    under ``rt.precision(bf16)`` (``bf16`` false: float32 even inside an enclosing autocast)."""
    if model.training:
        raise ValueError("evaluate the model in eval mode (model.eval())")
    loader = TensorLoader(images, labels, batch_size=batch_size, device=rt.device, channels_last=rt.channels_last)
    out = []
    for batch in tqdm(loader, desc=f"[{desc}]", leave=False, disable=not rt.progress):
        x = batch.x
        if attack is not None:
            with rt.precision(bf16):
                x = attack(model, x, batch.y)
        with torch.no_grad(), rt.precision(bf16):
            out.append(model(x).argmax(1) == batch.y)
    return torch.cat(out).cpu().numpy() if out else np.zeros(0, dtype=bool)


def _per_class(correct: np.ndarray, labels: np.ndarray, num_classes: int) -> Tensor:
    """acc_k = correct images of class k / images of class k, (C,) float64; NaN for a class without images."""
    counts = np.bincount(labels, minlength=num_classes)
    hits = np.bincount(labels, weights=correct, minlength=num_classes)
    return torch.as_tensor(np.divide(hits, counts, out=np.full(num_classes, np.nan), where=counts > 0))


@dataclass(frozen=True)
class ClassAccuracy:
    """Clean and PGD accuracy of a model on a set of images, per class and overall."""

    clean: Tensor  # (C,) float64: fraction of each class's images classified correctly (NaN: no image)
    robust: Tensor  # (C,) the same under the attack
    clean_total: float  # over all images
    robust_total: float
    n: int  # images

    @property
    def score(self) -> float:
        """The official ABSLD script's checkpoint-selection score: PGD avg + worst-class PGD accuracy."""
        return self.robust_total + float(self.robust.min())

    def missing_classes(self) -> list[int]:
        """The classes without an image (their accuracies are NaN)."""
        return [int(k) for k in torch.isnan(self.clean).nonzero().flatten()]


def class_accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, num_classes: int, rt: Runtime, *,
                   eps: float, step: float, steps: int, batch_size: int, seed: int | None = None,
                   stream: str = "validate", desc: str = "eval", bf16: bool = True) -> ClassAccuracy:
    """Clean and PGD (CE, uniform start) accuracy of ``model`` in eval mode, class by class, under
    ``rt.precision(bf16)``.

    The model's mode is restored afterwards. ``seed``/``stream``: where the PGD starts come from
    (module docstring); the distill stage's streams are ``"select"`` and ``"validate"``.
    """
    was_training = model.training
    model.eval()
    generator = None if seed is None else torch.Generator().manual_seed(attack_seed(seed, stream))
    try:
        clean = predict_correct(model, images, labels, rt, batch_size=batch_size, desc=f"{desc} clean", bf16=bf16)
        robust = predict_correct(model, images, labels, rt, batch_size=batch_size, bf16=bf16,
                                 attack=pgd_attack(eps, step, steps, generator), desc=f"{desc} PGD-{steps}")
    finally:
        model.train(was_training)
    return ClassAccuracy(clean=_per_class(clean, labels, num_classes), robust=_per_class(robust, labels, num_classes),
                         clean_total=float(clean.mean()), robust_total=float(robust.mean()), n=int(len(labels)))
