"""ABSLD (Zhao, Duan, Wang, Wei; NeurIPS 2024): Anti-Bias Soft Label Distillation.

RSLAD with one change: the teacher's soft label of sample i is scaled by the temperature of its
*true class*, ``p_i = softmax(z_T,i / tau[y_i])``; the student is never temperature-scaled.
After every epoch each temperature vector moves against its class error risk
(:func:`update_temperatures`): a class on which the student does worse gets a lower temperature
(sharper labels), an easy class a higher one (smoother labels).

    tau_adv, tau_nat = tau_init * 1_C
    per batch:  p_adv = softmax(z_T / tau_adv[y, None]);  p_nat = softmax(z_T / tau_nat[y, None])
                attack and loss as RSLAD;  R_adv[k] += sum_{y_i=k} CE(S(x'_i), y_i), R_nat likewise
    epoch end:  if epoch in beta_milestones: beta *= beta_gamma     (before this epoch's update)
                tau_adv = update(tau_adv, R_adv, beta); tau_nat = update(tau_nat, R_nat, beta)
                R_adv = R_nat = 0

``temperature_mode: aliased`` reproduces the released code, whose two scaled teacher tensors
share storage, so that both KL terms and the attack use ``z_T / (tau_adv[y] * tau_nat[y])``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Artefacts
from .rslad import RSLAD

TEMPERATURE_COLUMNS = ["epoch", "class", "tau_adv", "tau_nat", "risk_adv", "risk_nat", "beta"]
"""The columns of ``results/distill/absld/seed<S>/temperatures.csv`` (contract, docs/architecture.md)."""


def beta_after(beta: float, epoch: int, milestones: list[int] | None, gamma: float) -> float:
    """ABSLD's beta for the update at the end of ``epoch``: decayed by ``gamma`` first when ``epoch``
    is a milestone (the reference code decays beta with the learning rate). ``milestones`` must be
    resolved: :meth:`absld.params.DistillConfig.method_config` fills null with the LR's."""
    if milestones is None:
        raise ValueError("beta_milestones is unresolved (null): build the method from "
                         "DistillConfig.method_config, which fills in the LR milestones")
    return beta * gamma if epoch in milestones else beta


def update_temperatures(tau: Tensor, risk: Tensor, beta: float, tau_min: float, tau_max: float) -> Tensor:
    """ABSLD's end-of-epoch rule (**contract**), on 1-D tensors of length C::

        gap = risk - mean(risk)
        tau = clamp(tau - beta * gap / max|gap|, tau_min, tau_max)

    The class with the largest |gap| moves by exactly ``beta`` (before clamping); classes with a
    higher risk than average get a lower temperature. When every class has the same risk,
    ``max|gap|`` is 0 and the reference code divides by zero (NaN temperatures from then on);
    here the temperatures are returned unchanged instead.
    """
    gap = risk.float() - risk.float().mean()  # (C,)
    largest = gap.abs().max()
    if float(largest) == 0.0:
        return tau.clone()
    return (tau - beta * gap / largest).clamp(tau_min, tau_max)


class ABSLD(RSLAD):
    name = "absld"

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self.tau_adv = torch.full((ctx.num_classes,), float(cfg.tau_init))  # (C,), moved lazily
        self.tau_nat = torch.full((ctx.num_classes,), float(cfg.tau_init))  # (C,)
        self.beta = float(cfg.beta)
        self.log: list[dict[str, float]] = []  # rows of temperatures.csv

    def _to(self, device: torch.device) -> None:
        if self.tau_adv.device != device:
            self.tau_adv = self.tau_adv.to(device)
            self.tau_nat = self.tau_nat.to(device)

    def soft_labels(self, teacher_logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        self._to(teacher_logits.device)
        tau_adv = self.tau_adv[y, None]  # (B, 1)
        tau_nat = self.tau_nat[y, None]  # (B, 1)
        z = teacher_logits.float()  # (B, C)
        if self.cfg.temperature_mode == "aliased":
            teacher_probs = F.softmax(z / (tau_adv * tau_nat), dim=1)
            return teacher_probs, teacher_probs
        return F.softmax(z / tau_adv, dim=1), F.softmax(z / tau_nat, dim=1)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        risk_adv, risk_nat = self.end_of_epoch_risks()  # (C,) each, this epoch
        self.beta = beta_after(self.beta, epoch, self.cfg.beta_milestones, self.cfg.beta_gamma)  # decays first
        used_adv, used_nat = self.tau_adv.cpu().clone(), self.tau_nat.cpu().clone()
        risk_adv_cpu, risk_nat_cpu = risk_adv.cpu(), risk_nat.cpu()
        for k in range(len(used_adv)):
            self.log.append({
                "epoch": epoch, "class": k,
                "tau_adv": float(used_adv[k]), "tau_nat": float(used_nat[k]),
                "risk_adv": float(risk_adv_cpu[k]), "risk_nat": float(risk_nat_cpu[k]),
                "beta": self.beta,
            })
        cfg = self.cfg
        self.tau_adv = update_temperatures(self.tau_adv, risk_adv.to(self.tau_adv.device), self.beta,
                                           cfg.tau_min, cfg.tau_max)
        self.tau_nat = update_temperatures(self.tau_nat, risk_nat.to(self.tau_nat.device), self.beta,
                                           cfg.tau_min, cfg.tau_max)
        # the epoch's row (W&B, train_log.csv) holds what its temperatures.csv rows hold: the
        # temperatures *used during* this epoch (not the update just made, which the next epoch uses)
        return {
            "beta": self.beta,
            "tau_adv_min": float(used_adv.min()), "tau_adv_max": float(used_adv.max()),
            "tau_nat_min": float(used_nat.min()), "tau_nat_max": float(used_nat.max()),
            **{f"tau_adv/{k}": float(t) for k, t in enumerate(used_adv)},
            **{f"tau_nat/{k}": float(t) for k, t in enumerate(used_nat)},
        }

    def state_dict(self) -> dict:
        return {**super().state_dict(), "tau_adv": self.tau_adv.cpu(), "tau_nat": self.tau_nat.cpu(),
                "beta": self.beta, "log": list(self.log)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.tau_adv, self.tau_nat = state["tau_adv"].clone(), state["tau_nat"].clone()
        self.beta = float(state["beta"])
        self.log = list(state["log"])

    def artefacts(self, chosen_epoch: int, class_names: list[str],
                  history: list[dict[str, Any]] | None = None) -> Artefacts:
        """temperatures.csv (every epoch's temperatures and risks) and, for metrics.json, the
        temperatures *used during* the chosen epoch (the last one for ``select: last``)."""
        tau_adv, tau_nat = temperatures_used(self.log, chosen_epoch)
        return Artefacts(tables={"temperatures.csv": (self.log, TEMPERATURE_COLUMNS)},
                         metrics={"final_tau_adv": dict(zip(class_names, tau_adv)),
                                  "final_tau_nat": dict(zip(class_names, tau_nat)),
                                  "final_tau_epoch": chosen_epoch},
                         temperatures=self.log)


def temperatures_used(log: list[dict[str, float]], epoch: int) -> tuple[list[float], list[float]]:
    """``(tau_adv, tau_nat)``, one value per class in class order: the temperatures *used during*
    ``epoch`` (1-based), read from the :attr:`ABSLD.log` rows (= temperatures.csv) of that epoch,
    i.e. before that epoch's end-of-epoch update. Raises ValueError when the log lacks the epoch."""
    rows = sorted((r for r in log if int(r["epoch"]) == epoch), key=lambda r: int(r["class"]))
    if not rows:
        raise ValueError(f"the temperature log has no rows for epoch {epoch}")
    return [float(r["tau_adv"]) for r in rows], [float(r["tau_nat"]) for r in rows]
