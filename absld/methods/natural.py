"""Natural training: cross-entropy on the clean images, no attack. Not a student method (it is not
in :data:`absld.methods.METHODS`): it trains B-MTARD's clean teacher (``teacher_clean.source: train``),
through the same loop as every other model.

    L = CE(S(x), y)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..data import Batch
from .base import MethodBase, StepOutput


class Natural(MethodBase):
    name = "natural"

    def perturb(self, student: nn.Module, batch: Batch, teacher_logits: Tensor | None) -> Tensor:
        return batch.x  # no inner maximisation

    def loss(self, student: nn.Module, batch: Batch, x_adv: Tensor,
             teacher_logits: Tensor | None) -> StepOutput:
        logits_nat = student(batch.x).float()  # (B, C)
        return StepOutput(F.cross_entropy(logits_nat, batch.y), logits_nat=logits_nat)
