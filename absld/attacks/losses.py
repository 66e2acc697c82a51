"""Per-sample objectives that the PGD engine maximises.

Every helper returns a closure ``loss_fn(logits) -> Tensor`` mapping logits ``(B, C)`` to one loss
per sample ``(B,)``. The engine sums the losses before differentiating, so each sample's input
gradient is the gradient of its own loss (no ``1/B`` factor, no cross-talk between samples).
The closures compute in float32 (``logits.float()``), so they are safe under a bf16 ``autocast``.

| helper | loss per sample i (maximised) | used by |
|---|---|---|
| :func:`ce_loss` | ``CE(z_i, y_i)`` | PGD-AT / SAT, ARD, IAD, FGSM, PGD-20 evaluation |
| :func:`kl_to_target` | ``sum_c p_ic (log p_ic - log_softmax(z_i)_c)`` = KL(p_i ‖ softmax z_i) | RSLAD, ABSLD, TRADES, AdaAD |
| :func:`cw_margin_loss` | ``-relu(z_iy - max_{j≠y} z_ij + kappa)`` | CW-inf evaluation (ARD/RSLAD code) |
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from absld.attacks.errors import AttackError

__all__ = ["LossFn", "ce_loss", "cw_margin_loss", "kl_to_target"]

LossFn = Callable[[Tensor], Tensor]
"""``loss_fn(logits (B, C)) -> per-sample loss (B,)``, to be maximised."""


def ce_loss(y: Tensor) -> LossFn:
    """Per-sample cross-entropy against the hard labels ``y`` (B,)."""
    labels = y.detach()

    def loss_fn(logits: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), labels, reduction="none")  # (B,)

    return loss_fn


def kl_to_target(target_probs: Tensor) -> LossFn:
    """Per-sample ``KL(target_probs ‖ softmax(logits))``, summed over classes.

    ``target_probs`` (B, C) is a fixed distribution (e.g. the teacher's soft label
    ``softmax(z_T / tau[y, None])``); it is detached. Zero target entries contribute zero
    (``xlogy`` convention, as ``nn.KLDivLoss``). The student's log-probabilities come from
    ``log_softmax``, never ``log(softmax(.))``.
    """
    target = target_probs.detach().float()  # (B, C)
    target_entropy_term: Tensor = torch.special.xlogy(target, target).sum(dim=1)  # (B,) sum p log p

    def loss_fn(logits: Tensor) -> Tensor:
        student_log_probs = F.log_softmax(logits.float(), dim=1)  # (B, C)
        cross_entropy_term: Tensor = (target * student_log_probs).sum(dim=1)  # (B,) sum p log q
        return target_entropy_term - cross_entropy_term  # (B,)

    return loss_fn


def cw_margin_loss(y: Tensor, kappa: float = 50.0) -> LossFn:
    """Per-sample Carlini-Wagner L-inf margin loss, as in the ARD/RSLAD evaluation code.

    ``loss_i = -relu(z_iy - max_{j != y} z_ij + kappa)``: maximising it pushes the true-class logit
    below the best other logit by at least ``kappa`` (``kappa = 50`` in the papers' evaluation).
    Needs at least two classes.
    """
    if kappa < 0:
        raise AttackError(f"cw kappa={kappa!r} is negative; use a confidence >= 0 (the papers use 50).")
    labels = y.detach()

    def loss_fn(logits: Tensor) -> Tensor:
        logits = logits.float()  # (B, C)
        if logits.shape[1] < 2:
            raise AttackError(f"the CW margin needs at least 2 classes, got logits of shape {tuple(logits.shape)}.")
        is_true = F.one_hot(labels, num_classes=logits.shape[1]).bool()  # (B, C)
        true_logit = logits.gather(1, labels[:, None]).squeeze(1)  # (B,)
        best_other_logit = logits.masked_fill(is_true, float("-inf")).amax(dim=1)  # (B,)
        return -F.relu(true_logit - best_other_logit + kappa)  # (B,)

    return loss_fn
