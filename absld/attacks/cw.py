r"""CW-inf: the PGD loop on the Carlini-Wagner margin loss.

Paper: Carlini & Wagner, *Towards Evaluating the Robustness of Neural Networks*, IEEE S&P 2017
(arXiv 1608.04644); the L-inf PGD variant with confidence ``kappa`` is the one of the ARD/RSLAD/ABSLD
evaluation code (``cwloss`` with ``confidence=50``).

Threat model: white-box, untargeted, L-inf, ``|x' - x|_inf <= eps``, ``x' in [0, 1]``, pixel space.

Semantics::

    loss_i = -relu(z_iy - max_{j != y} z_ij + kappa)      # maximised
    x'     = PGD(loss, eps, step, steps, start)           # see absld.attacks.pgd

The paper's evaluation: eps 8/255, step 2/255, 20 steps, uniform start, kappa 50. Once a sample's
margin is below ``-kappa`` its gradient is zero and it stops moving, as in the original code.
The TRADES-style evaluation code (``_cw_whitebox``) adds the uniform start noise without clamping
to [0, 1]; here the start is clamped (as for PGD-20, see :mod:`absld.attacks.pgd`), a difference
only at pixels within eps of 0 or 1, and only before the first step.
"""

from __future__ import annotations

from torch import Tensor, nn

from absld.attacks.losses import cw_margin_loss
from absld.attacks.pgd import Start, pgd

__all__ = ["cw_inf"]


def cw_inf(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step: float,
    steps: int,
    kappa: float = 50.0,
    start: Start = "uniform",
    noise: Tensor | None = None,
) -> Tensor:
    """PGD on the CW margin loss with confidence ``kappa``; returns detached ``x_adv``.

    Args:
        model: maps inputs in [0, 1] to logits (B, C); its train/eval mode is left as is.
        x: clean inputs in [0, 1] (B, ...).
        y: labels (B,).
        eps: radius of the L-inf ball, pixel space (8/255 in the papers).
        step: step size, pixel space (2/255 in the papers).
        steps: number of steps (20 in the papers).
        kappa: confidence of the margin (50 in the ARD/RSLAD/ABSLD evaluation).
        start: PGD start rule (uniform in the evaluation code).
        noise: the start's draw (see :func:`absld.attacks.pgd.pgd`) instead of the global torch RNG.
    """
    return pgd(model, x, cw_margin_loss(y, kappa), eps=eps, step=step, steps=steps, start=start, noise=noise)
