r"""FGSM: one signed-gradient step of size eps on the cross-entropy.

Paper: Goodfellow, Shlens, Szegedy, *Explaining and Harnessing Adversarial Examples*, ICLR 2015
(arXiv 1412.6572); start point and clipping as in the ARD/RSLAD/ABSLD evaluation code.

Threat model: white-box, untargeted, L-inf, ``|x' - x|_inf <= eps``, ``x' in [0, 1]``, pixel space.

Semantics (docs/method.md §6)::

    x'_0 = x + gauss_std * N(0, I)                     # gauss_std = 0.001, not clamped
    x'   = clamp_[0,1]( project_{|x'-x|_inf <= eps}( x'_0 + eps * sign(d CE(model(x'_0), y) / d x'_0) ) )

It is :func:`absld.attacks.pgd.pgd` with ``steps=1, step=eps, start="gaussian"``: the model's
mode and parameter gradients are left untouched, the noise comes from the global torch RNG.
"""

from __future__ import annotations

from torch import Tensor, nn

from absld.attacks.losses import ce_loss
from absld.attacks.pgd import pgd

__all__ = ["fgsm"]


def fgsm(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, gauss_std: float = 0.001,
         noise: Tensor | None = None) -> Tensor:
    """One step of size ``eps`` on CE from ``x + gauss_std * N(0, I)``; returns detached ``x_adv``.

    Args:
        model: maps inputs in [0, 1] to logits (B, C); its train/eval mode is left as is.
        x: clean inputs in [0, 1] (B, ...).
        y: labels (B,).
        eps: radius of the L-inf ball and size of the single step, pixel space (8/255 in the papers).
        gauss_std: standard deviation of the Gaussian start (0.001 in the official code).
        noise: the start's N(0, I) draw (shape of ``x``) instead of the global torch RNG (the
            evaluation draws it per sample, so that a sample's attack does not depend on its batch).
    """
    return pgd(model, x, ce_loss(y), eps=eps, step=eps, steps=1, start="gaussian", gauss_std=gauss_std,
               noise=noise)
