"""Class-wise error risk: the per-class sum of a per-sample loss over an epoch (ABSLD §2)."""

from __future__ import annotations

import torch
from torch import Tensor


def class_sums(values: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """``out[k] = sum_{i : y_i = k} values[i]``: (C,) for values (B,), (C, K) for values (B, K).

    In the values' dtype and bit-reproducible on every device: a one-hot mask times the values,
    summed over the batch by one reduction, where ``index_add_`` adds with atomics on CUDA (its
    order, and so its last bits, change from run to run). No host sync, no matmul (which TF32 or
    an enclosing autocast would round)."""
    hot = (y[:, None] == torch.arange(num_classes, device=y.device)).to(values.dtype)  # (B, C)
    if values.dim() == 1:
        return (hot * values[:, None]).sum(0)
    return (hot[:, :, None] * values[:, None, :]).sum(0)


class ClassRisk:
    """``R[k] = sum_{i in epoch, y_i = k} loss_i`` (no grad), reset each epoch."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.total: Tensor | None = None  # (C,), created on the first batch's device

    def add(self, per_sample_loss: Tensor, y: Tensor) -> None:
        loss = per_sample_loss.detach().float()  # (B,)
        if self.total is None:
            self.total = torch.zeros(self.num_classes, device=loss.device)
        elif self.total.device != loss.device:
            self.total = self.total.to(loss.device)
        self.total += class_sums(loss, y, self.num_classes)

    def value(self) -> Tensor:
        """The sums so far; under data-parallel training, over every process's share (a collective:
        every process calls it at the same point, the end of the epoch)."""
        from ..distributed import all_reduce_sum

        return all_reduce_sum(self.total if self.total is not None else torch.zeros(self.num_classes))

    def reset(self) -> None:
        self.total = None

    def state_dict(self) -> dict:
        return {"total": None if self.total is None else self.total.detach().cpu()}

    def load_state_dict(self, state: dict, device: torch.device | None = None) -> None:
        total = state.get("total")
        self.total = None if total is None else total.to(device or total.device)
