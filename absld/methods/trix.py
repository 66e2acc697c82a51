"""TRIX (Medi, Jung, Keuper; arXiv 2507.07768, 2025): mixed targeted / untargeted adversarial
training on DAFA, as the official code (github.com/Fairness-a11y/TRIX, HEAD cdeb435, a fork of
DAFA's) runs it (``--loss mixed``, ``losses.py:90-203``).

Everything of :mod:`absld.methods.dafa` (the warm-up, the class weights W from the warm-up epoch's
adversarial predictions, the radius and step W_{y_i} eps and W_{y_i} step, the loss
mean_i W_{y_i} CE + beta KL), with one change: the attack. In every batch, from the first epoch on
(``train.py:91-93``)::

    q      = softmax(S(x))                                  S in eval mode (losses.py:114-115)
    V      = DAFA's rule on this batch's class-wise mean of q, plus 1e-8 on the diagonal, lam = 1
                                                            (losses.py:117-125, 258-294)
    strong = V_{y_i} < mean_i V_{y_i}                       the mean over the batch's samples (:127)
    y_t    ~ uniform over the classes != y_i                (:135-141)
    x'     = PGD from x + 0.001 N(0, I) in W_{y_i} eps, step W_{y_i} step:
               strong samples descend CE(S(x'), y_t)        a weak, targeted adversary
               the others ascend KL(q || S(x'))             TRADES' strong, untargeted one (:143-173)

so a class that the model already separates well (a low batch weight V) is attacked towards a
random other class, a class it confuses with similar ones by the TRADES adversary. The official
defaults (``arguments.py``, ``scripts/trix.sh``): DAFA's (beta 6, warm-up 70, lam 1.0, 10 steps,
eps 0.031, step 0.007, wd 5e-4, lr 0.1, batch 128, Nesterov on: ``train.py:20``) except 150 epochs
(:32), so the "bag_of_tricks" schedule drops the rate from epoch 140 and 145 (milestones [139, 144]
here); ResNet-18, seed 3 (the script).

Where this differs from the code (params choose where it is a choice):
- no setting for the lam of the batch weights V (the code: the default 1.0 of
  ``calculate_class_weights_from_clean``, losses.py:258, not ``--dafa_lambda``): V = 1 + lam T with
  T the batch's transfer sums, so V_{y_i} < mean V iff T_{y_i} < mean T for every lam > 0 (lam = 0
  would target no sample: DAFA's attack); lam = 1 is used;
- the target is drawn as (y + U{1, ..., C-1}) mod C, one draw (the same distribution as the code's
  redraw-until-different loop, another random stream);
- the code's 1e-10 offsets (losses.py:153-154, 188-190) are dropped: log_softmax(z + 1e-10) is
  log_softmax(z), and the clamp of q at 1e-10 moves the KL by less than 1e-9;
- ``weight_rule`` applies to both W and V (the code: Algorithm 2's rule for both);
- data-parallel training: each process splits its own share of the batch into strong and weak
  samples (the code: the whole batch); the targets are drawn for the whole batch, each process
  taking its samples' (:func:`absld.distributed.draw_rows`).
The fraction of each class's samples attacked with a target is logged per epoch (``targeted/<k>``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import LossFn
from ..data import Batch
from .risk import class_sums
from ..distributed import all_reduce_sum, draw_rows
from .dafa import DAFA, class_similarity, dafa_weights
from .base import StepOutput

DIAGONAL_FLOOR = 1e-8
"""Added to the diagonal of the batch's class similarity (``losses.py:282``, its ``epsilon``)."""


def strong_samples(natural_probs: Tensor, y: Tensor, num_classes: int, rule: str = "algorithm") -> Tensor:
    """(B,) bool: the samples TRIX attacks with a target, those whose class has a batch weight
    V_{y_i} below the batch's sample mean of V_{y_i}; ``natural_probs`` (B, C) clean predictions."""
    prob_sum = class_sums(natural_probs.float(), y, num_classes)  # (C, C)
    count = class_sums(torch.ones_like(y, dtype=torch.float), y, num_classes)  # (C,)
    similarity = class_similarity(prob_sum, count) + DIAGONAL_FLOOR * torch.eye(num_classes, device=y.device)
    batch_weights = dafa_weights(similarity, 1.0, rule)[y]  # (B,) V_{y_i}; any lam > 0 splits alike
    return batch_weights < batch_weights.mean()


def random_other_class(y: Tensor, num_classes: int) -> Tensor:
    """(B,) a target drawn uniformly from the classes other than ``y_i`` (from the global RNG; in a
    data-parallel step, the whole global batch's draw: :func:`absld.distributed.draw_rows`)."""
    offset = draw_rows(y, lambda like: torch.randint(1, num_classes, like.shape, device=like.device))
    return (y + offset) % num_classes


def mixed_objective(natural_probs: Tensor, targeted: Tensor, y_target: Tensor) -> LossFn:
    """Per sample, what TRIX's attack maximises: -CE(S(x'), y_t) where ``targeted``, else
    KL(natural_probs || S(x'))."""
    target = natural_probs.detach().float()  # (B, C)
    entropy = torch.special.xlogy(target, target).sum(dim=1)  # (B,)

    def loss_fn(logits: Tensor) -> Tensor:
        log_probs = F.log_softmax(logits.float(), dim=1)  # (B, C)
        untargeted = entropy - (target * log_probs).sum(dim=1)  # (B,) KL(q || S(x'))
        towards_target = log_probs.gather(1, y_target[:, None]).squeeze(1)  # (B,) -CE(S(x'), y_t)
        return torch.where(targeted, towards_target, untargeted)

    return loss_fn


class TRIX(DAFA):
    name = "trix"
    curve_keys = ["w", "targeted"]

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self.targeted_sum = torch.zeros(ctx.num_classes)  # (C,) this epoch's targeted samples per class
        self.seen = torch.zeros(ctx.num_classes)  # (C,)
        self._targeted_fraction: Tensor | None = None  # of the last attacked batch

    def attack_objective(self, student: nn.Module, batch: Batch) -> LossFn:
        num_classes = self.ctx.num_classes
        with torch.no_grad():
            natural_probs = F.softmax(student(batch.x).float(), dim=1)  # (B, C), eval mode
        targeted = strong_samples(natural_probs, batch.y, num_classes, self.cfg.weight_rule)
        y_target = random_other_class(batch.y, num_classes)
        self._count(targeted, batch.y)
        return mixed_objective(natural_probs, targeted, y_target)

    def _count(self, targeted: Tensor, y: Tensor) -> None:
        if self.seen.device != y.device:
            self.targeted_sum, self.seen = self.targeted_sum.to(y.device), self.seen.to(y.device)
        self.targeted_sum += class_sums(targeted.float(), y, len(self.seen))
        self.seen += class_sums(torch.ones_like(y, dtype=self.seen.dtype), y, len(self.seen))
        self._targeted_fraction = targeted.float().mean()

    def loss(self, student: nn.Module, batch: Batch, x_adv: Tensor,
             teacher_logits: Tensor | None) -> StepOutput:
        out = super().loss(student, batch, x_adv, teacher_logits)
        if self._targeted_fraction is not None:
            out.stats["targeted_fraction"] = self._targeted_fraction
        return out

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        logs = super().on_epoch_end(epoch)
        targeted_sum, seen = all_reduce_sum(self.targeted_sum), all_reduce_sum(self.seen)  # every share
        fraction = (targeted_sum / seen.clamp(min=1)).cpu()
        self.targeted_sum, self.seen = torch.zeros_like(self.targeted_sum), torch.zeros_like(self.seen)
        return {**logs, **{f"targeted/{k}": float(f) for k, f in enumerate(fraction)}}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "targeted_sum": self.targeted_sum.cpu(), "seen": self.seen.cpu()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.targeted_sum, self.seen = state["targeted_sum"].clone(), state["seen"].clone()
