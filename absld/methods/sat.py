"""SAT / PGD-AT (Madry et al., ICLR 2018): minimise CE on PGD examples.

    x' = argmax_{|x'-x| <= eps} CE(S(x'), y)      PGD, uniform random start
    L  = CE(S(x'), y)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import ce_loss, pgd
from ..data import Batch
from .base import MethodBase, StepOutput


class SAT(MethodBase):
    name = "sat"

    def perturb(self, student: nn.Module, batch: Batch, teacher_logits: Tensor | None) -> Tensor:
        attack = self.ctx.attack
        return pgd(student, batch.x, ce_loss(batch.y), eps=attack.eps, step=attack.step,
                   steps=attack.steps, start=self.cfg.start)

    def loss(self, student: nn.Module, batch: Batch, x_adv: Tensor,
             teacher_logits: Tensor | None) -> StepOutput:
        logits_adv = student(x_adv).float()  # (B, C)
        return StepOutput(F.cross_entropy(logits_adv, batch.y), logits_adv=logits_adv)
