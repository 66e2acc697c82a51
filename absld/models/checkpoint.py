"""Checkpoints (contract, see :mod:`absld.models`): :func:`save_checkpoint` writes the plain dict,
:func:`load_checkpoint` reads it back with ``torch.load(..., weights_only=True)`` into an eval-mode
model on the CPU, :func:`load_weights` loads foreign state dicts (TRADES, RobustBench)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from absld.io import write_torch
from absld.models.common import ImageClassifier, ModelError
from absld.models.registry import MODELS, _allowed_names, build_model, unwrap_model

# Keys save_checkpoint writes itself; meta may not override them.
_RESERVED_KEYS = ("arch", "num_classes", "in_channels", "mean", "std", "state_dict")
_REQUIRED_KEYS = ("arch", "num_classes", "state_dict")
# Prefixes added by nn.DataParallel / DistributedDataParallel and by torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _check_plain(value: Any, where: str) -> None:
    """Raise ModelError unless ``value`` survives ``torch.load(weights_only=True)``.

    Exact types are required: e.g. ``numpy.float64`` subclasses ``float`` but is pickled as
    a numpy object, which the weights-only unpickler refuses.
    """
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, Tensor):
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise ModelError(
                    f"checkpoint meta {where} has a key of type {type(key).__name__}; "
                    f"use str or int keys"
                )
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise ModelError(
        f"checkpoint meta {where} is a {type(value).__module__}.{type(value).__qualname__}, "
        f"which torch.load(weights_only=True) cannot read; store str/int/float/bool/None, "
        f"tensors, or lists/dicts of them (numpy: .tolist() or .item())"
    )


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, **meta: Any) -> Path:
    """Write ``model`` (and ``meta``) as a checkpoint at ``path``, atomically.

    Wrappers (DataParallel, DDP, torch.compile) are unwrapped; tensors are saved on the CPU
    in contiguous format; parent directories are created.

    Args:
        path: destination file.
        model: a registered model (built by :func:`build_model` or a registry constructor).
        **meta: extra entries (e.g. ``epoch=3``, ``method="absld"``): str/int/float/bool/None,
            tensors, and lists/tuples/dicts of those, so the file loads with weights_only=True.

    Returns:
        The path written.

    Raises:
        ModelError: for a model not from the registry, a meta key that clashes with a
            reserved key, or a meta value of another type.
    """
    model = unwrap_model(model)
    if not isinstance(model, ImageClassifier) or model.arch not in MODELS:
        name = getattr(model, "arch", type(model).__name__)
        raise ModelError(
            f"cannot checkpoint {name!r}: only registered models can be rebuilt "
            f"({_allowed_names()})"
        )
    clashes = sorted(set(meta) & set(_RESERVED_KEYS))
    if clashes:
        raise ModelError(f"checkpoint meta may not override reserved key(s): {', '.join(clashes)}")
    for key, value in meta.items():
        _check_plain(value, repr(key))
    checkpoint: dict[str, Any] = {
        "arch": model.arch,
        "num_classes": model.num_classes,
        "in_channels": model.in_channels,
        "mean": None if model.mean is None else list(model.mean),
        "std": None if model.std is None else list(model.std),
        "state_dict": {
            key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()
        },
        **meta,
    }
    destination = Path(path)
    write_torch(destination, checkpoint)
    return destination


def _strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop ``module.`` / ``_orig_mod.`` prefixes that every key carries."""
    state = dict(state_dict)
    while state:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {key[len(prefix) :]: value for key, value in state.items()}
    return state


def _examples(keys: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_weights(
    model: nn.Module, state_dict: Mapping[str, Any], *, source: str = "state_dict"
) -> nn.Module:
    """Load ``state_dict`` into ``model`` strictly, tolerating what old or wrapped files do.

    - keys prefixed by ``module.`` (DataParallel/DDP) or ``_orig_mod.`` (torch.compile) are
      stripped;
    - missing BatchNorm ``num_batches_tracked`` counters (checkpoints from PyTorch < 0.4.1)
      are filled with 0; they only matter for BatchNorm with ``momentum=None``.

    Anything else that does not match (missing or unexpected keys, wrong shapes) raises.

    Args:
        model: the module to fill (modified in place).
        state_dict: parameter and buffer tensors by name.
        source: how to name the weights in error messages (e.g. the file path).

    Returns:
        ``model``.

    Raises:
        ModelError: when the weights do not fit the model.
    """
    arch = getattr(model, "arch", type(model).__name__)
    state = _strip_wrapper_prefixes(state_dict)
    expected = model.state_dict()
    for key in expected:
        if key not in state and key.rsplit(".", 1)[-1] == "num_batches_tracked":
            state[key] = torch.zeros((), dtype=torch.long)
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    not_tensors = [key for key in expected if key in state and not isinstance(state[key], Tensor)]
    wrong_shape = [
        f"{key} {tuple(state[key].shape)} != {tuple(expected[key].shape)}"
        for key in expected
        if key in state and key not in not_tensors and state[key].shape != expected[key].shape
    ]
    problems = [
        f"{label}: {_examples(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("non-tensor values", not_tensors),
            ("wrong shapes", wrong_shape),
        )
        if keys
    ]
    if problems:
        raise ModelError(f"{source} does not fit {arch}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint dict with weights_only=True and check it has the required keys."""
    location = Path(path)
    if not location.is_file():
        raise ModelError(f"checkpoint not found: {location}")
    try:
        checkpoint = torch.load(location, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, zip and weights-only errors alike
        raise ModelError(f"cannot read checkpoint {location}: {_first_line(exc)}") from exc
    if not isinstance(checkpoint, dict):
        raise ModelError(
            f"{location} is not a checkpoint: expected a dict with keys "
            f"{', '.join(_REQUIRED_KEYS)}, got {type(checkpoint).__name__}"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in checkpoint]
    if missing:
        bare = bool(checkpoint) and all(isinstance(v, Tensor) for v in checkpoint.values())
        hint = (
            " (it looks like a bare state_dict: use load_weights(build_model(...), state_dict))"
            if bare
            else ""
        )
        raise ModelError(f"checkpoint {location} lacks key(s): {', '.join(missing)}{hint}")
    return checkpoint


def load_checkpoint(path: str | os.PathLike[str]) -> ImageClassifier:
    """Rebuild a model from a checkpoint: **contract**.

    Loads with ``torch.load(path, map_location="cpu", weights_only=True)``, builds
    ``checkpoint["arch"]`` from the registry and loads the weights strictly (see
    :func:`load_weights` for the tolerated differences).

    Returns:
        The model, in eval mode, on the CPU.

    Raises:
        ModelError: for a missing or unreadable file, a file that is not a checkpoint dict,
            missing keys, an unknown architecture, or weights that do not fit it.
    """
    checkpoint = _read_checkpoint(path)
    if not isinstance(checkpoint["state_dict"], Mapping):
        kind = type(checkpoint["state_dict"]).__name__
        raise ModelError(f"checkpoint {path}: 'state_dict' is a {kind}, not a dict")
    try:
        model = build_model(
            checkpoint["arch"],
            num_classes=checkpoint["num_classes"],
            in_channels=checkpoint.get("in_channels", 3),
            mean=checkpoint.get("mean"),
            std=checkpoint.get("std"),
        )
    except ModelError as exc:
        raise ModelError(f"checkpoint {path}: {exc}") from None
    load_weights(model, checkpoint["state_dict"], source=f"checkpoint {path}")
    return model.cpu().eval()


def check_fits(model: ImageClassifier, *, num_classes: int, in_channels: int, image_shape: Sequence[int],
               what: str, dataset: str, fix: str) -> None:
    """Refuse ``model`` (loaded from ``what``) for data of ``dataset`` whose images it cannot take or
    whose classes it does not predict: one line naming both shapes and ``fix``. Every registered
    architecture pools globally or adaptively before its classifier, so any image size fits; the
    channels and the class count must match.

    Raises:
        ModelError: when the input channels or the number of classes differ.
    """
    size = "x".join(str(int(n)) for n in image_shape[1:])
    problems = []
    if model.in_channels != in_channels:
        problems.append(f"takes {model.in_channels}-channel images but {dataset}'s are {in_channels}-channel "
                        f"({in_channels}x{size})")
    if model.num_classes != num_classes:
        problems.append(f"predicts {model.num_classes} classes but {dataset} has {num_classes}")
    if problems:
        raise ModelError(f"{what} ({model.arch}) {' and '.join(problems)}; {fix}")


def checkpoint_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything in a checkpoint but its ``state_dict`` (arch, num_classes, ..., meta).

    Raises:
        ModelError: as :func:`load_checkpoint` for unreadable or malformed files.
    """
    checkpoint = _read_checkpoint(path)
    return {key: value for key, value in checkpoint.items() if key != "state_dict"}
