"""Fair-RSLAD: Fair-ARD's class re-weighting (Yue, Wang, Sun, Hua, Zhang; ICCV 2023) on RSLAD.

During the attack, kappa_i counts the PGD steps at which the student classifies x'_i correctly
(every such step, also after a recovery; the prediction is taken before each step's update, as
the official ``Fair-RSLAD.py`` does): a small kappa marks a hard sample. At the end of each epoch
the class weights for the next epoch become::

    w_k ∝ (1 / mean_{i: y_i = k} kappa_i) ** beta,   normalised to sum to C,   clamped to [w_min, w_max]

and both RSLAD KL terms are weighted per sample by ``w[y_i]`` (weights start at 1). The official
scripts train with Nesterov momentum: ``distill.fair_rslad.train.nesterov: true`` in params.yaml.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..attacks import kl_to_target, pgd
from ..data import Batch
from .base import Artefacts, per_class_rows
from ..distributed import all_reduce_sum
from .rslad import RSLAD


class FairRSLAD(RSLAD):
    name = "fair_rslad"

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self.weights = torch.ones(ctx.num_classes)  # (C,)
        self.kappa_sum = torch.zeros(ctx.num_classes)  # (C,) this epoch
        self.count = torch.zeros(ctx.num_classes)  # (C,) this epoch

    def class_weights(self, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.weights.device != y.device:
            self.weights = self.weights.to(y.device)
        w = self.weights[y]  # (B,)
        return w, w

    def perturb(self, student: nn.Module, batch: Batch, teacher_logits: Tensor | None) -> Tensor:
        p_adv, _ = self.soft_labels(teacher_logits, batch.y)
        kappa = torch.zeros(len(batch.y), device=batch.y.device)  # (B,)

        def count(logits: Tensor) -> None:  # logits of each step's x' before its update
            kappa.add_((logits.argmax(1) == batch.y).float())

        attack = self.ctx.attack
        x_adv = pgd(student, batch.x, kl_to_target(p_adv), eps=attack.eps, step=attack.step,
                    steps=attack.steps, start="gaussian", on_logits=count)
        self._accumulate(kappa, batch.y)
        return x_adv

    def _accumulate(self, kappa: Tensor, y: Tensor) -> None:
        if self.kappa_sum.device != y.device:
            self.kappa_sum, self.count = self.kappa_sum.to(y.device), self.count.to(y.device)
        self.kappa_sum.index_add_(0, y, kappa)
        self.count.index_add_(0, y, torch.ones_like(kappa))

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        logs = super().on_epoch_end(epoch)
        kappa_sum, count = all_reduce_sum(self.kappa_sum), all_reduce_sum(self.count)  # data-parallel: all shares
        seen = count > 0
        mean_kappa = kappa_sum / count.clamp(min=1)  # (C,)
        # mean kappa 0 (the whole class wrong from the start) gets the largest weight after the
        # clamp; a class not seen this epoch keeps a raw weight of 1
        raw = torch.where(seen, (1.0 / mean_kappa.clamp(min=1e-6)) ** self.cfg.beta, torch.ones_like(mean_kappa))
        weights = raw * len(raw) / raw.sum()
        self.weights = weights.clamp(self.cfg.w_min, self.cfg.w_max)
        self.kappa_sum.zero_()
        self.count.zero_()
        return {**logs, **{f"w/{k}": float(w) for k, w in enumerate(self.weights.cpu())}}

    def artefacts(self, chosen_epoch: int, class_names: list[str],
                  history: list[dict[str, Any]] | None = None) -> Artefacts:
        """weights.csv: the class weights w_k after each epoch (those used during the next one)."""
        return Artefacts(tables={"weights.csv": (per_class_rows(history or [], ["w"]), ["epoch", "class", "w"])})

    def state_dict(self) -> dict:
        return {**super().state_dict(), "weights": self.weights.cpu(),
                "kappa_sum": self.kappa_sum.cpu(), "count": self.count.cpu()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.weights = state["weights"].clone()
        self.kappa_sum, self.count = state["kappa_sum"].clone(), state["count"].clone()
