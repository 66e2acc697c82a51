"""AdaAD (Huang, Wang, Xie, Chen, Liu, Chen; AAAI 2023): adaptive adversarial distillation.

The inner maximisation attacks the teacher-student *discrepancy*, so the teacher sees the
adversarial example too::

    x' = argmax_{|x'-x| <= eps} KL(T(x') ‖ S(x'))                start x + 0.001 N(0, I)
    L  = alpha * KL(T(x') ‖ S(x')) + (1 - alpha) * KL(T(x) ‖ S(x))

(alpha = 1; gradients of the attack flow through both networks' inputs, the teacher's weights
stay frozen; the KL reduction is ``distill.adaad.kl_reduction``, null: ``distill.kl_reduction``. The
official code takes the element mean on CIFAR-10 and batchmean on CIFAR-100, 100x larger with 100
classes: the cifar100 profile sets batchmean.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import pgd
from ..data import Batch
from .base import MethodBase, StepOutput
from .losses import kl


class _StudentAndTeacher(nn.Module):
    """Stacks student and teacher logits, (B, 2C), so the PGD engine can attack their gap."""

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.student, self.teacher = student, teacher

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.student(x), self.teacher(x)], dim=1)


def _discrepancy(logits_pair: Tensor) -> Tensor:
    """Per-sample KL(T ‖ S) from stacked (B, 2C) logits."""
    student_logits, teacher_logits = logits_pair.float().chunk(2, dim=1)
    return kl(F.softmax(teacher_logits, dim=1), student_logits, "none")  # (B,)


class AdaAD(MethodBase):
    name = "adaad"
    uses_teacher = True

    @property
    def reads_teacher_logits(self) -> bool:
        """The clean teacher logits enter only the (1 - alpha) term: with alpha = 1 (the paper's) never."""
        return self.cfg.alpha < 1

    def perturb(self, student: nn.Module, batch: Batch, teacher_logits: Tensor | None) -> Tensor:
        attack = self.ctx.attack
        pair = _StudentAndTeacher(student, self.teacher)
        return pgd(pair, batch.x, _discrepancy, eps=attack.eps, step=attack.step,
                   steps=attack.steps, start="gaussian")

    def loss(self, student: nn.Module, batch: Batch, x_adv: Tensor,
             teacher_logits: Tensor | None) -> StepOutput:
        alpha, reduction = self.cfg.alpha, self.cfg.kl_reduction or self.ctx.kl_reduction
        with torch.no_grad():
            teacher_adv_probs = F.softmax(self.teacher(x_adv).float(), dim=1)  # (B, C)
        student_adv = student(x_adv).float()  # (B, C)
        kl_adv = kl(teacher_adv_probs, student_adv, reduction)
        loss, student_nat, stats = alpha * kl_adv, None, {"kl_adv": kl_adv.detach()}
        if alpha < 1:
            student_nat = student(batch.x).float()
            kl_nat = kl(F.softmax(teacher_logits.float(), dim=1), student_nat, reduction)
            loss = loss + (1 - alpha) * kl_nat
            stats["kl_nat"] = kl_nat.detach()
        return StepOutput(loss, logits_adv=student_adv, logits_nat=student_nat, stats=stats)
