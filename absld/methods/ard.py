"""ARD (Goldblum, Fowl, Feizi, Goldstein; AAAI 2020): adversarially robust distillation.

    x' = argmax_{|x'-x| <= eps} CE(S(x'), y)                     PGD, uniform start
    L  = alpha * t^2 * KL(softmax(T(x)/t) ‖ softmax(S(x')/t)) + (1 - alpha) * CE(S(x), y)

(t = 30, alpha = 1 in RSLAD's comparison; the KL reduction is ``distill.kl_reduction``.)
:meth:`ARD.sample_weights` is the hook of Fair-ARD (:mod:`absld.methods.fair_ard`): per-sample
weights on both terms, ``sum_i w_i KL_i`` and ``sum_i w_i CE_i`` reduced as above; None here.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..attacks import ce_loss, pgd
from ..data import Batch
from .base import MethodBase, StepOutput
from .losses import cross_entropy, soft_labels, weighted_kl


class ARD(MethodBase):
    name = "ard"
    uses_teacher = True
    attack_mode = "train"  # the official script attacks with the student in train mode

    def perturb(self, student: nn.Module, batch: Batch, teacher_logits: Tensor | None) -> Tensor:
        attack = self.ctx.attack
        return pgd(student, batch.x, ce_loss(batch.y), eps=attack.eps, step=attack.step,
                   steps=attack.steps, start="uniform")

    def sample_weights(self, y: Tensor) -> Tensor | None:
        """Per-sample loss weights (B,), or None for unweighted (ARD)."""
        return None

    def loss(self, student: nn.Module, batch: Batch, x_adv: Tensor,
             teacher_logits: Tensor | None) -> StepOutput:
        t, alpha = self.cfg.temperature, self.cfg.alpha
        weight = self.sample_weights(batch.y)  # (B,) or None
        student_adv = student(x_adv).float()  # (B, C)
        teacher_probs = soft_labels(teacher_logits, t)  # (B, C)
        distill = t * t * weighted_kl(teacher_probs, student_adv / t, weight, self.ctx.kl_reduction)
        loss = alpha * distill
        student_nat = None
        if alpha < 1:
            student_nat = student(batch.x).float()
            loss = loss + (1 - alpha) * cross_entropy(student_nat, batch.y, weight)
        return StepOutput(loss, logits_adv=student_adv, logits_nat=student_nat,
                          stats={"kl_adv": distill.detach()})
