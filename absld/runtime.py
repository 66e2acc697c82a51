"""Device, precision and seeding: the few lines every stage needs the same way."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import ContextManager

import numpy as np
import torch

from .params import RuntimeConfig
from .errors import UserError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp: bool  # bf16 autocast active (CUDA: runtime.amp; CPU: runtime.cpu_bf16)
    channels_last: bool
    progress: bool
    nan_policy: str = "stop"  # runtime.nan_policy: stop | skip_batch
    compile: bool = False  # runtime.compile: torch.compile the trained model
    rank: int = 0  # data-parallel training (runtime.distributed under torchrun): this process
    world: int = 1  # and how many there are

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and logs (rank 0)."""
        return self.rank == 0

    def autocast(self) -> ContextManager:
        """bf16 autocast on the runtime's device when enabled; a no-op otherwise (fp32)."""
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def precision(self, bf16: bool) -> ContextManager:
        """``autocast()`` when ``bf16`` (and the runtime has it), else float32 *explicitly*: an
        enclosing autocast (the training step's) is switched off inside."""
        if bf16 and self.amp:
            return self.autocast()
        return torch.autocast(device_type=self.device.type, enabled=False)

    def resolved(self) -> dict[str, object]:
        """What the runtime settings came to on this machine (``runtime.cpu_bf16: auto`` included),
        for a stage's W&B config."""
        return {"device": str(self.device), "bf16_autocast": self.amp, "channels_last": self.channels_last,
                "compile": self.compile, "world": self.world}

    def to_device(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model


class AtPrecision(torch.nn.Module):
    """``module`` run at one precision wherever it is called: ``rt.precision(bf16)`` around its
    forward, float32 logits out. The distill stage wraps the teacher in it, so that its soft labels
    on clean inputs and its passes on attacked ones (AdaAD, IAD) have the same numerics
    (``distill.teacher_amp``)."""

    def __init__(self, module: torch.nn.Module, rt: Runtime, bf16: bool) -> None:
        super().__init__()
        self.module, self.rt, self.bf16 = module, rt, bf16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.rt.precision(self.bf16):
            return self.module(x).float()


def progress_enabled() -> bool:
    """Progress bars unless ``TQDM_DISABLE`` (tqdm's own switch) is set to a true value."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in ("", "0", "false", "no", "off")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively: AVX512-BF16 or AMX-BF16, as torch's own CPU
    feature detection reports them (``torch.cpu.get_capabilities()``)."""
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def resolve_cpu_bf16(value: bool | str) -> bool:
    """``runtime.cpu_bf16`` for this machine: ``auto`` is :func:`cpu_has_native_bf16`."""
    return cpu_has_native_bf16() if value == "auto" else bool(value)


class DeviceError(UserError, RuntimeError):
    """The requested device cannot be used."""


def setup(cfg: RuntimeConfig) -> Runtime:
    """Resolve ``runtime.device`` and apply the determinism settings (torch's CPU threads follow
    ``OMP_NUM_THREADS``; progress bars follow ``TQDM_DISABLE``: neither can change a result)."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            "runtime.device is 'cuda' but no CUDA device is available; set runtime.device: auto or cpu"
        )
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    rank, world = 0, 1
    if cfg.distributed:
        from . import distributed

        device = distributed.local_device(device.type)
        if use_cuda:
            torch.cuda.set_device(device)
        rank, world = distributed.init(device.type)
    cpu_bf16 = False if use_cuda else resolve_cpu_bf16(cfg.cpu_bf16)
    if use_cuda:
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cudnn.deterministic = cfg.deterministic
        torch.backends.cuda.matmul.allow_tf32 = not cfg.deterministic
        torch.backends.cudnn.allow_tf32 = not cfg.deterministic
    return Runtime(
        device=device,
        amp=bool(cfg.amp) if use_cuda else cpu_bf16,
        channels_last=bool(cfg.channels_last) if use_cuda else cpu_bf16,
        progress=progress_enabled(),
        nan_policy=cfg.nan_policy,
        compile=cfg.compile,
        rank=rank,
        world=world,
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG state the training loop depends on, as tensors (``weights_only``-loadable)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
