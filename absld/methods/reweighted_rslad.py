"""Re-weighted RSLAD: the control experiment for ABSLD (is ABSLD just class re-weighting?).

RSLAD's loss with per-class weights on each KL term, driven by the same class error risks and the
same end-of-epoch rule as ABSLD's temperatures, in the direction a re-weighting needs (a class
with higher risk gets a *larger* weight)::

    L = kl_scale * ( adv_weight * mean_i w_adv[y_i] KL_adv,i + nat_weight * mean_i w_nat[y_i] KL_nat,i )
    epoch end:  w = clamp(w + beta * gap / max|gap|, w_min, w_max),  gap = R - mean(R)
              = update_temperatures(w, -R, beta, w_min, w_max)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .absld import beta_after, update_temperatures
from .base import Artefacts, per_class_rows
from .rslad import RSLAD


class ReweightedRSLAD(RSLAD):
    name = "reweighted_rslad"

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self.w_adv = torch.full((ctx.num_classes,), float(cfg.w_init))  # (C,)
        self.w_nat = torch.full((ctx.num_classes,), float(cfg.w_init))  # (C,)
        self.beta = float(cfg.beta)

    def class_weights(self, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.w_adv.device != y.device:
            self.w_adv, self.w_nat = self.w_adv.to(y.device), self.w_nat.to(y.device)
        return self.w_adv[y], self.w_nat[y]  # (B,) each

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        risk_adv, risk_nat = self.end_of_epoch_risks()
        self.beta = beta_after(self.beta, epoch, self.cfg.beta_milestones, self.cfg.beta_gamma)  # decays first
        cfg = self.cfg
        self.w_adv = update_temperatures(self.w_adv, -risk_adv.to(self.w_adv.device), self.beta, cfg.w_min, cfg.w_max)
        self.w_nat = update_temperatures(self.w_nat, -risk_nat.to(self.w_nat.device), self.beta, cfg.w_min, cfg.w_max)
        return {"beta": self.beta, **{f"w_adv/{k}": float(w) for k, w in enumerate(self.w_adv.cpu())}}

    def artefacts(self, chosen_epoch: int, class_names: list[str],
                  history: list[dict[str, Any]] | None = None) -> Artefacts:
        """weights.csv: the adversarial class weights after each epoch (those used during the next one)."""
        return Artefacts(tables={"weights.csv": (per_class_rows(history or [], ["w_adv"]),
                                                 ["epoch", "class", "w_adv"])})

    def state_dict(self) -> dict:
        return {**super().state_dict(), "w_adv": self.w_adv.cpu(), "w_nat": self.w_nat.cpu(), "beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.w_adv, self.w_nat = state["w_adv"].clone(), state["w_nat"].clone()
        self.beta = float(state["beta"])
