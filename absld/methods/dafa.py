"""DAFA (Lee, Lee, Jang, Park, Bae, Yoon; ICLR 2024): Distance-Aware Fair Adversarial training, as
the official code (github.com/rucy74/DAFA, HEAD c60ba83) runs it. TRIX (:mod:`absld.methods.trix`)
builds on it.

TRADES for the first ``warmup`` epochs. During epoch ``warmup`` the model's predictions on its own
training adversarial examples are recorded, and averaged per true class (the class-wise prediction
probabilities, the paper's p; ``train.py:88-94``, ``losses.py:65, 79-81``, ``utils.py:41-43``)::

    p_k(j) = mean_{i: y_i = k} softmax(S(x'_i))_j        (C, C); S in train mode, x' the TRADES
                                                          example of the batch, before its update

At the end of that epoch the class weights are computed once and kept to the end of training
(``train.py:234-235``; ``utils.py:45-51`` = Algorithm 2 of the paper)::

    W_k = 1 + lam * sum_{j != k} (  p_k(j) p_j(j)    if p_k(k) < p_j(j)   k the harder: it takes
                                   -p_j(k) p_k(k)    otherwise            k the easier: it gives )

so a pair of similar classes (large p_k(j), p_j(k)) moves weight from the easier to the harder one;
each pair's transfer cancels, the weights sum to C and the code normalises nothing. From epoch
``warmup + 1`` on (``losses.py:33-36, 52-56, 69-76``)::

    x' = the TRADES attack (eval mode, start x + 0.001 N(0, I), summed KL) in the radius W_{y_i} eps
         with the step W_{y_i} step                       (the class-wise margin: both scale by W)
    L  = mean_i W_{y_i} CE(S(x_i), y_i) + beta KL(S(x) || S(x'))     KL batch-mean, not weighted

The official defaults (``arguments.py``, ``scripts/trades_dafa.sh``): beta 6 (:57), warm-up 70 (:61
and the script), lam 1.0 on CIFAR-10 (:62 and the script; 1.5 for CIFAR-100 and STL-10, :62's
help), 110 epochs (:32), SGD lr 0.1 (:41), momentum 0.9 (:44), weight decay 5e-4 (:40), batch 128
(:30), Nesterov on (``train.py:32`` negates the ``--nesterov`` flag, default off: the flag turns it
off), the "bag_of_tricks" schedule lr x 0.1 from epoch 100 and x 0.01 from epoch 105
(``train.py:156-160``; milestones [99, 104] here, where the rate drops after a milestone epoch),
eps 0.031 and step 0.007 (:50, :54), 10 steps (:53); ResNet-18 (the script's ``--model resnet``).

Where the code and the paper differ, and where this differs from the code (params choose):
- ``weight_rule``: ``algorithm`` (default) is Algorithm 2 and ``utils.py`` at HEAD; ``first_release``
  is ``utils.py`` before 74657cd (2024-09-02, after the paper), whose "easier" branch subtracts
  p_k(j) p_j(j) (the harder class's own term) instead of p_j(k) p_k(k); the weights then no longer
  sum to C. Ties p_k(k) = p_j(j) subtract, as the code's ``else`` (Algorithm 2 does nothing on a tie).
- ``remargin`` / ``reweight`` (both on, as the code): the weights scale the radius and step, and
  the CE term. The KL term is never weighted (as the code; the paper's Algorithm 1 writes one
  weighted loss L(x + delta, y; W_y)).
- The attack is ``distill.attack`` (8/255, 2/255, 10 steps), not the code's 0.031 and 0.007.
- The radius is W_{y_i} eps clamped at 0 (a negative W, possible only with a large lam or a
  collapsed model, would make the code's box empty); the CE weight is W itself, as the code.
- The code stores one probability vector per training image (``memory_dict``, indexed by the
  dataset index) and averages at the end; here the class sums are accumulated on the fly, the same
  mean since every image is seen once per epoch. A class no image of which is seen in the warm-up
  epoch keeps W = 1 and moves no other weight (the code's ``np.unique`` would shrink C instead).
- Data-parallel training: the class sums are all-reduced; the weighted CE is a plain mean, which
  the loop's share re-weighting makes exact.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import LossFn, kl_to_target, pgd
from ..data import Batch
from .risk import class_sums
from ..distributed import all_reduce_sum
from .base import Artefacts, MethodBase, StepOutput, per_class_rows
from .losses import kl

SIMILARITY_COLUMNS = ["class", "predicted", "p"]
"""Columns of ``results/distill/<method>/seed<S>/class_similarity.csv``: p_k(j) of the warm-up epoch,
one row per (class k, predicted class j)."""


def class_similarity(prob_sum: Tensor, count: Tensor) -> Tensor:
    """``p_k(j)``: the (C, C) class-wise mean prediction from per-class sums of probability vectors
    ``prob_sum`` (C, C) over ``count`` (C,) samples (a class with no sample: a zero row)."""
    return prob_sum / count.clamp(min=1)[:, None]


def dafa_weights(similarity: Tensor, lam: float, rule: str = "algorithm") -> Tensor:
    """DAFA's class weights ``W`` (C,) from the class-wise mean prediction ``similarity`` (C, C),
    row k = p_k (Algorithm 2; ``utils.py:45-51``); ``rule``: ``algorithm`` or ``first_release``
    (see the module docstring)."""
    sim = similarity.double()
    own = sim.diagonal()  # (C,) p_k(k): how well class k is recognised
    harder = own[:, None] < own[None, :]  # (C, C) [k, j]: k is harder than j
    takes = sim * own[None, :]  # [k, j] = p_k(j) p_j(j)
    gives = sim.T * own[:, None] if rule == "algorithm" else takes  # [k, j] = p_j(k) p_k(k)
    transfer = torch.where(harder, takes, -gives)  # (C, C)
    transfer.fill_diagonal_(0.0)
    return 1.0 + lam * transfer.sum(dim=1)


class DAFA(MethodBase):
    name = "dafa"

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        num_classes = ctx.num_classes
        self.epoch = 1  # the epoch being trained (1-based)
        self.weights = torch.ones(num_classes, dtype=torch.float64)  # (C,) W, 1 until the warm-up ends
        self.prob_sum = torch.zeros(num_classes, num_classes)  # (C, C) during the warm-up's last epoch
        self.count = torch.zeros(num_classes)  # (C,)
        self.similarity: Tensor | None = None  # (C, C) p_k(j), once measured
        self._cache: tuple[torch.device, Tensor] | None = None

    # ---- the class-wise state as a batch uses it
    def _weights_on(self, device: torch.device) -> Tensor:
        if self._cache is None or self._cache[0] != device:
            self._cache = (device, self.weights.float().to(device))
        return self._cache[1]

    def sample_budget(self, y: Tensor) -> tuple[float | Tensor, float | Tensor]:
        """``(eps, step)`` of each sample: ``W_{y_i}`` times ``distill.attack``'s (B,) with ``remargin``."""
        attack = self.ctx.attack
        if not self.cfg.remargin:
            return attack.eps, attack.step
        scale = self._weights_on(y.device)[y].clamp(min=0.0)  # (B,)
        return scale * float(attack.eps), scale * float(attack.step)

    def sample_weights(self, y: Tensor) -> Tensor:
        """(B,) weight of each sample's CE term: ``W_{y_i}`` with ``reweight``, else 1."""
        if not self.cfg.reweight:
            return torch.ones(len(y), device=y.device)
        return self._weights_on(y.device)[y]

    # ---- the batch
    def attack_objective(self, student: nn.Module, batch: Batch) -> LossFn:
        """What the attack maximises per sample: TRADES' KL(S(x) || S(x')) (S(x) in eval mode)."""
        with torch.no_grad():
            natural_probs = F.softmax(student(batch.x).float(), dim=1)  # (B, C)
        return kl_to_target(natural_probs)

    def perturb(self, student: nn.Module, batch: Batch, teacher_logits: Tensor | None) -> Tensor:
        eps, step = self.sample_budget(batch.y)
        return pgd(student, batch.x, self.attack_objective(student, batch), eps=eps, step=step,
                   steps=self.ctx.attack.steps, start="gaussian")

    def loss(self, student: nn.Module, batch: Batch, x_adv: Tensor,
             teacher_logits: Tensor | None) -> StepOutput:
        logits_nat = student(batch.x).float()  # (B, C)
        logits_adv = student(x_adv).float()  # (B, C)
        ce = F.cross_entropy(logits_nat, batch.y, reduction="none")  # (B,)
        natural = (self.sample_weights(batch.y) * ce).mean()
        robust = kl(F.softmax(logits_nat, dim=1), logits_adv, "batchmean")  # gradient through S(x)
        if self.epoch == self.cfg.warmup:
            self._record(F.softmax(logits_adv.detach(), dim=1), batch.y)
        return StepOutput(natural + self.cfg.beta * robust, logits_adv=logits_adv, logits_nat=logits_nat,
                          stats={"loss_natural": natural.detach(), "loss_robust": robust.detach()})

    def _record(self, adv_probs: Tensor, y: Tensor) -> None:
        """Add the train-mode adversarial predictions (B, C) to their true classes' sums."""
        if self.prob_sum.device != y.device:
            self.prob_sum, self.count = self.prob_sum.to(y.device), self.count.to(y.device)
        self.prob_sum += class_sums(adv_probs.float(), y, len(self.count))
        self.count += class_sums(torch.ones_like(y, dtype=self.count.dtype), y, len(self.count))

    # ---- between epochs
    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        logs: dict[str, float] = {}
        if epoch == self.cfg.warmup:
            prob_sum, count = all_reduce_sum(self.prob_sum), all_reduce_sum(self.count)  # every share
            self.similarity = class_similarity(prob_sum, count).cpu()
            self.weights = dafa_weights(self.similarity, self.cfg.lam, self.cfg.weight_rule)
            self._cache = None
            self.prob_sum, self.count = torch.zeros_like(self.prob_sum), torch.zeros_like(self.count)
            logs["dafa_w_min"], logs["dafa_w_max"] = float(self.weights.min()), float(self.weights.max())
        self.epoch = epoch + 1
        return {**logs, **{f"w/{k}": float(w) for k, w in enumerate(self.weights)}}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "weights": self.weights.clone(), "prob_sum": self.prob_sum.cpu(),
                "count": self.count.cpu(), "similarity": None if self.similarity is None else self.similarity.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.weights = state["weights"].clone()
        self.prob_sum, self.count = state["prob_sum"].clone(), state["count"].clone()
        self.similarity = None if state["similarity"] is None else state["similarity"].clone()
        self._cache = None

    curve_keys = ["w"]

    def artefacts(self, chosen_epoch: int, class_names: list[str],
                  history: list[dict[str, Any]] | None = None) -> Artefacts:
        """weights.csv (the class weights after each epoch, those the next one trains with),
        class_similarity.csv (the warm-up epoch's p_k(j)) and the weights' figure."""
        rows = per_class_rows(history or [], self.curve_keys)
        tables = {"weights.csv": (rows, ["epoch", "class", *self.curve_keys])}
        if self.similarity is not None:
            similarity = [{"class": k, "predicted": j, "p": float(self.similarity[k, j])}
                          for k in range(len(self.similarity)) for j in range(len(self.similarity))]
            tables["class_similarity.csv"] = (similarity, SIMILARITY_COLUMNS)
        return Artefacts(tables=tables, curves={f"{self.name}_state": (rows, self.curve_keys)},
                         metrics={f"{self.name}_weights": dict(zip(class_names, (float(w) for w in self.weights)))})
