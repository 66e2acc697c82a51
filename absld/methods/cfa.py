"""CFA (Wei, Wang, Guo, Wang; CVPR 2023): Class-wise calibrated Fair Adversarial training, as the
official code (github.com/PKU-ML/CFA, 071f333) runs it.

Each class k gets its own attack radius and (TRADES) regularisation weight, from its robust
training accuracy t_k of the previous epoch (the share of its training adversarial examples the
model classified correctly, on the fly, in train mode)::

    CCM  eps_k  = (lambda_eps + t_k) eps            the radius of x'_i is eps_{y_i}
    CCR  beta_k = (lambda_beta + t_k) beta          b_k = beta_k / (1 + beta_k)
    TRADES base:  x' = the TRADES attack (eval mode, start x + 0.001 N(0, I), summed KL) in eps_{y_i}
                  L  = mean_i [(1 - b_{y_i}) CE(S(x_i), y_i) + b_{y_i} KL(S(x_i) || S(x'_i))]
    AT base:      x' = PGD on CE (train mode, uniform start) in eps_{y_i};  L = mean_i CE(S(x'_i), y_i)

and after every epoch the fairness-aware weight average (FAWA): when the worst class's PGD
accuracy of the current model on the validation split is >= ``threshold``, average <- ``decay``
average + (1 - decay) model (every state entry, BatchNorm statistics included; the first passing
epoch copies the model). The written student is the average (``average: fawa``).

Where this follows the code rather than the paper (each a param):
- calibration starts after ``begin`` = 10 epochs (Algorithm 1: from the first);
- decay 0.88 and threshold 0.24 (paper 0.85 and 0.2); the FAWA average starts when the gate first
  passes, EMA from the first epoch (paper: both from epoch 50);
- TRADES is normalised by 1 + beta_k, also with CCR off ((CE + beta KL)/(1 + beta)), as the code;
- the radius has no clamp; the step stays ``distill.attack.step`` for every radius.
Here, unlike the code: per-class accuracy is counted per class (the code's 10 count / N assumes
balanced classes); the validation split is ``prepare``'s (the code: the first 100 images per class);
the checkpoint is the last epoch's average (the code ranks saved epochs on the test set).
If the gate never passes, the trained weights are written and the run says so (the code would
keep a randomly initialised average).

Data-parallel training: the training hits and counts are summed over every process's share; the
FAWA gate's validation accuracy is measured once, by rank 0, and every process gets it
(``ctx.validate``), so every process calibrates and averages alike.

Per dataset: the code trains CIFAR-10 only (``train.py:151``), with a 100-per-class validation split
(``generate_validation.py:27``) and the gate 0.24 (``train.py:44``; its README's AT example: 0.2).
Its CIFAR-100 split is 25 per class (``generate_validation.py:59``), with no CIFAR-100 gate. The
CIFAR-100 and Tiny-ImageNet profiles set ``threshold: 0`` (our choice; their comments say why):
over 100 or 200 classes the worst validation class is at 0, so a positive gate never opens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import ce_loss, kl_to_target, pgd
from ..data import Batch
from .risk import class_sums
from ..distributed import all_reduce_sum
from .base import Artefacts, MethodBase, StepOutput
from .losses import kl

STATE_COLUMNS = ["epoch", "class", "train_robust_acc", "eps_255", "beta", "val_robust_acc", "fawa_update"]
"""Columns of ``results/distill/cfa/seed<S>/cfa_state.csv``: after each epoch, the robust training
accuracy t_k measured during it, the radius (x 255) and TRADES beta_k the next epoch uses, the
validation PGD accuracy of the FAWA gate, and whether that epoch's weights entered the average."""


def calibrated(t: Tensor, lam: float, base: float) -> Tensor:
    """``(lam + t_k) * base`` per class: CFA's eps_k (CCM) and beta_k (CCR)."""
    return (lam + t) * base


def average_into(average: dict[str, Tensor], model: dict[str, Tensor], decay: float) -> dict[str, Tensor]:
    """``decay * average + (1 - decay) * model`` for every floating-point entry (weights and BatchNorm
    statistics, as the code); integer entries (BatchNorm's batch counter) take the model's value."""
    return {key: (decay * average[key] + (1.0 - decay) * value if value.is_floating_point() else value.clone())
            for key, value in model.items()}


class CFA(MethodBase):
    name = "cfa"

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        num_classes = ctx.num_classes
        self.attack_mode = "eval" if cfg.base == "trades" else "train"  # the code's BatchNorm mode
        self.eps = torch.full((num_classes,), float(ctx.attack.eps))  # (C,) eps_k
        self.beta = torch.full((num_classes,), float(cfg.beta))  # (C,) beta_k
        self.correct = torch.zeros(num_classes)  # (C,) this epoch's robust training hits
        self.count = torch.zeros(num_classes)  # (C,)
        self.average: dict[str, Tensor] | None = None
        self.updates = 0
        self.log: list[dict[str, float]] = []

    def _on(self, device: torch.device) -> None:
        if self.eps.device != device:
            self.eps, self.beta = self.eps.to(device), self.beta.to(device)
            self.correct, self.count = self.correct.to(device), self.count.to(device)

    def perturb(self, student: nn.Module, batch: Batch, teacher_logits: Tensor | None) -> Tensor:
        self._on(batch.y.device)
        eps = self.eps[batch.y]  # (B,) eps_{y_i}
        attack = self.ctx.attack
        if self.cfg.base == "at":
            return pgd(student, batch.x, ce_loss(batch.y), eps=eps, step=attack.step, steps=attack.steps,
                       start="uniform")
        with torch.no_grad():
            natural_probs = F.softmax(student(batch.x).float(), dim=1)  # (B, C)
        return pgd(student, batch.x, kl_to_target(natural_probs), eps=eps, step=attack.step,
                   steps=attack.steps, start="gaussian")

    def loss(self, student: nn.Module, batch: Batch, x_adv: Tensor,
             teacher_logits: Tensor | None) -> StepOutput:
        self._on(batch.y.device)
        if self.cfg.base == "at":
            logits_adv = student(x_adv).float()  # (B, C)
            loss = F.cross_entropy(logits_adv, batch.y)
            out = StepOutput(loss, logits_adv=logits_adv)
        else:
            logits_nat = student(batch.x).float()  # (B, C)
            logits_adv = student(x_adv).float()  # (B, C)
            b = self.beta[batch.y] / (1.0 + self.beta[batch.y])  # (B,)
            ce = F.cross_entropy(logits_nat, batch.y, reduction="none")  # (B,)
            boundary = kl(F.softmax(logits_nat, dim=1), logits_adv, "none")  # (B,), through S(x)
            loss = ((1.0 - b) * ce + b * boundary).mean()
            out = StepOutput(loss, logits_adv=logits_adv, logits_nat=logits_nat,
                             stats={"loss_natural": ce.mean().detach(), "loss_robust": boundary.mean().detach()})
        hits = (logits_adv.detach().argmax(1) == batch.y).float()  # t_k: train mode, before the update
        self.correct += class_sums(hits, batch.y, len(self.count))
        self.count += class_sums(torch.ones_like(hits), batch.y, len(self.count))
        return out

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        correct, count = all_reduce_sum(self.correct), all_reduce_sum(self.count)  # data-parallel: all shares
        t = torch.where(count > 0, correct / count.clamp(min=1), torch.zeros_like(count))  # (C,)
        if epoch >= cfg.begin:  # the next epoch is calibrated
            if cfg.ccm:
                self.eps = calibrated(t, cfg.lambda_eps, float(self.ctx.attack.eps))
            if cfg.ccr and cfg.base == "trades":
                self.beta = calibrated(t, cfg.lambda_beta, float(cfg.beta))
        self.correct.zero_()
        self.count.zero_()
        val_robust, passed = self._average(epoch)
        eps_255, beta, t_cpu = (self.eps * 255).cpu(), self.beta.cpu(), t.cpu()
        for k in range(len(t_cpu)):
            self.log.append({"epoch": epoch, "class": k, "train_robust_acc": float(t_cpu[k]),
                             "eps_255": float(eps_255[k]), "beta": float(beta[k]),
                             "val_robust_acc": None if val_robust is None else float(val_robust[k]),
                             "fawa_update": int(passed)})
        row = {"cfa_eps_255_min": float(eps_255.min()), "cfa_eps_255_max": float(eps_255.max()),
               "cfa_averaged_epochs": self.updates, **{f"eps_255/{k}": float(e) for k, e in enumerate(eps_255)}}
        if val_robust is not None:
            row["val_pgd_worst"] = float(val_robust.min())
        return row

    def _average(self, epoch: int) -> tuple[Tensor | None, bool]:
        """This epoch's weight averaging: ``(validation class-wise robust accuracy or None, averaged?)``."""
        cfg = self.cfg
        if cfg.average == "none":
            return None, False
        student = self.ctx.student
        if student is None:
            raise ValueError("CFA averages the student's weights: give MethodContext the student")
        val_robust = None
        if cfg.average == "fawa":
            val_robust = self.validate().robust
            if float(val_robust.min()) < cfg.threshold:
                return val_robust, False
        state = {k: v.detach().to("cpu", copy=True) for k, v in student.state_dict().items()}
        self.average = state if self.average is None else average_into(self.average, state, cfg.decay)
        self.updates += 1
        return val_robust, True

    def output_state(self) -> dict[str, Tensor] | None:
        return None if self.cfg.average == "none" else self.average

    def state_dict(self) -> dict:
        return {"eps": self.eps.cpu(), "beta": self.beta.cpu(), "correct": self.correct.cpu(),
                "count": self.count.cpu(), "average": self.average, "updates": self.updates, "log": list(self.log)}

    def load_state_dict(self, state: dict) -> None:
        self.eps, self.beta = state["eps"].clone(), state["beta"].clone()
        self.correct, self.count = state["correct"].clone(), state["count"].clone()
        self.average = state["average"]
        self.updates = int(state["updates"])
        self.log = list(state["log"])

    def artefacts(self, chosen_epoch: int, class_names: list[str],
                  history: list[dict[str, Any]] | None = None) -> Artefacts:
        """cfa_state.csv (every epoch's t_k, eps_k, beta_k, gate) and its figure; the number of averaged epochs."""
        keys = ["eps_255", "beta", "train_robust_acc"] + (["val_robust_acc"] if self.cfg.average == "fawa" else [])
        return Artefacts(tables={"cfa_state.csv": (self.log, STATE_COLUMNS)},
                         metrics={"cfa_average": self.cfg.average, "cfa_averaged_epochs": self.updates},
                         curves={"cfa_state": (self.log, keys)})
