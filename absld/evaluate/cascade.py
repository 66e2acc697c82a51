r"""Evaluation of a model on a fixed set of samples, clean and under attacks (docs/method.md §6).

Two layers live here:

- (the quick class-wise check that training needs is :mod:`absld.attacks.accuracy`)
- the full evaluation of ``absld evaluate`` (:func:`evaluate_model`): every attack of
  ``evaluate.attacks`` on the first ``evaluate.n_samples`` test images, one boolean per sample
  and attack (the ``records.npz`` contract of docs/architecture.md), timed.

The attacks of the paper's evaluation, all at ``eps`` (8/255 on CIFAR), inputs in [0, 1], the model
in eval mode:

| record | attack | start |
|---|---|---|
| ``clean`` | none | |
| ``fgsm`` | one step of size eps on CE (:func:`absld.attacks.fgsm`) | ``x + gauss_std N(0, I)`` |
| ``pgd`` | PGD on CE, e.g. 20 steps of 2/255 (the steps are in the protocol) | uniform in the eps-ball |
| ``cw`` | PGD on the CW margin, kappa 50 (:func:`absld.attacks.cw_inf`) | uniform in the eps-ball |
| ``aa`` | AutoAttack through its reference code (:func:`absld.evaluate.autoattack.autoattack`) | its own |
| ``worst`` | robust to every attack run (and clean-correct) | |

Semantics of the records, with ``c_i`` clean correctness and ``r_i^a`` "the model still classifies
sample i correctly after attack a":

- an attack only runs on clean-correct samples; a clean-wrong sample is not robust (``r_i^a = 0``);
- ``cascade = false``: every attack runs on every clean-correct sample, ``correct_a = c & r^a``;
- ``cascade = true``: attack a runs only on the samples robust to every earlier attack in
  ``evaluate.attacks``, so ``correct_a = c & r^{a_1} & ... & r^a`` ("robust to this one and all the
  earlier ones"); it saves the time of attacking samples already broken;
- ``correct_worst = c & r^{a_1} & ... & r^{a_k}`` in both modes.

AutoAttack on a subset (``evaluate.aa.n_samples = M``): AA runs only on the first M evaluated
samples. ``evaluated_aa`` and ``evaluated_worst`` (bool masks, the first M) say which samples the
``aa`` and ``worst`` columns cover; outside them ``correct_aa`` is False (not attacked) and
``correct_worst`` is the worst case of the other attacks only, so both must be read on their mask
(the analysis does). Without a subset there are no masks: every column covers every sample.

Per-sample randomness. The random start of FGSM, PGD and CW is drawn once per attack for the whole
evaluated set from a CPU ``torch.Generator`` seeded from (``evaluate.seed``, record name), and
indexed by the sample's position: a sample gets the same start whichever batch it lands in. With
the model in eval mode a sample's result then depends on nothing but the sample, so the cascade and
the full run give the same ``correct_worst`` for FGSM, PGD and CW (up to floating-point effects of
batch composition on some GPU kernels; bit-identical on the CPU). AutoAttack cannot be fed noise:
it reseeds itself with ``evaluate.seed`` on every call (one call per ``evaluate.aa.batch_size``
samples), so its random restarts depend on which samples share its call. That changes which
samples it breaks only by chance, yet it means ``correct_aa`` (and so ``correct_worst``) can differ
between the cascade and the full run, and between two ``n_samples``.

Precision: float32 throughout by default, as the reference evaluations; ``evaluate.amp: true`` runs
clean, FGSM, PGD and CW (and their verdicts) under ``runtime.amp`` (bf16 autocast on CUDA).
AutoAttack and its verdict always run in float32.

Provenance: :func:`protocol` describes how the records were made (precision, cascade, seed, every
attack's settings, the AutoAttack backend with its package version, and whether that AutoAttack is
the standard one of the literature); it is stored in ``records.npz`` (``protocol``, a JSON string)
so that an analysis can refuse to compare models evaluated differently and label a non-standard AA.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..attacks import ce_loss, cw_inf, fgsm, pgd
from ..attacks.accuracy import attack_seed, first_n
from ..errors import interrupted
from ..params import EvalAttack, EvaluateConfig
from ..fairness import Summary, summarize
from ..runtime import Runtime
from .autoattack import autoattack
from .progress import ColumnProgress, EvalProgress
from .records import WORST, Records

Attack = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``attack(model, x, y) -> x_adv``."""

NoisyAttack = Callable[[nn.Module, Tensor, Tensor, "Tensor | None"], Tensor]
"""``attack(model, x, y, noise) -> x_adv``: ``noise`` (B, ...) holds the samples' start draws
(None for attacks without a random start, or that draw their own, as AutoAttack)."""

AdversarialHook = Callable[[str, Tensor, Tensor, Tensor], None]
"""``hook(record_name, positions (B,), x (B, ...), x_adv (B, ...))``, called on every evaluated
batch (for checks and debugging; ``x_adv is x`` for ``clean``)."""

NoiseKind = Literal["uniform", "gaussian"]

CLEAN = "clean"


# ----------------------------------------------------------------------------------------------
# the evaluation attacks
@dataclass(frozen=True)
class EvalAttackSpec:
    """One column of the records: how to attack a batch, and how to batch it.

    ``run(model, x, y, noise)`` returns ``x_adv``; ``noise`` is drawn by :func:`start_noise` with
    ``noise_kind`` (None: the attack has no random start it can take from outside).
    """

    name: str  # record name: "clean", "fgsm", "pgd", "cw", "aa"
    run: NoisyAttack
    batch_size: int
    noise_kind: NoiseKind | None = None
    autocast: bool = False  # run (and judge) under runtime.amp (evaluate.amp; never AutoAttack)


def record_name(attack: EvalAttack, cfg: EvaluateConfig) -> str:
    """The records' name of an attack of ``evaluate.attacks``: the attack's own name, never a param
    (``pgd`` for any number of steps: a steps sweep compares like with like in ``dvc exp diff``; the
    steps are in the records' protocol and the captions say them, PGD-20)."""
    return attack


def _package_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def tf32_active(device: torch.device) -> bool:
    """Whether float32 convolutions and matmuls on ``device`` run as TF32 (CUDA, unless
    runtime.deterministic switched it off: :func:`absld.runtime.setup`)."""
    return device.type == "cuda" and bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)


def protocol(cfg: EvaluateConfig, autocast_available: bool = True, tf32: bool = False) -> dict[str, Any]:
    """How the records of ``cfg`` are made: everything but the model that can change a verdict.

    ``autocast_available``: whether the runtime has bf16 autocast at all (``Runtime.amp``: CUDA with
    runtime.amp); ``precision`` is ``bf16-autocast`` only when both it and evaluate.amp are on.
    ``tf32``: whether the float32 passes run their convolutions and matmuls as TF32 (CUDA's
    default here, :func:`tf32_active`): ``precision`` is then ``tf32``, not ``float32`` (10 mantissa
    bits in the products; a verdict near the decision boundary can differ from a true float32 one).
    Keys: ``precision`` (``float32`` | ``tf32`` | ``bf16-autocast``), ``cascade``, ``seed``, ``eps`` (fraction), ``attacks`` (evaluate.attacks) and, per
    attack in it, its settings (``fgsm``, ``pgd``, ``cw``, ``aa``; ``aa`` adds ``package_version`` of
    its backend and ``standard``: whether it is the standard AutoAttack). JSON-able, stable key order.
    """
    precision = "bf16-autocast" if cfg.amp and autocast_available else ("tf32" if tf32 else "float32")
    out: dict[str, Any] = {"precision": precision, "cascade": cfg.cascade, "seed": cfg.seed, "eps": float(cfg.eps),
                           "attacks": list(cfg.attacks)}
    for attack in cfg.attacks:
        section = getattr(cfg, attack).model_dump(mode="json")
        if attack == "aa":
            section["package_version"] = _package_version(cfg.aa.backend)  # each backend is its distribution's name
            # the standard AutoAttack of the literature: the reference code, version standard (torchattacks'
            # port runs APGD for 10 iterations, the reference 100; custom and rand are other attacks)
            section["standard"] = cfg.aa.backend == "pyautoattack" and cfg.aa.version == "standard"
        out[attack] = section
    return out


def _clean(model: nn.Module, x: Tensor, y: Tensor, noise: Tensor | None) -> Tensor:
    return x


def build_attacks(cfg: EvaluateConfig, device: torch.device | str | None = None) -> list[EvalAttackSpec]:
    """The attacks of ``cfg.attacks``, in order, as the evaluation runs them (clean not included).

    FGSM is :func:`absld.attacks.fgsm`, PGD :func:`absld.attacks.pgd` on CE with a uniform start,
    CW-inf :func:`absld.attacks.cw_inf`; each gets its start noise drawn per sample.
    """
    eps = cfg.eps
    specs: list[EvalAttackSpec] = []
    for attack in cfg.attacks:
        name = record_name(attack, cfg)
        if attack == "fgsm":
            gauss_std = cfg.fgsm.gauss_std

            def run_fgsm(model: nn.Module, x: Tensor, y: Tensor, noise: Tensor | None) -> Tensor:
                return fgsm(model, x, y, eps=eps, gauss_std=gauss_std, noise=noise)

            specs.append(EvalAttackSpec(name, run_fgsm, cfg.batch_size, noise_kind="gaussian", autocast=cfg.amp))
        elif attack == "pgd":
            pgd_cfg = cfg.pgd

            def run_pgd(model: nn.Module, x: Tensor, y: Tensor, noise: Tensor | None) -> Tensor:
                return pgd(model, x, ce_loss(y), eps=eps, step=pgd_cfg.step, steps=pgd_cfg.steps,
                           start="uniform", noise=noise)

            specs.append(EvalAttackSpec(name, run_pgd, cfg.batch_size, noise_kind="uniform", autocast=cfg.amp))
        elif attack == "cw":
            cw_cfg = cfg.cw

            def run_cw(model: nn.Module, x: Tensor, y: Tensor, noise: Tensor | None) -> Tensor:
                return cw_inf(model, x, y, eps=eps, step=cw_cfg.step, steps=cw_cfg.steps, kappa=cw_cfg.kappa,
                              start="uniform", noise=noise)

            specs.append(EvalAttackSpec(name, run_cw, cfg.batch_size, noise_kind="uniform", autocast=cfg.amp))
        else:  # "aa"
            aa_cfg = cfg.aa
            seed = cfg.seed

            def run_aa(model: nn.Module, x: Tensor, y: Tensor, noise: Tensor | None) -> Tensor:
                return autoattack(model, x, y, eps=eps, version=aa_cfg.version, attacks=aa_cfg.attacks,
                                  seed=seed, batch_size=aa_cfg.batch_size, backend=aa_cfg.backend,
                                  device=device)

            specs.append(EvalAttackSpec(name, run_aa, aa_cfg.batch_size, autocast=False))
    return specs


def start_noise(kind: NoiseKind, shape: tuple[int, ...], *, seed: int, name: str) -> Tensor:
    """Standard start draws for a whole evaluated set, on the CPU: ``shape = (N, C, H, W)``.

    ``uniform``: U(-1, 1) (PGD's start ``x + eps * noise``); ``gaussian``: N(0, 1) (FGSM's start
    ``x + gauss_std * noise``). Row i belongs to the i-th evaluated sample, whatever its batch.
    """
    generator = torch.Generator().manual_seed(attack_seed(seed, name))
    if kind == "uniform":
        return torch.rand(shape, generator=generator).mul_(2.0).sub_(1.0)
    return torch.randn(shape, generator=generator)


# ----------------------------------------------------------------------------------------------
# the records
def summarize_records(records: Records, num_classes: int, ddof: int = 0) -> dict[str, Summary]:
    """Avg, Worst, NSD (std with ``ddof``) and class accuracies for every column of the records, each
    on the samples it covers (``records.evaluated``: AutoAttack and the worst case on a subset)."""
    out = {}
    for name, correct in records.correct.items():
        mask = records.evaluated.get(name)
        if mask is None:
            out[name] = summarize(correct, records.y, num_classes, ddof)
        else:
            out[name] = summarize(correct[mask], records.y[mask], num_classes, ddof)
    return out


# ----------------------------------------------------------------------------------------------
# the cascade
def _check_model(model: nn.Module, x: Tensor, num_classes: int) -> None:
    if model.training:
        raise ValueError(
            "evaluate_model needs the model in eval mode (model.eval()): BatchNorm must use its "
            "running statistics, so that a sample's result does not depend on its batch"
        )
    with torch.no_grad():
        logits = model(x)
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(
            f"the model outputs logits of shape {tuple(logits.shape)} for a batch of {x.shape[0]}, "
            f"but the data has {num_classes} classes; evaluate it on the dataset it was trained for"
        )


def _chunks(positions: Tensor, size: int) -> Iterator[Tensor]:
    for begin in range(0, positions.shape[0], size):
        yield positions[begin : begin + size]


def _settle(robust: npt.NDArray[np.bool_], positions: list[Tensor], verdicts: list[Tensor]) -> None:
    """Copy the device verdicts of the batches at ``positions`` into ``robust``; empty both lists."""
    if verdicts:
        robust[torch.cat(positions).numpy()] = torch.cat(verdicts).cpu().numpy()
    positions.clear()
    verdicts.clear()


class _Evaluator:
    """The evaluated set on the device, and one pass of one attack over a subset of it."""

    def __init__(self, model: nn.Module, images: np.ndarray, labels: np.ndarray, rt: Runtime,
                 cfg: EvaluateConfig, desc: str, hook: AdversarialHook | None) -> None:
        self.model, self.rt, self.cfg, self.desc, self.hook = model, rt, cfg, desc, hook
        self.images = torch.as_tensor(images, dtype=torch.uint8).to(rt.device)  # (N, C, H, W) uint8
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(rt.device)  # (N,)

    def inputs(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, C, H, W) float in [0, 1] and y (B,) of the samples at ``positions`` (B,)."""
        on_device = positions.to(self.rt.device)
        x = self.images[on_device].float().div_(255)
        if self.rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[on_device]

    def run(self, spec: EvalAttackSpec, mask: npt.NDArray[np.bool_],
            progress: EvalProgress | None = None) -> tuple[npt.NDArray[np.bool_], float]:
        """Run ``spec`` on the samples where ``mask`` (N,) is true; return (robust (N,), seconds).

        ``robust[i]``: sample i was attacked and the model still classifies it correctly. With
        ``progress``, a column it holds is taken from it (the rest of it run from the batch where
        it stopped) and the verdicts are handed to it as batches finish.
        """
        n = mask.shape[0]
        positions = torch.from_numpy(np.flatnonzero(mask))  # (M,) CPU
        before = progress.columns.get(spec.name) if progress is not None else None
        if before is not None and before.complete:
            return before.robust, before.seconds
        robust = np.zeros(n, dtype=np.bool_) if before is None else before.robust.copy()
        done = 0 if before is None else before.done
        if done % spec.batch_size and done != positions.numel():
            raise ValueError(f"{spec.name}: {done} samples done is not a whole number of batches of {spec.batch_size}")
        spent = 0.0 if before is None else before.seconds
        start = time.perf_counter()
        noise = None
        if spec.noise_kind is not None and positions.numel():
            noise = start_noise(spec.noise_kind, (n, *self.images.shape[1:]), seed=self.cfg.seed,
                                name=spec.name)  # (N, C, H, W) CPU
        verdicts: list[Tensor] = []  # (B,) per batch since the last hand-over, on the device
        pending: list[Tensor] = []  # their positions
        try:
            with tqdm(total=positions.numel(), initial=done, desc=f"[{self.desc} {spec.name}]", unit="img",
                      leave=False, disable=not self.rt.progress) as bar:
                for chunk in _chunks(positions[done:], spec.batch_size):
                    x, y = self.inputs(chunk)
                    batch_noise = None if noise is None else noise[chunk].to(self.rt.device, non_blocking=True)
                    with self._precision(spec):
                        x_adv = spec.run(self.model, x, y, batch_noise)
                    if self.hook is not None:
                        self.hook(spec.name, chunk, x, x_adv)
                    with torch.no_grad(), self._precision(spec):
                        verdicts.append(self.model(x_adv).argmax(dim=1) == y)  # (B,)
                    pending.append(chunk)
                    done += chunk.numel()
                    bar.update(chunk.numel())
                    if progress is not None and progress.due():
                        _settle(robust, pending, verdicts)  # syncs the device
                        progress.update(spec.name, ColumnProgress(robust.copy(), done, spent + time.perf_counter() - start,
                                                                  complete=False))
        except KeyboardInterrupt as exc:  # keep the finished batches, say where it stopped
            _settle(robust, pending, verdicts)
            if progress is not None:
                progress.update(spec.name, ColumnProgress(robust, done, spent + time.perf_counter() - start,
                                                          complete=False), save=True)
            batches = -(-positions.numel() // spec.batch_size)
            raise interrupted(exc, f"{self.desc} stopped in {spec.name}, batch {done // spec.batch_size + 1} of "
                                   f"{batches} (its finished batches are saved)") from None
        _settle(robust, pending, verdicts)  # syncs the device
        seconds = spent + time.perf_counter() - start
        if progress is not None:
            progress.update(spec.name, ColumnProgress(robust, done, seconds, complete=True))
        return robust, seconds

    def _precision(self, spec: EvalAttackSpec) -> AbstractContextManager:
        """runtime.amp's autocast where evaluate.amp asks for it, else float32 (autocast switched off)."""
        if spec.autocast:
            return self.rt.autocast()
        return torch.autocast(device_type=self.rt.device.type, enabled=False)


def evaluate_model(model: nn.Module, images: np.ndarray, labels: np.ndarray, rt: Runtime,
                   cfg: EvaluateConfig, *, num_classes: int, desc: str = "evaluate",
                   on_adversarial: AdversarialHook | None = None, progress: EvalProgress | None = None) -> Records:
    """Clean accuracy and every attack of ``cfg.attacks`` on the first ``cfg.n_samples`` images.

    Args:
        model: maps inputs in [0, 1] to logits (B, num_classes); must be in eval mode and on
            ``rt.device`` (it is not moved, and its mode is not changed).
        images: the test images (N, C, H, W) uint8, in test-set order.
        labels: their labels (N,) int.
        rt: device, autocast, channels_last and progress bars.
        cfg: the ``evaluate`` section (attacks, their settings, cascade, seed, batch sizes).
        num_classes: number of classes of the data; the model must output that many logits.
        desc: prefix of the progress bars.
        on_adversarial: optional :data:`AdversarialHook`, called on every attacked batch.
        progress: optional :class:`EvalProgress`: the evaluation resumes from what it holds (already
            loaded) and saves into it as it goes; the records are the same as without it.

    Returns:
        :class:`Records` of the first ``cfg.n_samples`` images (all when None): ``index``, ``y``,
        ``correct`` (``clean``, the attacks in ``cfg.attacks`` order, ``worst``; semantics and the
        cascade in the module docstring), ``eps``, ``cascade``, ``seconds`` per column and the
        evaluation's :func:`protocol`.

    Raises:
        ValueError: the model is in training mode or does not output ``num_classes`` logits.
    """
    images, labels = first_n(images, labels, cfg.n_samples)
    n = int(labels.shape[0])
    evaluator = _Evaluator(model, images, labels, rt, cfg, desc, on_adversarial)
    if n:
        _check_model(model, evaluator.inputs(torch.zeros(1, dtype=torch.int64))[0], num_classes)

    correct: dict[str, npt.NDArray[np.bool_]] = {}
    seconds: dict[str, float] = {}
    clean_spec = EvalAttackSpec(CLEAN, _clean, cfg.batch_size, autocast=cfg.amp)
    correct[CLEAN], seconds[CLEAN] = evaluator.run(clean_spec, np.ones(n, dtype=np.bool_), progress)
    robust_to_all = correct[CLEAN].copy()  # (N,) clean-correct and robust to every attack so far
    evaluated: dict[str, npt.NDArray[np.bool_]] = {}
    for spec in build_attacks(cfg, rt.device):
        attacked = robust_to_all if cfg.cascade else correct[CLEAN]
        covered = None  # (N,) the samples this attack covers, when only a subset
        if spec.name == "aa" and cfg.aa.n_samples is not None and cfg.aa.n_samples < n:
            covered = np.arange(n) < cfg.aa.n_samples
            attacked = attacked & covered
            evaluated["aa"] = evaluated[WORST] = covered
        robust, seconds[spec.name] = evaluator.run(spec, attacked, progress)
        correct[spec.name] = robust  # cascade: robust is False wherever an earlier attack won
        robust_to_all = robust_to_all & (robust if covered is None else (robust | ~covered))
    correct[WORST] = robust_to_all
    return Records(model=desc, index=np.arange(n, dtype=np.int64), y=np.asarray(labels, dtype=np.int64),
                   correct=correct, eps=float(cfg.eps), cascade=cfg.cascade, seconds=seconds,
                   protocol=protocol(cfg, rt.amp, tf32_active(rt.device)), evaluated=evaluated)
