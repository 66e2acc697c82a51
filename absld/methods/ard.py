"""ARD (Goldblum, Fowl, Feizi, Goldstein; AAAI 2020): adversarially robust distillation.

    x' = argmax_{|x'-x| <= eps} CE(S(x'), y)                     PGD, uniform start
    L  = alpha * t^2 * KL(softmax(T(x)/t) ‖ softmax(S(x')/t)) + (1 - alpha) * CE(S(x), y)

(t = 30, alpha = 1 in RSLAD's comparison; the KL reduction is ``distill.kl_reduction``.)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import ce_loss, pgd
from ..data import Batch
from .base import MethodBase, StepOutput
from .losses import kl, soft_labels


class ARD(MethodBase):
    name = "ard"
    uses_teacher = True
    attack_mode = "train"  # the official script attacks with the student in train mode

    def perturb(self, student: nn.Module, batch: Batch, teacher_logits: Tensor | None) -> Tensor:
        attack = self.ctx.attack
        return pgd(student, batch.x, ce_loss(batch.y), eps=attack.eps, step=attack.step,
                   steps=attack.steps, start="uniform")

    def loss(self, student: nn.Module, batch: Batch, x_adv: Tensor,
             teacher_logits: Tensor | None) -> StepOutput:
        t, alpha = self.cfg.temperature, self.cfg.alpha
        student_adv = student(x_adv).float()  # (B, C)
        distill = t * t * kl(soft_labels(teacher_logits, t), student_adv / t, self.ctx.kl_reduction)
        loss = alpha * distill
        student_nat = None
        if alpha < 1:
            student_nat = student(batch.x).float()
            loss = loss + (1 - alpha) * F.cross_entropy(student_nat, batch.y)
        return StepOutput(loss, logits_adv=student_adv, logits_nat=student_nat,
                          stats={"kl_adv": distill.detach()})
