"""The Method protocol: what a training method supplies to the one training loop.

A method is only its math. The loop (:mod:`absld.train`) owns batches, optimiser, schedule,
precision, checkpoints and logging, and calls per batch::

    teacher_logits = logits_teacher(x)          # clean inputs, eval mode, no grad (if any and reads_teacher_logits;
                                                # or gathered from a table of them: distill.teacher_logits)
    student.train(method.attack_mode == "train")                                  # the authors' BN mode
    x_adv = method.perturb(student, batch, teacher_logits)                        # inner max
    student.train(); out = method.loss(student, batch, x_adv, teacher_logits)    # outer loss
    out.loss.backward(); optimiser.step()

and once per epoch ``method.on_epoch_end(epoch)`` (epochs count from 1, as in the reference
code, so ``epoch in milestones`` means "the epoch after which the learning rate decays").

Methods that look at the model between epochs (FRL's class-wise validation errors, CFA's weight
averaging) find it in ``ctx.student`` and measure it with ``ctx.validate`` (class-wise clean and
PGD accuracy on the held-out validation split of ``prepare``); their params say so (``validates``).
A method whose measurement is not an accuracy (WAT's class-wise TRADES loss) runs its own per-batch
function over the same split with ``ctx.validation_pass``.
A method whose written student is not the trained weights (CFA's averaged model) returns them
from ``output_state()``.

Precision: the student's attack and loss run under ``runtime.amp``; the teacher is handed to the
method wrapped at its own precision (every pass of it, clean or attacked, float32 unless
``distill.teacher_amp``), and ``ctx.validate`` measures in float32 unless ``distill.measure_amp``.
``logits_teacher`` is the network whose clean-input logits the loop passes: the teacher for every
single-teacher method; B-MTARD, which distils a second, clean teacher on x and its robust teacher
on x' only, names its clean teacher (``uses_clean_teacher``; ``ctx.clean_teacher``, made by the DVC
stage ``teacher-clean``).

``attack_mode`` is part of a method's definition: the BatchNorm mode of the student while its
adversarial examples are generated, as in the authors' code. ``"eval"`` (running statistics, left
untouched) for RSLAD, ABSLD, TRADES, SAT, AdaAD and the re-weighting variants; ``"train"`` (batch
statistics, running statistics updated by every attack step) for ARD and IAD, whose official
scripts attack with the network in train mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import torch
from torch import Tensor, nn

from ..attacks.accuracy import ClassAccuracy
from ..data import Batch
from ..params import AttackConfig, EvalAttackConfig


@dataclass
class StepOutput:
    """What one outer step produced."""

    loss: Tensor  # scalar to minimise
    logits_adv: Tensor | None = None  # (B, C) student logits on x_adv, for the running accuracy
    logits_nat: Tensor | None = None  # (B, C) student logits on x
    stats: dict[str, Tensor] = field(default_factory=dict)  # detached per-batch scalars to average


Validate = Callable[[EvalAttackConfig], ClassAccuracy]
"""Measures ``ctx.student`` (eval mode; its mode is restored) on the validation split with the given
PGD (CE loss, uniform start drawn from a fixed generator: the training's RNG stream is untouched).
Data-parallel training: rank 0 measures, and every process gets its numbers."""

Measure = Callable[[nn.Module, Batch, torch.Generator], Tensor | None]
"""``measure(model, batch, generator)``: one validation batch's work, returning its sums (a tensor
of the same shape at every batch, e.g. class-wise counts and costs) or None."""

ValidationPass = Callable[[EvalAttackConfig, Measure], Tensor | None]
"""Runs ``measure(ctx.student, batch, generator)`` on every batch of the validation split's first
``n_samples`` images (``batch_size`` a batch, in split order, on the training device, under the run's
autocast), the student in eval mode (its mode is restored), and returns the sum of what it returned,
on the CPU (None if it returned None). ``generator``: a CPU generator seeded
from the run's seed and the stream ``validate``, afresh at every pass: attack starts drawn from it
leave the training's RNG stream untouched and are the same at every pass. Data-parallel training:
rank 0 alone runs the pass, and every process gets its sum (the method's state stays the same on
all of them; :func:`absld.distributed.from_main`), as with :data:`Validate`."""


@dataclass
class MethodContext:
    """What every method may need besides its own section of params."""

    num_classes: int
    attack: AttackConfig
    teacher: nn.Module | None = None
    clean_teacher: nn.Module | None = None
    """The second, clean (non-robust) teacher of the methods that say ``uses_clean_teacher`` (B-MTARD)."""
    kl_reduction: str = "element_mean"
    student: nn.Module | None = None
    """The model being trained (methods that average or measure it between epochs)."""
    validate: Validate | None = None
    """Class-wise accuracy of ``student`` on the validation split (methods whose params ``validates``)."""
    validation_pass: ValidationPass | None = None
    """A method's own measurement of ``student`` on the validation split (methods whose params ``validates``)."""


@dataclass
class Artefacts:
    """What a method wants written beside every student's training log once training ends (the
    distill stage writes them without knowing the method)."""

    tables: dict[str, tuple[list[dict[str, Any]], list[str]]] = field(default_factory=dict)
    """file name -> (rows, columns), e.g. ABSLD's ``temperatures.csv``."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Merged into the student's metrics.json (e.g. ABSLD's ``final_tau_*``)."""
    temperatures: list[dict[str, Any]] | None = None
    """Rows (epoch, class, tau_adv, tau_nat) to draw as class-wise temperature curves."""
    curves: dict[str, tuple[list[dict[str, Any]], list[str]]] = field(default_factory=dict)
    """figure name -> (rows (epoch, class, <key>...), keys): class-wise state drawn as one panel per
    key, one curve per class (e.g. FRL's weights, CFA's radii), as ``<name>.png``."""


class MethodBase:
    """Defaults for the bookkeeping half of the protocol: stateless, nothing to log."""

    name: ClassVar[str] = ""
    uses_teacher: ClassVar[bool] = False
    uses_clean_teacher: ClassVar[bool] = False
    attack_mode: ClassVar[Literal["eval", "train"]] = "eval"
    reads_teacher_logits: bool = True
    """Whether ``perturb``/``loss`` read ``teacher_logits`` (the clean batch's); False: the loop passes
    None and spends neither the teacher's clean forward nor a logit table on it (AdaAD with alpha 1)."""

    def __init__(self, cfg: Any, ctx: MethodContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        if self.uses_teacher and ctx.teacher is None:
            raise ValueError(f"method {self.name!r} distils from a teacher, but none was given")
        if self.uses_clean_teacher and ctx.clean_teacher is None:
            raise ValueError(f"method {self.name!r} distils from a clean teacher too, but none was given "
                             "(MethodContext.clean_teacher; the teacher_clean section of params.yaml)")

    def validate(self) -> ClassAccuracy:
        """``ctx.validate`` with the method's ``cfg.validation`` attack; a clear error without one."""
        if self.ctx.validate is None or self.ctx.student is None:
            raise ValueError(f"method {self.name!r} measures the student on the validation split between "
                             "epochs: give MethodContext a student and a validate function")
        return self.ctx.validate(self.cfg.validation)

    def validation_pass(self, measure: Measure) -> Tensor | None:
        """``ctx.validation_pass`` over the method's ``cfg.validation`` images (the sum of what
        ``measure`` returns, on the CPU); a clear error without one."""
        if self.ctx.validation_pass is None or self.ctx.student is None:
            raise ValueError(f"method {self.name!r} measures the student on the validation split between "
                             "epochs: give MethodContext a student and a validation_pass function")
        return self.ctx.validation_pass(self.cfg.validation, measure)

    def output_state(self) -> dict[str, Tensor] | None:
        """The weights to write as the student instead of the trained ones (None: the trained ones)."""
        return None

    @property
    def teacher(self) -> nn.Module | None:
        return self.ctx.teacher

    @property
    def clean_teacher(self) -> nn.Module | None:
        return self.ctx.clean_teacher

    @property
    def logits_teacher(self) -> nn.Module | None:
        """The network whose logits on the clean batch the loop passes to ``perturb``/``loss`` as
        ``teacher_logits`` (None: none are computed): the teacher, unless a method says otherwise."""
        return self.teacher

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def artefacts(self, chosen_epoch: int, class_names: list[str],
                  history: list[dict[str, Any]] | None = None) -> Artefacts:
        """Tables, metrics and curves of this method for the checkpoint of ``chosen_epoch``
        (``history``: the training log's rows, per-class values under ``<name>/<k>`` keys)."""
        return Artefacts()


def per_class_rows(history: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Long rows (epoch, class, <name>...) from the ``<name>/<k>`` keys of training-log rows, e.g.
    Fair-RSLAD's class weights ``w/3`` -> ``{"epoch": 1, "class": 3, "w": ...}``."""
    rows: list[dict[str, Any]] = []
    for row in history:
        classes = sorted({int(key.rpartition("/")[2]) for key in row
                          if key.rpartition("/")[0] in names and key.rpartition("/")[2].isdigit()})
        rows += [{"epoch": row["epoch"], "class": k, **{n: row[f"{n}/{k}"] for n in names if f"{n}/{k}" in row}}
                 for k in classes]
    return rows
