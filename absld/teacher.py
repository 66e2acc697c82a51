"""Getting a teacher from elsewhere: a checkpoint file or URL (sha256-checked) or RobustBench.

The imported weights are always loaded into this project's own architecture (strictly, every
key), so an imported teacher behaves exactly like a trained one downstream. Files are loaded with
``torch.load(..., weights_only=True)``: a checkpoint can never run code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .io import atomic_path, sha256_file
from .models import ModelError, build_model, load_weights
from .errors import UserError


class TeacherImportError(UserError, RuntimeError):
    """The teacher cannot be imported; the message says why and what to do."""


def _state_dict_from(obj: object, source: str) -> dict:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TeacherImportError(f"{source}: not a state_dict (a mapping of names to tensors)")
    return obj


def load_into(arch: str, state_dict: dict, *, num_classes: int, in_channels: int,
              mean: list[float] | None, std: list[float] | None, source: str) -> nn.Module:
    model = build_model(arch, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)
    try:
        load_weights(model, state_dict, source=source)
    except ModelError as exc:
        raise TeacherImportError(f"{exc}; set teacher.model.arch to the checkpoint's architecture") from None
    return model.eval()


def fetch(url: str, directory: Path) -> Path:
    """Download ``url`` into ``directory`` (atomically) unless it is already there."""
    target = directory / Path(url.split("?")[0]).name
    if target.is_file():
        return target
    try:
        with atomic_path(target) as tmp:
            torch.hub.download_url_to_file(url, str(tmp), progress=True)
    except Exception as exc:
        raise TeacherImportError(
            f"cannot download {url} ({exc.__class__.__name__}: {exc}); download it by hand and set "
            "teacher.path to the file instead of teacher.url"
        ) from None
    return target


def check_sha256(path: Path, expected: str) -> str:
    got = sha256_file(path)
    if got != expected.lower():
        raise TeacherImportError(
            f"{path}: sha256 {got} does not match teacher.sha256 {expected}; the file is not the "
            "expected checkpoint (a broken download or other weights). Delete it and fetch it "
            "again, or correct teacher.sha256 if you meant to use these weights"
        )
    return got


def import_file(path: Path, sha256: str, *, arch: str, num_classes: int, in_channels: int,
                mean: list[float] | None, std: list[float] | None) -> tuple[nn.Module, str]:
    """Verify ``path``'s sha256, then load its weights into ``arch``."""
    if not path.is_file():
        raise TeacherImportError(f"teacher.path {str(path)!r} does not exist")
    digest = check_sha256(path, sha256)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TeacherImportError(f"{path}: cannot be read as a weights-only checkpoint ({exc})") from None
    state = _state_dict_from(obj, str(path))
    return load_into(arch, state, num_classes=num_classes, in_channels=in_channels, mean=mean,
                     std=std, source=str(path)), digest


ROBUSTBENCH_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100"}


def import_robustbench(model_id: str, dataset: str, *, arch: str, num_classes: int,
                       in_channels: int, model_dir: Path) -> tuple[nn.Module, str]:
    """Load RobustBench's ``model_id`` (L-inf) and copy its weights into ``arch``."""
    if dataset not in ROBUSTBENCH_DATASETS:
        raise TeacherImportError(
            f"RobustBench has no L-inf models for dataset {dataset!r}; use teacher.source train or file"
        )
    try:
        from robustbench.utils import load_model
    except ImportError:
        raise TeacherImportError(
            "teacher.source robustbench needs the robustbench package: "
            "pip install -e '.[robustbench]' (or set teacher.source: train | file)"
        ) from None
    try:
        rb_model = load_model(model_name=model_id, dataset=dataset, threat_model="Linf",
                              model_dir=str(model_dir))
    except Exception as exc:
        raise TeacherImportError(
            f"RobustBench could not load {model_id!r} ({exc.__class__.__name__}: {exc}); check the id "
            "and the network, or download the weights by hand and use teacher.source: file"
        ) from None
    files = sorted(model_dir.rglob(f"{model_id}.pt"))
    digest = sha256_file(files[0]) if files else "unknown"
    model = load_into(arch, rb_model.state_dict(), num_classes=num_classes, in_channels=in_channels,
                      mean=None, std=None, source=f"robustbench:{model_id}")
    return model, digest
