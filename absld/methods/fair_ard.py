"""Fair-ARD (Yue, Mou, Wang, Zhao; NeurIPS 2023): ARD whose loss terms are re-weighted per class by
how quickly the class's samples are broken during ARD's own attack.

    x'    = argmax CE(S(x'), y)                  PGD, uniform start, student in train mode (ARD's)
    kappa_i = #{PGD steps at which argmax S(x'_s)_i = y_i}   (counted before each step's update)
    L     = alpha t^2 (1/B) sum_i w[y_i] KL(softmax(T(x_i)/t) ‖ softmax(S(x'_i)/t)) / C
          + (1 - alpha) (1/B) sum_i w[y_i] CE(S(x_i), y_i)
    epoch end:  w_k ∝ (1 / (mean_{i: y_i = k} kappa_i + 1e-5)) ** beta, normalised to sum C, clamped [w_min, w_max]

The kappa count and the weights are :mod:`absld.methods.kappa`'s (shared with Fair-RSLAD and
Fair-IAD); the loss is ARD's (:mod:`absld.methods.ard`) with both terms weighted. The KL reduction
is ``distill.kl_reduction`` as for ARD (``element_mean``, the code's, divides by C as above).

Official code: NISP-official/Fair-ARD 910c8cd, ``Fair-ARD.py``:

- attack: 10 steps of 2/255 in the 8/255 ball (``:99-103``), uniform start (``:63``), CE summed over
  the batch (``:73``), the prediction counted before each step's update (``:66-71``), in train
  mode (``:128``: ``net.train()`` for the whole epoch, attack included);
- kappa summed per class over the epoch (``:134-135``), divided by ``len(dataset) / C`` (``:166``),
  weights ``(1 / (kappa + 1e-5)) ** beta`` normalised to sum C and clamped to [5/6, 5/2]
  (``:116-125``), computed after every epoch (``:165-167``), starting from ones (``:161``);
- loss: per sample, ``nn.KLDivLoss()`` (mean over the C classes, ``:112,141``) and CE on the clean
  input (``:137,142``), each multiplied by ``reweight[y_i]`` (``:143-145``, ``epoch >= 0`` is always
  true), summed and divided by B (``:146-147``); ``alpha t^2 KL + (1 - alpha) CE`` (``:148``);
- defaults: t = 30 (``:21``), alpha = 1 (``:24``), beta = 2 (``:25``; README.md:26 runs
  ``--beta 2.0``); SGD lr 0.1, momentum 0.9, weight decay 2e-4, **Nesterov** (``:160``; ARD's own
  recipe has none), batch 128 (``:47``), 200 epochs (``:16``), lr 0.1 * 0.1 from the 0-based epoch
  100 and again (not 0.001) from 150 (``:14-15,30-34,164``: the function scales the base rate):
  ``distill.fair_ard.train`` = ``{epochs: 200, milestones: [100, 150], lr_decay: from_base,
  nesterov: true}``.

Where the code and this implementation differ (the first two as in :mod:`absld.methods.kappa`):

- the class mean of kappa divides by the number of the class's samples attacked this epoch, the
  code by ``len(dataset) / C`` (equal on a balanced training set);
- a class not seen in an epoch keeps a raw weight of 1;
- the uniform start is clamped to [0, 1] (:func:`absld.attacks.pgd`; ``:63`` is not, so the first
  step's prediction may see pixels outside the box), as for ``ard``;
- with alpha = 1 the code still runs the student on the clean batch (``:137``), a train-mode
  forward whose only effect is on BatchNorm's running statistics; here (as in ``ard``) the clean
  forward runs only when alpha < 1.

Class weights: logged per epoch as ``w/<k>`` (the weights of the next epoch) and written as
``weights.csv`` by :meth:`~absld.methods.kappa.KappaReweighting.artefacts`.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from ..attacks import ce_loss
from ..data import Batch
from .ard import ARD
from .kappa import KappaReweighting


class FairARD(KappaReweighting, ARD):
    name = "fair_ard"
    kappa_offset: ClassVar[float] = 1e-5  # Fair-ARD.py:120

    def perturb(self, student: nn.Module, batch: Batch, teacher_logits: Tensor | None) -> Tensor:
        return self.kappa_pgd(student, batch, ce_loss(batch.y), start="uniform")  # ARD's attack
