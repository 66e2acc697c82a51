"""``runtime``: device, precision and determinism."""

from __future__ import annotations

from typing import Literal


from .common import Device, Section


class RuntimeConfig(Section):
    device: Device = "auto"
    amp: bool = True
    """bf16 autocast for forward passes on CUDA (on the CPU: cpu_bf16)."""
    channels_last: bool = True
    """channels_last memory format on CUDA (on the CPU: cpu_bf16)."""
    cpu_bf16: bool = False
    """On the CPU: bf16 autocast for forward passes and channels_last, as amp and channels_last do
    on CUDA. 1.9-2.4x faster training steps for the small CNNs on a CPU with native bf16
    (AVX512-BF16/AMX; `absld bench`); it changes the numerics, so off unless a profile asks."""
    deterministic: bool = False
    """On CUDA: deterministic cuDNN algorithms (slower). The CPU is always deterministic."""
    compile: bool = False
    """torch.compile the student for training (its attack and its loss): faster steps on a GPU once
    compiled, a minute or more of compiling first (and on the CPU, a C++ compiler); numerics differ from
    eager in the last bits."""
    distributed: bool = False
    """Data-parallel training when the stage is started by torchrun (`torchrun --nproc_per_node N
    -m pipeline.cli distill ...`): one process per device, each on its share of every batch,
    gradients averaged by DistributedDataParallel (absld/distributed.py); alone, one process."""
    nan_policy: Literal["stop", "skip_batch"] = "stop"
    """A NaN/inf training loss: stop (name the epoch, batch and method; the last finished epoch's
    checkpoint is kept) or skip_batch (no update from that batch; counted in the training log)."""
