"""Fair-ARD's class re-weighting (Yue, Mou, Wang, Zhao; NeurIPS 2023), shared by the three methods
that put it on a base distillation: Fair-RSLAD, Fair-ARD and Fair-IAD.

The official code (NISP-official/Fair-ARD 910c8cd, one script per base method) does the same three
things in each script:

1. During the base method's own attack, kappa_i counts the PGD steps at which the student
   classifies x'_i correctly, the prediction taken on each step's x' *before* its update (the
   final x' is not counted), every such step, also after a recovery (``Fair-ARD.py:64-71``,
   ``Fair-IAD.py:80-87``, ``Fair-RSLAD.py:56-63``). The student's BatchNorm mode is the base
   method's (train for ARD/IAD, ``Fair-ARD.py:128``; eval for RSLAD, ``Fair-RSLAD.py:51``).
2. At the end of each epoch, from the class means of kappa (``Fair-ARD.py:134-135,166``)::

       w_k ∝ (1 / (mean_{i: y_i = k} kappa_i + offset)) ** beta,  normalised to sum to C,  clamped to [w_min, w_max]

   (``Fair-ARD.py:116-125``, ``Fair-IAD.py:144-153``: offset 1e-5; ``Fair-RSLAD.py:95-104``: no
   offset, a class with mean kappa 0 gives inf and then NaN there; here it is floored at 1e-6).
   beta = 2, w_min = 5/6, w_max = 5/2 in all three.
3. The weights start at 1 (``Fair-ARD.py:161``) and weight every loss term of the base method per
   sample by ``w[y_i]`` from the first epoch on (the scripts' ``epoch >= 0`` / ``epoch > 0`` tests
   are always true), with the base method's own reduction.

Where this module differs from the code (all three scripts):

- the class mean divides by the number of samples of the class attacked this epoch; the code
  divides every class's sum by ``len(dataset) / C`` (``Fair-ARD.py:166``), the same on a balanced
  training set (CIFAR-10, ``distill.train_per_class``) and the mean on any other;
- a class with no sample this epoch keeps a raw weight of 1 (the code would give it the largest
  weight, its kappa sum being 0).

Data-parallel: the kappa sums and counts are summed over all processes before the update.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..attacks import LossFn, Start, pgd
from ..data import Batch
from .risk import class_sums
from ..distributed import all_reduce_sum
from .base import Artefacts, per_class_rows


def kappa_class_weights(kappa_sum: Tensor, count: Tensor, beta: float, w_min: float, w_max: float,
                        offset: float = 0.0) -> Tensor:
    """The class weights (C,) of the next epoch from this epoch's kappa sums and sample counts (C,).

    ``1 / (mean kappa + offset)`` is floored at 1e-6 in the denominator (a class broken from the
    first step gets the largest weight after the clamp); a class not seen keeps a raw weight of 1.
    """
    seen = count > 0
    mean_kappa = kappa_sum / count.clamp(min=1)  # (C,)
    inverse = 1.0 / (mean_kappa + offset).clamp(min=1e-6)  # (C,)
    raw = torch.where(seen, inverse ** beta, torch.ones_like(mean_kappa))
    weights = raw * len(raw) / raw.sum()  # sums to C
    return weights.clamp(w_min, w_max)


class KappaReweighting:
    """Mixin before a base method (``class FairARD(KappaReweighting, ARD)``): the kappa count, the
    class weights and their state. The base method keeps its math; it reads the weights through its
    own hook (RSLAD's ``class_weights``, ARD's and IAD's ``sample_weights``), and the subclass
    runs its attack through :meth:`kappa_pgd`. The config needs ``beta``, ``w_min``, ``w_max``."""

    kappa_offset: ClassVar[float] = 0.0
    """Added to the class mean of kappa before the inverse (the official scripts: 1e-5 for ARD/IAD)."""

    cfg: Any
    ctx: Any

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)  # type: ignore[call-arg]
        self.weights = torch.ones(ctx.num_classes)  # (C,) used during this epoch
        self.kappa_sum = torch.zeros(ctx.num_classes)  # (C,) this epoch
        self.count = torch.zeros(ctx.num_classes)  # (C,) this epoch

    def sample_weights(self, y: Tensor) -> Tensor:
        """``w[y_i]`` (B,), on the batch's device."""
        if self.weights.device != y.device:
            self.weights = self.weights.to(y.device)
        return self.weights[y]

    def kappa_pgd(self, student: nn.Module, batch: Batch, loss_fn: LossFn, start: Start) -> Tensor:
        """The base method's PGD (``ctx.attack``, ``loss_fn``, ``start``), counting each sample's kappa."""
        kappa = torch.zeros(len(batch.y), device=batch.y.device)  # (B,)

        def count(logits: Tensor) -> None:  # logits of each step's x' before its update
            kappa.add_((logits.argmax(1) == batch.y).float())

        attack = self.ctx.attack
        x_adv = pgd(student, batch.x, loss_fn, eps=attack.eps, step=attack.step, steps=attack.steps,
                    start=start, on_logits=count)
        self._accumulate(kappa, batch.y)
        return x_adv

    def _accumulate(self, kappa: Tensor, y: Tensor) -> None:
        if self.kappa_sum.device != y.device:
            self.kappa_sum, self.count = self.kappa_sum.to(y.device), self.count.to(y.device)
        self.kappa_sum += class_sums(kappa, y, len(self.count))
        self.count += class_sums(torch.ones_like(kappa), y, len(self.count))

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        logs = super().on_epoch_end(epoch)  # type: ignore[misc]
        kappa_sum, count = all_reduce_sum(self.kappa_sum), all_reduce_sum(self.count)  # data-parallel: all shares
        self.weights = kappa_class_weights(kappa_sum, count, self.cfg.beta, self.cfg.w_min, self.cfg.w_max,
                                           self.kappa_offset)
        self.kappa_sum.zero_()
        self.count.zero_()
        return {**logs, **{f"w/{k}": float(w) for k, w in enumerate(self.weights.cpu())}}

    def artefacts(self, chosen_epoch: int, class_names: list[str],
                  history: list[dict[str, Any]] | None = None) -> Artefacts:
        """weights.csv: the class weights w_k after each epoch (those used during the next one)."""
        return Artefacts(tables={"weights.csv": (per_class_rows(history or [], ["w"]), ["epoch", "class", "w"])})

    def state_dict(self) -> dict:
        return {**super().state_dict(), "weights": self.weights.cpu(),  # type: ignore[misc]
                "kappa_sum": self.kappa_sum.cpu(), "count": self.count.cpu()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)  # type: ignore[misc]
        self.weights = state["weights"].clone()
        self.kappa_sum, self.count = state["kappa_sum"].clone(), state["count"].clone()
