"""FRL (Xu, Liu, Li, Jain, Tang; ICML 2021): Fair Robust Learning, reweight (RW) and reweight +
remargin (RWRM), as the official code (github.com/hannxu123/fair_robust, HEAD a80547d) runs it.

TRADES whose two terms are re-weighted per class. After every epoch the model is measured on the
validation split with PGD (CE, uniform start; the code: PGD-20, eps 8/255, step 2/255, 300 images
per class held out of the training set); for class k::

    clean_err_k = 1 - acc_k                 bndy_err_k = acc_k - advacc_k     (a difference of rates)
    g0_k = clean_err_k - clean_err - tau_clean      g1_k = bndy_err_k - bndy_err - tau_boundary
    lambda_0 = P(lambda_0 + r g0);  lambda_1 = P(lambda_1 + 2 r g1)      P: clamp at 0, then if the sum
                                                                          exceeds lim, scale it to lim
    w_k = 1/C + lambda_k - (1/C) sum_j lambda_j                           (w0 from lambda_0, w1 from lambda_1)
    RWRM also: lambda_2 = lambda_2 + r2 g1 (no projection);  eps_k = eps clamp(exp(2 lambda_2,k), 0.98, 3)

and the next epoch trains on (``loss_reduction: separate``, the code at HEAD)::

    L = sum_i w0[y_i] CE_i / sum_i w0[y_i] + beta sum_i w1[y_i] KL_i / sum_i w1[y_i],
    KL_i = KL(S(x_i) || S(x'_i)), S(x) not detached (TRADES);  x' the TRADES attack (eval mode,
    start x + 0.001 N(0, I), summed KL) in the radius eps_{y_i}; RWRM's step is max_i eps_{y_i} / 4.

Where this follows the code rather than the paper (each a param where it is a choice):
- the multipliers are projected onto {lambda >= 0, sum <= lim = 0.5} (``lim``); the boundary
  multipliers step by 2 r (``boundary_rate_scale``); r is halved every 40 fair epochs;
- the margin rule is the code's exp(2 lambda_2) with the clamp [0.98, 3.0] and the step max eps / 4
  (``margin_min``/``margin_max``, ``step_rule``); the margin multiplier is never projected;
- the weights are measured after every epoch (the code: at the start of each epoch, the same
  model), including after the last one (logged; the code never measures its final model);
- the code fine-tunes a robust model trained elsewhere (``frlrw.py:21`` loads ``hot_start.pt``; the
  readme links a pre-trained robust PreAct ResNet-18 whose recipe is not released). Here the hot
  start stands in for that model with our TRADES baseline's recipe, in the same run:
  ``hot_start_epochs`` epochs of plain TRADES (uniform weights, no multiplier update) with
  ``hot_start_beta`` (6, TRADES's own and ``distill.trades.beta``; null: FRL's ``beta`` 1.5), the
  learning rate of the method's ``train`` section (0.1 -> 0.001 at epochs 75 and 90, TRADES's
  CIFAR-10 schedule), then the fair epochs at 1e-3 (the code's fine-tuning lr, ``frlrw.py:26``) with
  FRL's ``beta`` (``frlrw.py:101``: 1.5).
- C classes in place of the code's hard-coded 10 (1/C in the weights);
- the validation split is ``data.val_per_class`` images per class, shared with every method (100
  in the paper configuration; the code holds out 300 per class);
- checkpoint selection (``distill.select`` other than ``last``) only looks at fair epochs, from
  ``hot_start_epochs + 1`` on (``FrlConfig.first_selectable_epoch``).

Data-parallel training: each process normalises its weighted means by its own share's weight sums
(the loop re-weights shares as plain means), so the step differs from one process's by the ratio of
the shares' weight sums (exact with uniform weights); the validation split is measured once, by
rank 0, and every process gets its numbers (``ctx.validate``), so every process holds the same
multipliers, weights and radii.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import kl_to_target, pgd
from ..data import Batch
from .base import Artefacts, ClassAccuracy, MethodBase, StepOutput
from .losses import kl

STATE_COLUMNS = ["epoch", "class", "clean_err", "boundary_err", "lambda_nat", "lambda_boundary",
                 "lambda_margin", "w_nat", "w_boundary", "eps_255", "rate"]
"""Columns of ``results/distill/frl_*/seed<S>/frl_state.csv``: after each epoch, the validation
errors measured and the multipliers, weights and radius (x 255) that the next epoch trains with."""


def project_multipliers(lam: Tensor, lim: float) -> Tensor:
    """The code's ``normalize_lambda``: ``max(lambda, 0)``, then scaled to sum ``lim`` if it sums more."""
    lam = lam.clamp(min=0.0)
    total = float(lam.sum())
    return lam * (lim / total) if total > lim else lam


def class_weights(lam: Tensor) -> Tensor:
    """``w_k = 1/C + lambda_k - (1/C) sum_j lambda_j``: the Lagrangian with the average risk; sums to 1."""
    num_classes = len(lam)
    return 1.0 / num_classes + lam - lam.sum() / num_classes


def violations(acc: ClassAccuracy, tau_clean: float, tau_boundary: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(clean_err, bndy_err, g0, g1)`` per class from a validation measurement (the code's
    ``evaluate`` and the two constraint violations of ``frl_train``)."""
    clean_err = 1.0 - acc.clean.double()
    bndy_err = acc.clean.double() - acc.robust.double()
    total_clean = 1.0 - acc.clean_total
    total_bndy = acc.clean_total - acc.robust_total
    return clean_err, bndy_err, clean_err - total_clean - tau_clean, bndy_err - total_bndy - tau_boundary


class FRLReweight(MethodBase):
    name = "frl_rw"
    remargin = False

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        num_classes = ctx.num_classes
        self.lambda_nat = torch.zeros(num_classes, dtype=torch.float64)  # (C,) lambda_0
        self.lambda_boundary = torch.zeros(num_classes, dtype=torch.float64)  # (C,) lambda_1
        self.lambda_margin = torch.zeros(num_classes, dtype=torch.float64)  # (C,) lambda_2 (RWRM)
        self.rate = float(cfg.rate_clean)
        self.epoch = 1  # the epoch being trained (1-based): the hot start's or a fair one
        self.log: list[dict[str, float]] = []
        self._cache: tuple[torch.device, Tensor, Tensor, Tensor] | None = None

    # ---- the class-wise state as used by a batch
    def weights(self) -> tuple[Tensor, Tensor]:
        """``(w_nat, w_boundary)``, each (C,), summing to 1."""
        return class_weights(self.lambda_nat), class_weights(self.lambda_boundary)

    def class_eps(self) -> Tensor:
        """(C,) training radius per class: ``eps`` (RW), ``eps clamp(exp(2 lambda_2), min, max)`` (RWRM)."""
        eps = float(self.ctx.attack.eps)
        if not self.remargin:
            return torch.full_like(self.lambda_margin, eps)
        return eps * torch.exp(2.0 * self.lambda_margin).clamp(self.cfg.margin_min, self.cfg.margin_max)

    def _on(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        if self._cache is None or self._cache[0] != device:
            w_nat, w_boundary = self.weights()
            self._cache = (device, w_nat.float().to(device), w_boundary.float().to(device),
                           self.class_eps().float().to(device))
        return self._cache[1], self._cache[2], self._cache[3]

    # ---- the batch
    def perturb(self, student: nn.Module, batch: Batch, teacher_logits: Tensor | None) -> Tensor:
        with torch.no_grad():
            natural_probs = F.softmax(student(batch.x).float(), dim=1)  # (B, C)
        attack = self.ctx.attack
        if not self.remargin:
            return pgd(student, batch.x, kl_to_target(natural_probs), eps=attack.eps, step=attack.step,
                       steps=attack.steps, start="gaussian")
        eps = self._on(batch.y.device)[2][batch.y]  # (B,) eps_{y_i}
        # the batch's largest radius over 4, as a (B,) tensor: no host read of it in the step
        step = (eps.amax() / 4).expand_as(eps) if self.cfg.step_rule == "max_eps_quarter" else attack.step
        return pgd(student, batch.x, kl_to_target(natural_probs), eps=eps, step=step, steps=attack.steps,
                   start="gaussian")

    def loss(self, student: nn.Module, batch: Batch, x_adv: Tensor,
             teacher_logits: Tensor | None) -> StepOutput:
        logits_nat = student(batch.x).float()  # (B, C)
        logits_adv = student(x_adv).float()  # (B, C)
        w_nat, w_boundary, _ = self._on(batch.y.device)
        w0, w1 = w_nat[batch.y], w_boundary[batch.y]  # (B,) each
        ce = F.cross_entropy(logits_nat, batch.y, reduction="none")  # (B,)
        boundary = kl(F.softmax(logits_nat, dim=1), logits_adv, "none")  # (B,), gradient through S(x)
        beta = self.beta()
        if self.cfg.loss_reduction == "joint":
            loss = (w0 * ce + beta * w1 * boundary).sum() / (w0 + w1).sum()
        else:
            loss = (w0 * ce).sum() / w0.sum() + beta * (w1 * boundary).sum() / w1.sum()
        return StepOutput(loss, logits_adv=logits_adv, logits_nat=logits_nat,
                          stats={"loss_natural": ce.mean().detach(), "loss_robust": boundary.mean().detach()})

    def in_hot_start(self) -> bool:
        """Whether the epoch being trained is one of the ``hot_start_epochs`` of plain TRADES."""
        return self.epoch <= self.cfg.hot_start_epochs

    def beta(self) -> float:
        """The TRADES weight of the epoch being trained: ``hot_start_beta`` (null: ``beta``) during
        the hot start, FRL's ``beta`` in the fair epochs."""
        if self.in_hot_start() and self.cfg.hot_start_beta is not None:
            return float(self.cfg.hot_start_beta)
        return float(self.cfg.beta)

    # ---- between epochs
    def update(self, acc: ClassAccuracy, fair_epoch: int) -> tuple[Tensor, Tensor]:
        """One multiplier update from the validation measurement ``acc`` before fair epoch
        ``fair_epoch`` (1-based); returns ``(clean_err, bndy_err)`` per class."""
        cfg = self.cfg
        if fair_epoch % cfg.rate_halve_every == 0:
            self.rate /= 2
        clean_err, bndy_err, g0, g1 = violations(acc, cfg.tau_clean, cfg.tau_boundary)
        self.lambda_nat = project_multipliers(self.lambda_nat + self.rate * g0, cfg.lim)
        self.lambda_boundary = project_multipliers(
            self.lambda_boundary + cfg.boundary_rate_scale * self.rate * g1, cfg.lim)
        if self.remargin:
            self.lambda_margin = self.lambda_margin + cfg.rate_margin * g1
        self._cache = None
        return clean_err, bndy_err

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        self.epoch = epoch + 1
        if epoch < self.cfg.hot_start_epochs:  # still the hot start: plain TRADES
            return {}
        acc = self.validate()
        clean_err, bndy_err = self.update(acc, fair_epoch=epoch - self.cfg.hot_start_epochs + 1)
        w_nat, w_boundary = self.weights()
        eps_255 = self.class_eps() * 255
        for k in range(len(w_nat)):
            self.log.append({
                "epoch": epoch, "class": k, "clean_err": float(clean_err[k]), "boundary_err": float(bndy_err[k]),
                "lambda_nat": float(self.lambda_nat[k]), "lambda_boundary": float(self.lambda_boundary[k]),
                "lambda_margin": float(self.lambda_margin[k]), "w_nat": float(w_nat[k]),
                "w_boundary": float(w_boundary[k]), "eps_255": float(eps_255[k]), "rate": self.rate,
            })
        return {"val_clean_acc": acc.clean_total, "val_pgd_acc": acc.robust_total, "frl_rate": self.rate,
                "w_nat_max": float(w_nat.max()), "w_boundary_max": float(w_boundary.max()),
                **{f"w_boundary/{k}": float(w) for k, w in enumerate(w_boundary)},
                **({f"eps_255/{k}": float(e) for k, e in enumerate(eps_255)} if self.remargin else {})}

    def state_dict(self) -> dict:
        return {"lambda_nat": self.lambda_nat.clone(), "lambda_boundary": self.lambda_boundary.clone(),
                "lambda_margin": self.lambda_margin.clone(), "rate": self.rate, "epoch": self.epoch,
                "log": list(self.log)}

    def load_state_dict(self, state: dict) -> None:
        self.lambda_nat = state["lambda_nat"].clone()
        self.lambda_boundary = state["lambda_boundary"].clone()
        self.lambda_margin = state["lambda_margin"].clone()
        self.rate = float(state["rate"])
        self.epoch = int(state["epoch"])
        self.log = list(state["log"])
        self._cache = None

    def artefacts(self, chosen_epoch: int, class_names: list[str],
                  history: list[dict[str, Any]] | None = None) -> Artefacts:
        """frl_state.csv (every epoch's errors, multipliers, weights, radii) and its figure."""
        keys = ["w_nat", "w_boundary"] + (["eps_255"] if self.remargin else [])
        return Artefacts(tables={"frl_state.csv": (self.log, STATE_COLUMNS)},
                         curves={"frl_state": (self.log, keys)})


class FRLReweightRemargin(FRLReweight):
    name = "frl_rwrm"
    remargin = True
