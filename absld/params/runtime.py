"""``runtime``: device, precision and determinism."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator

from .common import Device, Section


def _parse_cpu_bf16(value: Any) -> Any:
    """true, false or auto (YAML's booleans, or their words as strings); anything else is refused
    with the three allowed values named."""
    if isinstance(value, bool) or value == "auto":
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "auto"):
        word = value.strip().lower()
        return "auto" if word == "auto" else word == "true"
    raise ValueError(f"{value!r} is not allowed; write true, false or auto")


CpuBf16 = Annotated[bool | Literal["auto"], BeforeValidator(_parse_cpu_bf16)]


class RuntimeConfig(Section):
    device: Device = "auto"
    amp: bool = True
    """bf16 autocast for forward passes on CUDA (on the CPU: cpu_bf16)."""
    channels_last: bool = True
    """channels_last memory format on CUDA (on the CPU: cpu_bf16)."""
    cpu_bf16: CpuBf16 = False
    """On the CPU: bf16 autocast for forward passes and channels_last, as amp and channels_last do
    on CUDA. 1.9-2.4x faster training steps for the small CNNs on a CPU with native bf16
    (AVX512-BF16/AMX; `absld bench`); it changes the numerics, so off unless a profile asks.
    `auto`: on where the CPU has native bf16 units (torch.cpu.get_capabilities() reports
    avx512_bf16 or amx_bf16), float32 elsewhere (where emulated bf16 would be slower); the stages'
    W&B config records what it resolved to (runtime_resolved)."""
    deterministic: bool = False
    """On CUDA: deterministic cuDNN algorithms (slower). The CPU is always deterministic."""
    compile: bool = False
    """torch.compile the student for training (absld/train/compiled.py): its attack runs with the
    weights frozen, so the compiled backward computes the input gradient alone (a third fewer FLOPs
    per attack step than compiling it with the weights' gradients), and its loss with them. Static
    shapes: one graph per batch size (a last partial batch is its own), at most 3 variants each;
    more is an error, never a silent fall-back to eager. A minute or more of compiling first (on the
    CPU, a C++ compiler); numerics differ from eager in the last bits. Not measured on a GPU yet."""
    distributed: bool = False
    """Data-parallel training when the stage is started by torchrun (`torchrun --nproc_per_node N
    -m pipeline.cli distill ...`): one process per device, each on its share of every batch,
    gradients averaged by DistributedDataParallel (absld/distributed.py); alone, one process."""
    nan_policy: Literal["stop", "skip_batch"] = "stop"
    """A NaN/inf training loss: stop (name the epoch, batch and method; the last finished epoch's
    checkpoint is kept) or skip_batch (no update from that batch; counted in the training log)."""
