"""RSLAD (Zi et al., ICCV 2021): robust soft label adversarial distillation, and the shared
machinery of the RSLAD family (ABSLD, the re-weighted control, Fair-RSLAD).

    p_adv, p_nat = teacher soft labels on the clean x (RSLAD: both softmax(z_T))
    x'  = argmax_{|x'-x| <= eps} sum_i KL(p_adv_i ‖ S(x'_i))     start x + 0.001 N(0, I)
    L   = kl_scale * ( adv_weight * KL(p_adv ‖ S(x')) + nat_weight * KL(p_nat ‖ S(x)) )

with the KL reduction of ``distill.kl_reduction`` (``element_mean`` in the reference code) and
optional per-sample weights ``w_adv[y_i]``, ``w_nat[y_i]`` (sum_i w_i KL_i, then reduced).
Subclasses change only :meth:`soft_labels` (ABSLD) or :meth:`class_weights` (re-weighting).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import kl_to_target, pgd
from ..data import Batch
from .base import MethodBase, StepOutput
from .losses import kl, weighted_kl
from .risk import ClassRisk


class RSLAD(MethodBase):
    name = "rslad"
    uses_teacher = True

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self.risk_adv = ClassRisk(ctx.num_classes)  # sum of CE(S(x'), y) per class this epoch
        self.risk_nat = ClassRisk(ctx.num_classes)  # sum of CE(S(x), y) per class this epoch

    # -- the two hooks of the family ------------------------------------------------------
    def soft_labels(self, teacher_logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher targets ``(p_adv, p_nat)``, each (B, C)."""
        teacher_probs = F.softmax(teacher_logits.float(), dim=1)
        return teacher_probs, teacher_probs

    def class_weights(self, y: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Per-sample loss weights ``(w_adv[y], w_nat[y])`` or None for unweighted."""
        return None, None

    # -- protocol -------------------------------------------------------------------------
    def perturb(self, student: nn.Module, batch: Batch, teacher_logits: Tensor | None) -> Tensor:
        p_adv, _ = self.soft_labels(teacher_logits, batch.y)
        attack = self.ctx.attack
        return pgd(student, batch.x, kl_to_target(p_adv), eps=attack.eps, step=attack.step,
                   steps=attack.steps, start="gaussian")

    def loss(self, student: nn.Module, batch: Batch, x_adv: Tensor,
             teacher_logits: Tensor | None) -> StepOutput:
        p_adv, p_nat = self.soft_labels(teacher_logits, batch.y)  # (B, C) each
        student_adv = student(x_adv).float()  # (B, C)
        student_nat = student(batch.x).float()  # (B, C)
        w_adv, w_nat = self.class_weights(batch.y)
        kl_adv = self._weighted_kl(p_adv, student_adv, w_adv)
        kl_nat = self._weighted_kl(p_nat, student_nat, w_nat)
        cfg = self.cfg
        loss = cfg.kl_scale * (cfg.adv_weight * kl_adv + cfg.nat_weight * kl_nat)
        with torch.no_grad():
            self.risk_adv.add(F.cross_entropy(student_adv, batch.y, reduction="none"), batch.y)
            self.risk_nat.add(F.cross_entropy(student_nat, batch.y, reduction="none"), batch.y)
        return StepOutput(loss, logits_adv=student_adv, logits_nat=student_nat,
                          stats={"kl_adv": kl_adv.detach(), "kl_nat": kl_nat.detach()})

    def _weighted_kl(self, target: Tensor, logits: Tensor, weight: Tensor | None) -> Tensor:
        if weight is None:
            return kl(target, logits, self.ctx.kl_reduction)
        return weighted_kl(target, logits, weight, self.ctx.kl_reduction)

    def end_of_epoch_risks(self) -> tuple[Tensor, Tensor]:
        """This epoch's class risks (R_adv, R_nat), then reset for the next epoch."""
        risks = self.risk_adv.value().clone(), self.risk_nat.value().clone()
        self.risk_adv.reset()
        self.risk_nat.reset()
        return risks

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        risk_adv, risk_nat = self.end_of_epoch_risks()
        return {"risk_adv_max_gap": float(risk_adv.max() - risk_adv.min())}

    def state_dict(self) -> dict:
        return {"risk_adv": self.risk_adv.state_dict(), "risk_nat": self.risk_nat.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.risk_adv.load_state_dict(state["risk_adv"])
        self.risk_nat.load_state_dict(state["risk_nat"])
