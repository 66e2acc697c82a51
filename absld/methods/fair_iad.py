"""Fair-IAD (Yue, Mou, Wang, Zhao; NeurIPS 2023): IAD whose two loss terms are re-weighted per class
by Fair-ARD's kappa, counted during IAD's own attack.

    x'      = argmax CE(S(x'), y)                PGD, uniform start, student in train mode (IAD's)
    kappa_i = #{PGD steps at which argmax S(x'_s)_i = y_i}   (counted before each step's update)
    a_i     = P_T(y_i | x'_i) ** beta_iad   after epoch `begin`, else 1
    L       = t^2 (1/B) sum_i w[y_i] KL(softmax(T(x_i)/t) ‖ softmax(S(x'_i)/t))
            +     (1/B) sum_i w[y_i] (1 - a_i) KL(S(x_i) ‖ S(x'_i))
    epoch end:  w_k ∝ (1 / (mean_{i: y_i = k} kappa_i + 1e-5)) ** beta, normalised to sum C, clamped [w_min, w_max]

Both KL terms are summed over the classes and averaged over the batch, as IAD's (whatever
``distill.kl_reduction`` says). The kappa count and the weights are :mod:`absld.methods.kappa`'s
(shared with Fair-RSLAD and Fair-ARD); the loss is :mod:`absld.methods.iad`'s with per-sample weights.
``beta`` is the re-weighting exponent in all three Fair methods; IAD's own exponent is ``beta_iad``
here (the official script's names, ``Fair-IAD.py:29,31``; ``distill.iad.beta`` is the same quantity).

Official code: NISP-official/Fair-ARD 910c8cd, ``Fair-IAD.py``:

- attack: 10 steps of 2/255 in the 8/255 ball (``:123-127``), uniform start (``:79``), CE summed over
  the batch (``:89``), the prediction counted before each step's update (``:82-87``), in train mode
  (``:157``);
- kappa summed per class over the epoch (``:166-167``), divided by ``len(dataset) / C`` (``:220``),
  weights ``(1 / (kappa + 1e-5)) ** beta`` normalised to sum C and clamped to [5/6, 5/2]
  (``:144-153``), computed after every epoch (``:219-221``), starting from ones (``:215``);
- a_i from the teacher on x' (``:171,176-178``) from the 0-based epoch ``begin`` on (``:173``), that
  is after ``begin`` epochs, as in ``iad``;
- loss: per sample, ``nn.KLDivLoss(reduce=False)`` summed over the classes (``:140,183-184``), the
  introspection target S(x) with its gradient (``:165,184``), each term multiplied by
  ``reweight[y_i]`` (``:186-187``, before ``begin`` ``:197``), summed and divided by B
  (``:189-190,198``); ``alpha t^2 KL_1 + alpha KL_2 + (1 - alpha) CE`` (``:192``, ``:199``);
- defaults: t = 1 (``:22``), alpha = 1 (``:25``), beta_iad = 0.1 (``:29``), begin = 60 (``:30``),
  beta = 2 (``:31``; README.md:31 runs ``--beta 2.0``); SGD lr 0.1, momentum 0.9, weight decay 2e-4,
  **Nesterov** (``:214``), batch 128 (``:63``), 200 epochs (``:16``), lr 0.01 from the 0-based epoch
  100 on, also after 150 (``:14-15,45-49,218``): ``distill.fair_iad.train`` = ``{epochs: 200,
  milestones: [100, 150], lr_decay: from_base, nesterov: true}``.

Where the code and this implementation differ (the first two as in :mod:`absld.methods.kappa`):

- the class mean of kappa divides by the number of the class's samples attacked this epoch, the
  code by ``len(dataset) / C`` (equal on a balanced training set);
- a class not seen in an epoch keeps a raw weight of 1;
- alpha is not a param (as for ``iad``): the code's default 1 (``:25``), with which its
  ``(1 - alpha) CE(S(x'), y)`` term (``:185,188,192``, on the *adversarial* logits, after ``begin``
  only) vanishes;
- the uniform start is clamped to [0, 1] (:func:`absld.attacks.pgd`; ``:79`` is not), as for ``iad``;
- the code runs the student on the clean batch before ``begin`` too (``:165``) and once more on x'
  (``:170``, detached and unused): train-mode forwards whose only effect is on BatchNorm's running
  statistics; here (as in ``iad``) the clean forward runs only with introspection and the extra one
  not at all.

Class weights: logged per epoch as ``w/<k>`` (the weights of the next epoch) and written as
``weights.csv`` by :meth:`~absld.methods.kappa.KappaReweighting.artefacts`.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from ..attacks import ce_loss
from ..data import Batch
from .iad import IAD
from .kappa import KappaReweighting


class FairIAD(KappaReweighting, IAD):
    name = "fair_iad"
    kappa_offset: ClassVar[float] = 1e-5  # Fair-IAD.py:148

    @property
    def trust_beta(self) -> float:
        return self.cfg.beta_iad  # Fair-IAD.py:29,177; cfg.beta is the re-weighting exponent

    def perturb(self, student: nn.Module, batch: Batch, teacher_logits: Tensor | None) -> Tensor:
        return self.kappa_pgd(student, batch, ce_loss(batch.y), start="uniform")  # IAD's attack
