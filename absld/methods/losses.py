"""Training-side divergences shared by every distillation method (one place, not one per method).

``kl(target_probs, logits, reduction)`` is ``sum_c p_c (log p_c - log_softmax(z)_c)`` with three
reductions:

- ``"element_mean"``: divided by ``B * C``, the ``nn.KLDivLoss(size_average=False)``-free
  ``reduction="mean"`` of the RSLAD/ABSLD reference code (= batch-mean KL / C);
- ``"batchmean"``: divided by ``B``, the textbook KL (TRADES; ARD's code takes the element mean,
  ``nn.KLDivLoss()``, like RSLAD's);
- ``"none"``: the per-sample KL ``(B,)``.

The target keeps its graph when it has one (TRADES differentiates through ``S(x)``); teacher
targets come without a graph anyway. Log-probabilities always come from ``log_softmax``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Reduction = Literal["element_mean", "batchmean", "none"]


def kl(target_probs: Tensor, logits: Tensor, reduction: Reduction) -> Tensor:
    """KL(target ‖ softmax(logits)) for ``target_probs``, ``logits`` of shape (B, C)."""
    target = target_probs.float()
    per_sample = (
        torch.special.xlogy(target, target) - target * F.log_softmax(logits.float(), dim=1)
    ).sum(dim=1)  # (B,)
    if reduction == "none":
        return per_sample
    if reduction == "batchmean":
        return per_sample.mean()
    if reduction == "element_mean":
        return per_sample.sum() / target.numel()
    raise ValueError(f"unknown KL reduction {reduction!r}; use element_mean, batchmean or none")


def weighted_kl(target_probs: Tensor, logits: Tensor, weight: Tensor | None, reduction: Reduction) -> Tensor:
    """``sum_i weight_i KL_i`` reduced like :func:`kl` (divided by ``B * C`` or by ``B``); ``weight``
    None is :func:`kl` itself (the unweighted methods keep its exact arithmetic)."""
    if weight is None:
        return kl(target_probs, logits, reduction)
    per_sample = weight * kl(target_probs, logits, "none")  # (B,)
    if reduction == "none":
        return per_sample
    return per_sample.sum() / (per_sample.numel() * (logits.shape[1] if reduction == "element_mean" else 1))


def cross_entropy(logits: Tensor, y: Tensor, weight: Tensor | None = None) -> Tensor:
    """Batch-mean CE(logits, y); with per-sample ``weight`` (B,): ``sum_i weight_i CE_i / B``
    (divided by B, not by ``sum_i weight_i``, as Fair-ARD's code weighs ARD's CE term)."""
    if weight is None:
        return F.cross_entropy(logits.float(), y)
    return (weight * F.cross_entropy(logits.float(), y, reduction="none")).mean()


def soft_labels(logits: Tensor, temperature: Tensor | float = 1.0) -> Tensor:
    """``softmax(z / t)``; ``temperature`` a scalar or a per-sample column ``(B, 1)``."""
    return F.softmax(logits.float() / temperature, dim=1)
