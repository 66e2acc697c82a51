"""Class-wise error risk: the per-class sum of a per-sample loss over an epoch (ABSLD §2)."""

from __future__ import annotations

import torch
from torch import Tensor


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
        self.total.index_add_(0, y, loss)

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
