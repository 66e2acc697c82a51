"""Adversarial attacks: one PGD engine and the evaluation attacks (AutoAttack, which only the evaluation
runs, is :mod:`absld.evaluate.autoattack`); :mod:`absld.attacks.accuracy` is training's quick class-wise check.

Inputs are in [0, 1] and models normalise internally, so ``eps`` and ``step`` are in pixel space.
Every ``eps``/``step``/``steps`` comes from the caller; the only defaults are the constants of the
original papers' code named below (``gauss_std``, ``kappa``).

| attack | paper | threat model | defaults (others: from the caller) |
|---|---|---|---|
| :func:`pgd` | Madry et al., ICLR 2018 (1706.06083) | white-box L-inf, any per-sample loss | ``gauss_std=0.001`` for ``start="gaussian"`` |
| :func:`fgsm` | Goodfellow et al., ICLR 2015 (1412.6572) | white-box L-inf, CE, one step of size eps | start ``x + 0.001 N(0, I)`` |
| :func:`cw_inf` | Carlini & Wagner, S&P 2017 (1608.04644) | white-box L-inf, PGD on the CW margin | ``kappa=50``, ``start="uniform"`` |
| :func:`absld.evaluate.autoattack.autoattack` | Croce & Hein, ICML 2020 (2003.01690) | white + black box, L-inf or L2 | ``norm="Linf"``; reference backend ``pyautoattack`` |

The paper's evaluation (docs/method.md §6), eps 8/255: FGSM; PGD-20 = ``pgd(ce_loss(y), step=2/255,
steps=20, start="uniform")``; CW-inf = ``cw_inf(step=2/255, steps=20)``; AA = ``autoattack(version="standard")``.
Training-time inner maximisation (docs/method.md §2, §7) reuses :func:`pgd` with :func:`ce_loss` or
:func:`kl_to_target`.
"""

from absld.attacks.cw import cw_inf
from absld.attacks.errors import AttackError
from absld.attacks.fgsm import fgsm
from absld.attacks.losses import LossFn, ce_loss, cw_margin_loss, kl_to_target
from absld.attacks.pgd import Start, pgd, project_linf

__all__ = [
    "AttackError",
    "LossFn",
    "Start",
    "ce_loss",
    "cw_inf",
    "cw_margin_loss",
    "fgsm",
    "kl_to_target",
    "pgd",
    "project_linf",
]
