"""IAD (Zhu, Ye, Chen, Liu, Han, Zhang, Sugiyama; ICLR 2022): introspective adversarial distillation.

ARD's attack and distillation term, plus student introspection weighted by how little the
teacher can be trusted on each adversarial example::

    x'  = argmax CE(S(x'), y)                                 PGD, uniform start
    a_i = P_T(y_i | x'_i) ** beta   after epoch `begin`, else 1
    L   = t^2 KL(softmax(T(x)/t) ‖ softmax(S(x')/t)) + mean_i (1 - a_i) KL(S(x_i) ‖ S(x'_i))

(docs/method.md §7; t = 1, beta = 0.1, begin = 60. The introspection target S(x) keeps its gradient,
as in TRADES. Both KL terms are summed over the classes and averaged over the batch (batchmean),
as the official ``IAD-I.py`` computes them, whatever ``distill.kl_reduction`` says: that switch is
for the methods whose reference code takes the element mean.)
From epoch ``begin + 1`` on, the introspection term and its natural forward S(x) run in every
step (the branch is the epoch's, not the batch's): a batch on which the teacher gave P_T(y|x') = 1
exactly to every sample adds a zero term then, where a value-dependent branch would skip S(x).
Under data-parallel training every process takes the branch alike, also when the teacher trusts
every sample of one process's share (tests/test_distributed.py: a branch on ``(trust < 1).any()``
put the processes' collectives out of step).
Two hooks serve Fair-IAD (:mod:`absld.methods.fair_iad`): :meth:`IAD.sample_weights` (per-sample
weights on both terms; None here) and :attr:`IAD.trust_beta` (the exponent of a_i).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import ce_loss, pgd
from ..data import Batch
from .base import MethodBase, StepOutput
from .losses import soft_labels, weighted_kl


class IAD(MethodBase):
    name = "iad"
    uses_teacher = True
    attack_mode = "train"  # the official script attacks with the student in train mode

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self.epoch = 1  # the epoch being trained (1-based)

    def perturb(self, student: nn.Module, batch: Batch, teacher_logits: Tensor | None) -> Tensor:
        attack = self.ctx.attack
        return pgd(student, batch.x, ce_loss(batch.y), eps=attack.eps, step=attack.step,
                   steps=attack.steps, start="uniform")

    @property
    def trust_beta(self) -> float:
        """The exponent of ``a_i = P_T(y_i | x'_i) ** beta`` (``distill.iad.beta``)."""
        return self.cfg.beta

    def sample_weights(self, y: Tensor) -> Tensor | None:
        """Per-sample loss weights (B,), or None for unweighted (IAD)."""
        return None

    def introspecting(self) -> bool:
        """Whether the epoch being trained is after ``begin`` (the introspection term is in the loss)."""
        return self.epoch > self.cfg.begin

    def reliability(self, x_adv: Tensor, y: Tensor) -> Tensor:
        """``a_i = P_T(y_i | x'_i) ** beta`` (B,) once introspection has begun, else ones."""
        if not self.introspecting():
            return torch.ones(len(y), device=y.device)
        with torch.no_grad():
            teacher_adv_probs = F.softmax(self.teacher(x_adv).float(), dim=1)  # (B, C)
        return teacher_adv_probs.gather(1, y[:, None]).squeeze(1) ** self.trust_beta

    def loss(self, student: nn.Module, batch: Batch, x_adv: Tensor,
             teacher_logits: Tensor | None) -> StepOutput:
        t = self.cfg.temperature
        reduction = "batchmean"  # the official code's reduction (see the module docstring)
        weight = self.sample_weights(batch.y)  # (B,) or None
        student_adv = student(x_adv).float()  # (B, C)
        distill = t * t * weighted_kl(soft_labels(teacher_logits, t), student_adv / t, weight, reduction)
        trust = self.reliability(x_adv, batch.y)  # (B,)
        stats = {"kl_adv": distill.detach(), "teacher_trust": trust.mean().detach()}
        if self.introspecting():  # decided by the epoch, never by the values: no host read, and under
            # data-parallel training every process takes the same branch (SyncBatchNorm's collectives)
            student_nat = student(batch.x).float()  # (B, C)
            distrust = 1 - trust if weight is None else (1 - trust) * weight  # (B,)
            introspection = weighted_kl(F.softmax(student_nat, dim=1), student_adv, distrust, reduction)
            stats["introspection"] = introspection.detach()
            return StepOutput(distill + introspection, logits_adv=student_adv,
                              logits_nat=student_nat, stats=stats)
        return StepOutput(distill, logits_adv=student_adv, stats=stats)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        self.epoch = epoch + 1
        return {}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
