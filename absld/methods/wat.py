"""WAT (Li & Liu, AAAI 2023): Worst-class Adversarial Training, as the official code
(github.com/boqili/WAT, 62d1184, ``worst_class_adversarial_train.py``, cited below by line) runs it.

TRADES whose loss is re-weighted per class by a no-regret (Hedge) player with C + 1 experts: one
per class, and one for the average loss (the code's comment at :103: the expected training loss is
added to the decision set). After every epoch e the student is measured on the validation split
(eval mode, no gradient, :117-157): x' is the TRADES attack of x, and the cost of expert j is::

    cost_j(e) = mean over the validation images of class j of  CE(S(x), y) + beta KL(S(x) || S(x'))   (j < C)
    cost_C(e) = the same mean over every validation image                                          (the average)

(:140-157, :245). The weights of the next epoch are exponentiated gradient on the costs summed
over every epoch so far (:246-248; the nat and bndy weights of the code are one and the same)::

    w = C softmax(eta sum_{e' <= e} cost(e'))        (C + 1,), summing to C

and each training batch minimises (the class-wise sums of :94-101 plus the average term of :104-105)::

    L = (1/B) sum_i (w_{y_i} + w_C) (CE(S(x_i), y_i) + beta KL(S(x_i) || S(x'_i)))

with x' the TRADES attack (student in eval mode, start x + 0.001 N(0, I), summed KL; :83-84,
attack_generator.py:45-69) and S(x) not detached inside the KL (:63-68). Epoch 1 trains with every
weight 1 (:202-203, ``torch.ones(class_num + 1)``): twice the TRADES loss, where every later epoch's
weights sum to C over C + 1 entries (2C / (C + 1) per sample when they are uniform).

Official defaults: beta 6 (:25), eta 0.1 (:37; README.md:23's command passes both), eps 0.031, step
0.007, 10 steps (:20-22), batch 128 (:26), SGD lr 0.1, momentum 0.9, wd 2e-4 (:16-19), 100 epochs with the
rate x 0.1 from epochs 75, 90 and 100 (:165-177, called with epoch + 1 at :240); the validation split
is 300 images per class of CIFAR-10's training set (data_loader.py:41, :54; CIFAR-100: 30, :127, :140).

Where this differs from the code (a param where it is a choice; the paper, arXiv 2302.04025, was
not at hand beyond its introduction, so this list compares with the code only):
- the validation split is ``data.val_per_class`` images per class, shared with every method
  (the code: 300 per class on CIFAR-10, 30 on CIFAR-100); ``validation.n_samples`` takes its first n;
- a class's cost is the mean over its validation images; the code divides each class's sum by the
  padded count ceil(N / B) B and multiplies by C (:156-157), which for a balanced split is the class
  mean times N / (ceil(N / B) B) (0.977 for its 3000 images in batches of 128): a constant factor on
  eta (eta x that factor here reproduces it); for an unbalanced split the code's cost would also
  weigh a class by its share of the split;
- eps 8/255 and step 2/255 (``distill.attack`` for training, ``validation`` for the measurement)
  in place of the code's 0.031 and 0.007;
- the validation attack's starts come from a generator of their own, the same at every epoch
  (:class:`~absld.methods.base.ValidationPass`), so the measurement leaves the training's RNG alone;
  the code draws them from the global RNG;
- a resumed run continues the summed costs and the weights (the code's ``--resume`` restarts the
  weights at 1 and the costs at 0, :221-235);
- the checkpoint: the code keeps every third epoch (:290-295) and measures each epoch on the test set
  (PGD-100 and CW-30, step 0.003, :252-254) without choosing one; here ``distill.select`` chooses;
- C classes (the code's ``--class_num``, set from the dataset).

Data-parallel training: the loss is a plain batch mean (exact over shares); the validation costs
are measured once, by rank 0, and every process gets them (``ctx.validation_pass``), so every
process holds the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import kl_to_target, pgd
from ..data import Batch
from .risk import class_sums
from .base import Artefacts, StepOutput
from .losses import kl
from .trades import TRADES

STATE_COLUMNS = ["epoch", "class", "val_clean_acc", "val_trades_acc", "val_cost", "cumulative_cost", "weight",
                 "average_cost", "average_weight"]
"""Columns of ``results/distill/wat/seed<S>/wat_state.csv``: after each epoch, per class, the validation
clean and TRADES-attack accuracy and cost measured, the summed cost and the weight that the next epoch
trains with; ``average_*``: the same for the average expert (one value per epoch, on every row)."""


def hedge_weights(cumulative_cost: Tensor, eta: float, num_classes: int) -> Tensor:
    """``C softmax(eta * cumulative_cost)``: the code's ``C exp(eta sum cost) / sum exp(eta sum cost)``
    (:246-248), computed stably; ``cumulative_cost`` (C + 1,), the result sums to C."""
    return num_classes * torch.softmax(eta * cumulative_cost, dim=0)


@dataclass(frozen=True)
class ValidationCosts:
    """One validation measurement of WAT."""

    cost: Tensor  # (C + 1,) float64: each class's mean TRADES loss, then the mean over every image
    clean_acc: Tensor  # (C,) float64
    trades_acc: Tensor  # (C,) accuracy on the TRADES attack's x'
    clean_total: float
    trades_total: float


class WAT(TRADES):
    name = "wat"

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        num_classes = ctx.num_classes
        self.weights = torch.ones(num_classes + 1, dtype=torch.float64)  # (C + 1,) the code's start
        self.cumulative_cost = torch.zeros(num_classes + 1, dtype=torch.float64)  # (C + 1,)
        self.log: list[dict[str, float]] = []
        self._cache: Tensor | None = None

    # ---- the batch (the attack is TRADES')
    def sample_weights(self, y: Tensor) -> Tensor:
        """(B,) ``w_{y_i} + w_C``: the sample's class weight plus the average expert's."""
        if self._cache is None or self._cache.device != y.device:
            self._cache = self.weights.float().to(y.device)
        return self._cache[y] + self._cache[-1]

    def loss(self, student: nn.Module, batch: Batch, x_adv: Tensor,
             teacher_logits: Tensor | None) -> StepOutput:
        logits_nat = student(batch.x).float()  # (B, C)
        logits_adv = student(x_adv).float()  # (B, C)
        natural = F.cross_entropy(logits_nat, batch.y, reduction="none")  # (B,)
        robust = kl(F.softmax(logits_nat, dim=1), logits_adv, "none")  # (B,), gradient through S(x)
        loss = (self.sample_weights(batch.y) * (natural + self.cfg.beta * robust)).mean()
        return StepOutput(loss, logits_adv=logits_adv, logits_nat=logits_nat,
                          stats={"loss_natural": natural.mean().detach(), "loss_robust": robust.mean().detach()})

    # ---- between epochs
    def measure(self) -> ValidationCosts:
        """The class-wise TRADES loss and accuracies of the student on the validation split."""
        num_classes, attack, beta = self.ctx.num_classes, self.cfg.validation, self.cfg.beta

        def measure_batch(model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
            """(4, C) float64 class sums: count, cost, clean hits, TRADES-attack hits."""
            x, y = batch.x, batch.y
            with torch.no_grad():
                logits_nat = model(x).float()  # (B, C)
            natural_probs = F.softmax(logits_nat, dim=1)
            noise = torch.randn(tuple(x.shape), generator=generator).to(x.device)
            x_adv = pgd(model, x, kl_to_target(natural_probs), eps=attack.eps, step=attack.step,
                        steps=attack.steps, start="gaussian", noise=noise)
            with torch.no_grad():
                logits_adv = model(x_adv).float()  # (B, C)
                cost = F.cross_entropy(logits_nat, y, reduction="none") + beta * kl(natural_probs, logits_adv, "none")
                rows = torch.stack([torch.ones_like(cost), cost, (logits_nat.argmax(1) == y).float(),
                                    (logits_adv.argmax(1) == y).float()]).double()  # (4, B)
                return class_sums(rows.T, y, num_classes).T

        totals = self.validation_pass(measure_batch)  # data-parallel: rank 0's, on every process
        if totals is None:
            totals = torch.zeros(4, num_classes, dtype=torch.float64)
        count, cost, clean, robust = totals
        if bool((count == 0).any()):
            missing = [int(k) for k in (count == 0).nonzero().flatten()]
            raise ValueError(f"WAT's validation images hold no image of classes {missing}, whose validation "
                             "cost the weights need; raise data.val_per_class or validation.n_samples")
        class_cost = torch.cat([cost / count, (cost.sum() / count.sum()).reshape(1)])  # (C + 1,)
        return ValidationCosts(cost=class_cost, clean_acc=clean / count, trades_acc=robust / count,
                               clean_total=float(clean.sum() / count.sum()), trades_total=float(robust.sum() / count.sum()))

    def update(self, cost: Tensor) -> None:
        """One Hedge step: add this epoch's costs (C + 1,) to the sum; the weights of the next epoch."""
        self.cumulative_cost = self.cumulative_cost + cost.double().cpu()
        self.weights = hedge_weights(self.cumulative_cost, self.cfg.eta, self.ctx.num_classes)
        self._cache = None

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        measured = self.measure()
        self.update(measured.cost)
        num_classes = self.ctx.num_classes
        weights, cumulative, cost = self.weights, self.cumulative_cost, measured.cost
        for k in range(num_classes):
            self.log.append({
                "epoch": epoch, "class": k, "val_clean_acc": float(measured.clean_acc[k]),
                "val_trades_acc": float(measured.trades_acc[k]), "val_cost": float(cost[k]),
                "cumulative_cost": float(cumulative[k]), "weight": float(weights[k]),
                "average_cost": float(cost[-1]), "average_weight": float(weights[-1]),
            })
        return {"val_clean_acc": measured.clean_total, "val_trades_acc": measured.trades_total,
                "val_cost_average": float(cost[-1]), "val_cost_worst": float(cost[:-1].max()),
                "w_average": float(weights[-1]), "w_max": float(weights[:-1].max()),
                **{f"w/{k}": float(w) for k, w in enumerate(weights[:-1])}}

    def state_dict(self) -> dict:
        return {"weights": self.weights.clone(), "cumulative_cost": self.cumulative_cost.clone(), "log": list(self.log)}

    def load_state_dict(self, state: dict) -> None:
        self.weights = state["weights"].clone()
        self.cumulative_cost = state["cumulative_cost"].clone()
        self.log = list(state["log"])
        self._cache = None

    def artefacts(self, chosen_epoch: int, class_names: list[str],
                  history: list[dict[str, Any]] | None = None) -> Artefacts:
        """wat_state.csv (every epoch's validation costs, summed costs and weights) and its figure."""
        return Artefacts(tables={"wat_state.csv": (self.log, STATE_COLUMNS)},
                         curves={"wat_state": (self.log, ["weight", "val_cost", "val_trades_acc"])})
