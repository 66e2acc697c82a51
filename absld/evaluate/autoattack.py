r"""AutoAttack through its reference implementations (never a home-made one).

Paper: Croce & Hein, *Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks*, ICML 2020 (arXiv 2003.01690). Reference code: github fra31/auto-attack,
on PyPI as ``pyautoattack``; a second, independent port is ``torchattacks.AutoAttack``.

Threat model: white-box (APGD-CE, APGD-T, FAB-T) plus black-box (Square), untargeted success,
``|x' - x|_p <= eps`` with p = inf (``norm="Linf"``, pixel space) or 2, ``x' in [0, 1]``.

Versions:

- ``"standard"``: APGD-CE (1 restart), APGD-T (9 target classes), FAB-T (9 target classes),
  Square (5000 queries), each run only on the points still robust, as the backend's own
  ``standard`` version;
- ``"rand"``: APGD-CE and APGD-DLR with 20 EOT iterations, for randomised defences;
- ``"custom"``: the ``attacks`` named, in that order, each with the settings it has in the
  ``standard`` version (1 restart, 5000 Square queries); ``custom`` with the four standard names
  is ``standard``. Names: ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab``, ``fab-t``, ``square``.

The number of target classes of APGD-T/FAB-T is ``min(9, C - 1)`` for a C-class model on
``pyautoattack`` (9 on CIFAR-10/100, as the reference), and ``C - 1`` on ``torchattacks`` (its
own rule). The class count C is read from one forward pass of the model, never assumed.

Backends:

- ``pyautoattack`` (0.2.0, the reference; use it for reported numbers). ``state_path`` lets an
  interrupted evaluation resume.
- ``torchattacks`` (3.5.1). Caveat: its ``AutoAttack`` builds APGD/APGD-T/FAB with their class
  defaults of **10 iterations** (the reference uses 100) and ``n_classes - 1`` target classes, so its
  numbers are a cross-check, not comparable with RobustBench's.

Both backends seed their attacks with ``seed`` (never from the clock) by reseeding the global torch
RNG; this function forks the RNG around the call, so the caller's random stream is unchanged.
The model's train/eval mode is left as the caller set it (evaluate in eval mode); parameter
``.grad`` is untouched by both backends.
"""

from __future__ import annotations

import importlib
import math
import numbers
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from absld.attacks.errors import AttackError

__all__ = [
    "STANDARD_ATTACKS",
    "AutoAttackBackend",
    "AutoAttackName",
    "AutoAttackNorm",
    "AutoAttackVersion",
    "autoattack",
]

AutoAttackBackend = Literal["pyautoattack", "torchattacks"]
AutoAttackVersion = Literal["standard", "rand", "custom"]
AutoAttackNorm = Literal["Linf", "L2"]
from ..vocab import AutoAttackName  # noqa: E402 - the one list of AutoAttack's attack names

STANDARD_ATTACKS: tuple[AutoAttackName, ...] = ("apgd-ce", "apgd-t", "fab-t", "square")
"""The attacks of AutoAttack's ``standard`` version, in its order."""

_STANDARD_TARGET_CLASSES = 9  # APGD-T / FAB-T target classes in the reference standard version
_STANDARD_SQUARE_QUERIES = 5000  # Square queries in the reference standard version

_INSTALL_HINT: dict[str, str] = {
    "pyautoattack": "install it with `pip install pyautoattack==0.2.0`",
    "torchattacks": ("it is the optional cross-check (its wheel pins an old requests): run `./reproduce.sh crosscheck`, "
                     "or `pip install 'absld-repro[crosscheck]'` in an environment of its own"),
}


def _import_backend(backend: AutoAttackBackend) -> ModuleType:
    """Import the backend lazily; a missing package becomes a one-line :class:`AttackError`."""
    try:
        return importlib.import_module(backend)
    except ImportError as error:
        raise AttackError(
            f"AutoAttack backend {backend!r} needs the package {backend!r}, which is not installed; "
            f"{_INSTALL_HINT[backend]}"
        ) from error


def _check_arguments(
    x: Tensor,
    y: Tensor,
    eps: float,
    norm: str,
    version: str,
    attacks: Sequence[str] | None,
    seed: int,
    batch_size: int,
    backend: str,
    state_path: Path | None,
) -> None:
    if backend not in get_args(AutoAttackBackend):
        raise AttackError(
            f"backend={backend!r} is not an AutoAttack backend; use one of {list(get_args(AutoAttackBackend))}."
        )
    if version not in get_args(AutoAttackVersion):
        raise AttackError(
            f"version={version!r} is not an AutoAttack version; use one of {list(get_args(AutoAttackVersion))}."
        )
    if norm not in get_args(AutoAttackNorm):
        raise AttackError(f"norm={norm!r} is not supported; use one of {list(get_args(AutoAttackNorm))}.")
    if not (isinstance(eps, numbers.Real) and math.isfinite(eps) and eps > 0):
        raise AttackError(f"eps={eps!r} must be a number > 0 in pixel space (e.g. 8/255).")
    if norm == "Linf" and eps > 1:
        raise AttackError(
            f"eps={eps!r} is larger than the [0, 1] pixel range; write it as a fraction of 255 (8/255, not 8)."
        )
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise AttackError(f"seed={seed!r} must be an integer (AutoAttack is never seeded from the clock here).")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise AttackError(f"batch_size={batch_size!r} must be an integer >= 1.")
    if version == "custom":
        if not attacks:
            raise AttackError(f"version='custom' needs a non-empty attacks list, e.g. {list(STANDARD_ATTACKS)}.")
        unknown = [name for name in attacks if name not in get_args(AutoAttackName)]
        if unknown:
            raise AttackError(f"unknown AutoAttack attacks {unknown}; use names from {list(get_args(AutoAttackName))}.")
        if len(set(attacks)) != len(attacks):
            raise AttackError(f"attacks={list(attacks)} names an attack twice; name each once.")
    elif attacks is not None:
        raise AttackError(f"attacks={list(attacks)} is only allowed with version='custom' (got version={version!r}).")
    if state_path is not None and backend != "pyautoattack":
        raise AttackError("state_path (resumable evaluation) is only supported by backend='pyautoattack'.")
    if x.shape[0] != y.shape[0]:
        raise AttackError(f"x has {x.shape[0]} samples but y has {y.shape[0]} labels.")
    if x.numel() and (x.min().item() < 0 or x.max().item() > 1):
        raise AttackError("x must be in [0, 1] (the model normalises internally); got values outside.")


@contextmanager
def _caller_state_preserved(device: torch.device) -> Iterator[None]:
    """Fork the global RNG (the backends reseed it) and keep the caller's trace function
    (pyautoattack's dynamic-defence check calls ``sys.settrace(None)``, which would switch off a
    running coverage tool or debugger)."""
    previous_trace = sys.gettrace()
    # the backends seed the *current* CUDA device, which need not be the model's: fork them all
    cuda_devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            yield
    finally:
        sys.settrace(previous_trace)


@dataclass(frozen=True)
class _Run:
    """The settings of one AutoAttack call, as both backends take them."""

    eps: float
    norm: AutoAttackNorm
    version: AutoAttackVersion
    attacks: Sequence[AutoAttackName] | None
    seed: int
    batch_size: int
    device: torch.device
    n_classes: int


def _run_pyautoattack(package: ModuleType, model: nn.Module, x: Tensor, y: Tensor, run: _Run,
                      state_path: Path | None) -> Tensor:
    eps, norm, version, attacks, seed = run.eps, run.norm, run.version, run.attacks, run.seed
    batch_size, device, n_classes = run.batch_size, run.device, run.n_classes
    adversary = package.AutoAttack(
        model,
        eps=eps,
        norm=norm,
        version=version,
        seed=seed,
        device=device,
        attacks=list(attacks) if attacks is not None else None,
    )
    n_target_classes = min(_STANDARD_TARGET_CLASSES, n_classes - 1)
    adversary.apgd_targeted.n_target_classes = n_target_classes
    adversary.fab.n_target_classes = n_target_classes
    if version == "custom":  # the standard version's per-attack settings (its _set_version, Linf/L2)
        adversary.apgd.n_restarts = 1
        adversary.apgd_targeted.n_restarts = 1
        adversary.fab.n_restarts = 1
        adversary.square.n_queries = _STANDARD_SQUARE_QUERIES
    x_adv: Tensor = adversary.run_standard_evaluation(x, y, batch_size=batch_size, state_path=state_path)[0]
    return x_adv


def _torchattacks_part(
    package: ModuleType, name: AutoAttackName, model: nn.Module, *, eps: float, norm: str, seed: int, n_classes: int
) -> Any:
    """One component as ``torchattacks.AutoAttack(version='standard')`` builds it."""
    common: dict[str, Any] = {"eps": eps, "norm": norm, "seed": seed}
    if name == "apgd-ce":
        return package.APGD(model, loss="ce", n_restarts=1, **common)
    if name == "apgd-dlr":
        return package.APGD(model, loss="dlr", n_restarts=1, **common)
    if name == "apgd-t":
        return package.APGDT(model, n_classes=n_classes, n_restarts=1, **common)
    if name == "fab":
        return package.FAB(model, multi_targeted=False, n_classes=n_classes, n_restarts=1, **common)
    if name == "fab-t":
        return package.FAB(model, multi_targeted=True, n_classes=n_classes, n_restarts=1, **common)
    return package.Square(model, n_queries=_STANDARD_SQUARE_QUERIES, n_restarts=1, **common)


def _keep_caller_mode(attack: Any, training: bool) -> None:
    """torchattacks switches the model to eval() during an attack; make it use the caller's mode."""
    pending = [attack]
    while pending:
        current = pending.pop()
        current.set_model_training_mode(model_training=training, batchnorm_training=training, dropout_training=training)
        inner = getattr(current, "_autoattack", None)  # torchattacks.AutoAttack wraps a MultiAttack
        if inner is not None:
            pending.append(inner)
        pending.extend(getattr(current, "attacks", []))  # MultiAttack's components


def _run_torchattacks(package: ModuleType, model: nn.Module, x: Tensor, y: Tensor, run: _Run) -> Tensor:
    eps, norm, version, attacks, seed = run.eps, run.norm, run.version, run.attacks, run.seed
    batch_size, device, n_classes = run.batch_size, run.device, run.n_classes
    if version == "custom":
        assert attacks is not None  # checked by _check_arguments
        parts = [
            _torchattacks_part(package, name, model, eps=eps, norm=norm, seed=seed, n_classes=n_classes)
            for name in attacks
        ]
        attack = parts[0] if len(parts) == 1 else package.MultiAttack(parts)
    else:
        attack = package.AutoAttack(model, norm=norm, eps=eps, version=version, n_classes=n_classes, seed=seed)
    _keep_caller_mode(attack, model.training)
    x_adv = torch.empty_like(x)
    for begin in range(0, x.shape[0], batch_size):
        end = min(begin + batch_size, x.shape[0])
        x_batch = x[begin:end].to(device)
        y_batch = y[begin:end].to(device)
        x_adv[begin:end] = attack(x_batch, y_batch).to(x.device)
    return x_adv


def autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: AutoAttackNorm = "Linf",
    version: AutoAttackVersion,
    attacks: Sequence[AutoAttackName] | None = None,
    seed: int,
    batch_size: int,
    backend: AutoAttackBackend,
    device: torch.device | str | None = None,
    state_path: Path | None = None,
) -> Tensor:
    """Run AutoAttack with a reference implementation; return the detached adversarial inputs.

    A sample that no attack fools is returned unchanged (``x_adv[i] == x[i]``), as the backends do.

    Args:
        model: maps inputs in [0, 1] to logits (B, C); put it in eval mode (the mode is left as is).
        x: clean inputs in [0, 1] (N, ...), on any device.
        y: labels (N,).
        eps: radius of the threat model, pixel space (8/255 for CIFAR L-inf).
        norm: ``"Linf"`` or ``"L2"``.
        version: ``"standard"``, ``"rand"`` or ``"custom"`` (see the module docstring).
        attacks: for ``version="custom"`` only: the attacks to run, in order.
        seed: seed of every attack's randomness.
        batch_size: samples per forward/backward batch.
        backend: ``"pyautoattack"`` (the reference) or ``"torchattacks"``.
        device: where the model lives; default: the device of its first parameter (or of ``x``).
        state_path: pyautoattack only: a JSON file where the evaluation state is kept, so that an
            interrupted run resumes (only the new adversarial examples are returned then).

    Raises:
        AttackError: a parameter outside its allowed values, or the backend is not installed.
    """
    _check_arguments(x, y, eps, norm, version, attacks, seed, batch_size, backend, state_path)
    package = _import_backend(backend)
    seed, batch_size = int(seed), int(batch_size)
    if device is None:
        first_parameter = next(model.parameters(), None)
        device = first_parameter.device if first_parameter is not None else x.device
    device = torch.device(device)
    x = x.detach()
    y = y.detach().long()
    with torch.no_grad():
        n_classes = int(model(x[:1].to(device)).shape[-1])
    if n_classes < 2:
        raise AttackError(f"the model has {n_classes} output(s); AutoAttack needs logits for at least 2 classes.")

    run = _Run(eps=eps, norm=norm, version=version, attacks=attacks, seed=seed, batch_size=batch_size,
               device=device, n_classes=n_classes)
    with _caller_state_preserved(device):
        if backend == "pyautoattack":
            x_adv = _run_pyautoattack(package, model, x, y, run, state_path)
        else:
            x_adv = _run_torchattacks(package, model, x, y, run)
    return x_adv.detach().to(device=x.device, dtype=x.dtype)
