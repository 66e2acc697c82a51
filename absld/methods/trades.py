"""TRADES (Zhang et al., ICML 2019): trade natural accuracy against a smoothness term.

    x' = argmax_{|x'-x| <= eps} KL(S(x) ‖ S(x'))   start x + 0.001 N(0, I)
    L  = CE(S(x), y) + beta * KL(S(x) ‖ S(x'))     batch-mean KL, gradient through both sides
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import kl_to_target, pgd
from ..data import Batch
from .base import MethodBase, StepOutput
from .losses import kl


class TRADES(MethodBase):
    name = "trades"

    def perturb(self, student: nn.Module, batch: Batch, teacher_logits: Tensor | None) -> Tensor:
        with torch.no_grad():
            natural_probs = F.softmax(student(batch.x).float(), dim=1)  # (B, C)
        attack = self.ctx.attack
        return pgd(student, batch.x, kl_to_target(natural_probs), eps=attack.eps,
                   step=attack.step, steps=attack.steps, start="gaussian")

    def loss(self, student: nn.Module, batch: Batch, x_adv: Tensor,
             teacher_logits: Tensor | None) -> StepOutput:
        logits_nat = student(batch.x).float()  # (B, C)
        logits_adv = student(x_adv).float()  # (B, C)
        natural = F.cross_entropy(logits_nat, batch.y)
        robust = kl(F.softmax(logits_nat, dim=1), logits_adv, "batchmean")
        return StepOutput(natural + self.cfg.beta * robust, logits_adv=logits_adv,
                          logits_nat=logits_nat,
                          stats={"loss_natural": natural.detach(), "loss_robust": robust.detach()})
