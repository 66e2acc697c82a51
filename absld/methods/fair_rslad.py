"""Fair-RSLAD: Fair-ARD's class re-weighting (Yue, Mou, Wang, Zhao; NeurIPS 2023) on RSLAD.

During the attack, kappa_i counts the PGD steps at which the student classifies x'_i correctly
(every such step, also after a recovery; the prediction is taken before each step's update, as
the official ``Fair-RSLAD.py`` does): a small kappa marks a hard sample. At the end of each epoch
the class weights for the next epoch become::

    w_k ∝ (1 / mean_{i: y_i = k} kappa_i) ** beta,   normalised to sum to C,   clamped to [w_min, w_max]

and both RSLAD KL terms are weighted per sample by ``w[y_i]`` (weights start at 1). The official
scripts train with Nesterov momentum: ``distill.fair_rslad.train.nesterov: true`` in params.yaml.
The kappa count and the weights are :mod:`absld.methods.kappa`'s, shared with Fair-ARD and Fair-IAD
(``Fair-RSLAD.py:99`` takes ``1 / kappa`` without the 1e-5 of the other two scripts).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..attacks import kl_to_target
from ..data import Batch
from .kappa import KappaReweighting
from .rslad import RSLAD


class FairRSLAD(KappaReweighting, RSLAD):
    name = "fair_rslad"

    def class_weights(self, y: Tensor) -> tuple[Tensor, Tensor]:
        w = self.sample_weights(y)  # (B,)
        return w, w

    def perturb(self, student: nn.Module, batch: Batch, teacher_logits: Tensor | None) -> Tensor:
        p_adv, _ = self.soft_labels(teacher_logits, batch.y)
        return self.kappa_pgd(student, batch, kl_to_target(p_adv), start="gaussian")
