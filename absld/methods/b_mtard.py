"""B-MTARD: balanced multi-teacher adversarial robustness distillation (Zhao, Wang, Wei, "Mitigating
Accuracy-Robustness Trade-off via Balanced Multi-Teacher Adversarial Distillation", TPAMI 2024), the
extension of MTARD (Zhao, Yu, Sun, Zhang, Wei, ECCV 2022).

Two teachers: a clean (naturally trained) teacher C, which teaches the student on the clean x, and
the robust teacher T, which teaches it on the adversarial x'. Per batch, as the official
``resnet18_mtard_cifar10.py`` (zhaoshiji123/MTARD-extension, HEAD 93506d6; "code:N" below) runs it::

    x'    = argmax_{|x'-x| <= eps} CE(S(x'), y)      PGD, start x + 0.001 N(0, I), student in eval mode
    p_adv = softmax(T(x') / tau_adv),   p_nat = softmax(C(x) / tau_nat)          # teachers in eval mode
    L_adv = KL(p_adv ‖ S(x')),          L_nat = KL(p_nat ‖ S(x))                 # student in train mode
    L     = w_adv L_adv + w_nat L_nat

then, after the loss is formed with the current values (code:122-134, 137-169):

- **temperatures** (the "balanced" part the extension adds), from the teachers' entropies
  H = mean of -sum_c p_c log p_c over the batch::

      tau_adv <- clamp(tau_adv - temp_lr * sign(H_adv - H_nat), temp_min, temp_max)
      tau_nat <- clamp(tau_nat - temp_lr * sign(H_nat - H_adv), temp_min, temp_max)

  the more uncertain teacher is sharpened, the other softened; they are used from the next batch on
  (code:128-134; the code writes sign(H_adv / H_nat - 1), the same sign whenever H_nat > 0).
- **weights** (MTARD's), from each term's loss relative to its value on the first batch of training
  (L0, kept for the whole run, code:137-140)::

      lhat = L / L0;   r = lhat / (lhat_adv + lhat_nat)
      w <- w - weight_lr * (w - r);   w <- max(w, 0);   w <- w / (w_adv + w_nat)

  before the loss of the same batch is formed (code:143-169): the term that decreased less
  (relative to its start) gets more weight. w starts at (1/2, 1/2) (code:47-50).

The KL terms are summed over classes and averaged over B x C (``torch.mean`` of the element-wise KL,
code:122-126), i.e. ``distill.kl_reduction: element_mean``; the weights and temperatures only see
ratios and signs, so the reduction scales the loss and nothing else. ``weight_lr`` and ``temp_lr``
are multiplied by 0.1 together with the learning rate after epochs 215, 260 and 285 (code:234-238).

Defaults (code): weight_lr 0.025 (code:83), temp_lr 0.001 (code:84), temperatures 1 in [1, 10]
(code:90-94); attack PGD-10 of 2/255 in 8/255 on CE (code:114), whose body is the ECCV code's
``mtard_inner_loss_ce`` (zhaoshiji123/MTARD ``mtard/mtard_loss.py:27-58``: student in eval mode, start
x + 0.001 N, CE against y; then S(x') in train mode and T(x') without grad); SGD lr 0.1, momentum 0.9,
weight decay 2e-4, batch 128, 300 epochs (code:18-19, 45, 234); robust teacher WRN-34-10
(code:64), clean teacher ResNet-56 (code:74).

Where the code and the paper differ (or the code is incomplete), and which param chooses:

- The released script does not run as is: it imports ``mtard_loss`` (absent from the extension's
  repository; the ECCV repository's ``mtard/mtard_loss.py`` is used here) and calls ``resnet56()``,
  which its ``cifar10_models`` does not define; the CIFAR ResNet-56 of the authors' ECCV repository
  (``cifar10_nat_teacher_models/resnet.py``) is ``teacher_clean.model.arch: resnet56`` here. The
  clean teacher's own training is not released: ``teacher_clean.train`` is our recipe (plain CE).
- The ECCV MTARD used a WRN-34-10 clean teacher (``mtard/mtard_resnet18_cifar10.py:59``), no
  temperatures and ``w_adv = 1 - w_nat`` (lines 91-98, the same values as the rule above):
  ``teacher_clean.model.arch: wrn34_10`` with ``distill.b_mtard.temp_lr: 0``.
- ``log(p + 1e-5)`` in the code's KL and entropy (code:56-62): exact ``p log p`` here (``xlogy``).
- The temperature rule's sign is taken from the entropy difference (the code's ratio is undefined
  when the clean teacher's entropy is 0); L0 = 0 or two zero losses leave the weights where they are
  (the code divides by zero).
- Checkpoint selection: the code keeps the epoch of the best (clean + PGD-20) / 2 on the test set
  (code:180-229); here ``distill.select`` decides for every method alike.
- Fair-ARD's ``Fair-MTARD.py:144`` distils the *robust* teacher's adversarial soft labels in the
  natural term; not followed (the MTARD and B-MTARD code distil the clean teacher on x).
- Data-parallel training: the losses and entropies that move the weights and temperatures are the
  means over every process's share of the batch (the code runs on one GPU), so all processes keep
  the same state.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import ce_loss, pgd
from ..data import Batch
from ..distributed import all_reduce_sum
from .base import Artefacts, MethodBase, StepOutput
from .losses import kl

TINY = 1e-12
"""Below this a loss counts as zero (no division by it)."""


def entropy(probs: Tensor) -> Tensor:
    """Per-sample entropy -sum_c p_c log p_c of (B, C) probabilities, (B,)."""
    return -torch.special.xlogy(probs, probs).sum(dim=1)


def balance_weights(weights: Tensor, losses: Tensor, initial: Tensor, lr: float) -> Tensor:
    """MTARD's weight step: ``w - lr (w - r)``, r the losses relative to ``initial`` normalised to sum 1,
    then clamped at 0 and renormalised (code:143-166). All (2,) tensors, (adv, nat)."""
    lhat = losses / initial.clamp(min=TINY)  # (2,)
    total = lhat.sum()
    target = torch.where(total > TINY, lhat / total.clamp(min=TINY), weights)  # both terms at 0: stay
    weights = (weights - lr * (weights - target)).clamp(min=0)
    return weights / weights.sum().clamp(min=TINY)


def balance_temperatures(tau: Tensor, entropies: Tensor, lr: float, tau_min: float, tau_max: float) -> Tensor:
    """B-MTARD's temperature step: each teacher's temperature moves by ``lr`` against the sign of its
    entropy's excess over the other's, clamped to [tau_min, tau_max] (code:131-134). (2,) tensors, (adv, nat)."""
    gap = entropies - entropies.flip(0)  # (H_adv - H_nat, H_nat - H_adv)
    return (tau - lr * torch.sign(gap)).clamp(tau_min, tau_max)


class BMTARD(MethodBase):
    name = "b_mtard"
    uses_teacher = True  # the robust teacher, on x' (ctx.teacher)
    uses_clean_teacher = True  # the clean teacher, on x (ctx.clean_teacher)

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self.weights = torch.tensor([cfg.weight_init, 1 - cfg.weight_init], dtype=torch.float64)  # (adv, nat)
        self.tau = torch.full((2,), float(cfg.temp_init), dtype=torch.float64)  # (adv, nat)
        self.initial_loss: Tensor | None = None  # (2,) L0 of the first batch of training
        self.weight_lr = float(cfg.weight_lr)
        self.temp_lr = float(cfg.temp_lr)

    @property
    def logits_teacher(self) -> nn.Module | None:
        """The loop's clean-input logits are the clean teacher's: the robust teacher sees x' only."""
        return self.clean_teacher

    def _follow(self, device: torch.device) -> None:
        if self.weights.device != device:
            self.weights, self.tau = self.weights.to(device), self.tau.to(device)
            if self.initial_loss is not None:
                self.initial_loss = self.initial_loss.to(device)

    def perturb(self, student: nn.Module, batch: Batch, teacher_logits: Tensor | None) -> Tensor:
        attack = self.ctx.attack
        return pgd(student, batch.x, ce_loss(batch.y), eps=attack.eps, step=attack.step,
                   steps=attack.steps, start="gaussian")

    def loss(self, student: nn.Module, batch: Batch, x_adv: Tensor,
             teacher_logits: Tensor | None) -> StepOutput:
        """``teacher_logits``: the clean teacher's logits on x (the loop computes them, fp32)."""
        self._follow(batch.y.device)
        cfg = self.cfg
        with torch.no_grad():
            robust_logits = self.teacher(x_adv).float()  # (B, C) T(x')
        p_adv = F.softmax(robust_logits / self.tau[0].float(), dim=1)  # (B, C)
        p_nat = F.softmax(teacher_logits.float() / self.tau[1].float(), dim=1)  # (B, C)
        student_adv = student(x_adv).float()  # (B, C)
        student_nat = student(batch.x).float()  # (B, C)
        kl_adv = kl(p_adv, student_adv, self.ctx.kl_reduction)
        kl_nat = kl(p_nat, student_nat, self.ctx.kl_reduction)
        with torch.no_grad():  # the batch's mean KLs and entropies, over every process's share
            sums = torch.stack([kl(p_adv, student_adv, "none").sum(), kl(p_nat, student_nat, "none").sum(),
                                entropy(p_adv).sum(), entropy(p_nat).sum(),
                                torch.tensor(float(len(batch.y)), device=p_adv.device)]).double()
            sums = all_reduce_sum(sums)
            losses, entropies = sums[0:2] / sums[4], sums[2:4] / sums[4]  # (adv, nat) each
            self.tau = balance_temperatures(self.tau, entropies, self.temp_lr, cfg.temp_min, cfg.temp_max)
            if self.initial_loss is None:
                self.initial_loss = losses.clone()
            self.weights = balance_weights(self.weights, losses, self.initial_loss, self.weight_lr)
        w_adv, w_nat = self.weights.float()
        loss = w_adv * kl_adv + w_nat * kl_nat
        return StepOutput(loss, logits_adv=student_adv, logits_nat=student_nat,
                          stats={"kl_adv": kl_adv.detach(), "kl_nat": kl_nat.detach()})

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """The state after the epoch's last batch (used from the next one on); then the decay of both
        rates after the LR milestones (code:234-238)."""
        logs = {"w_adv": float(self.weights[0]), "w_nat": float(self.weights[1]),
                "tau_adv": float(self.tau[0]), "tau_nat": float(self.tau[1]),
                "weight_lr": self.weight_lr, "temp_lr": self.temp_lr}
        if epoch in (self.cfg.rate_milestones or []):
            self.weight_lr *= self.cfg.rate_gamma
            self.temp_lr *= self.cfg.rate_gamma
        return logs

    def artefacts(self, chosen_epoch: int, class_names: list[str],
                  history: list[dict[str, Any]] | None = None) -> Artefacts:
        """balance.csv: per epoch the weights and temperatures after its last batch (the rates during it)."""
        columns = ["epoch", "w_adv", "w_nat", "tau_adv", "tau_nat", "weight_lr", "temp_lr"]
        rows = [{k: row[k] for k in columns} for row in history or [] if "w_adv" in row]
        chosen = next((row for row in rows if row["epoch"] == chosen_epoch), None)
        metrics = {} if chosen is None else {f"final_{k}": chosen[k] for k in ("w_adv", "w_nat", "tau_adv", "tau_nat")}
        return Artefacts(tables={"balance.csv": (rows, columns)}, metrics=metrics)

    def state_dict(self) -> dict:
        return {"weights": self.weights.cpu(), "tau": self.tau.cpu(),
                "initial_loss": None if self.initial_loss is None else self.initial_loss.cpu(),
                "weight_lr": self.weight_lr, "temp_lr": self.temp_lr}

    def load_state_dict(self, state: dict) -> None:
        self.weights, self.tau = state["weights"].clone(), state["tau"].clone()
        initial = state["initial_loss"]
        self.initial_loss = None if initial is None else initial.clone()
        self.weight_lr, self.temp_lr = float(state["weight_lr"]), float(state["temp_lr"])
