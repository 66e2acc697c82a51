"""``runtime.compile``: the student through ``torch.compile`` for the training loop.

One compiled module, seen two ways (:func:`compile_student`):

- the **attack** calls it with the student's parameters switched to ``requires_grad=False`` for
  the duration of each forward (:class:`FrozenParameters`; restored in a ``finally``). AOTAutograd
  traces the joint graph with the requires-grad flags it finds, so the attack's backward graph then
  returns the input gradient alone; traced with the parameters requiring grad (as before), every
  attack step also computed every weight gradient, a third of the attack's work thrown away.
  Eager autograd prunes those itself (``torch.autograd.grad`` runs only the nodes its inputs need);
  a compiled backward is one fused graph that cannot be pruned at run time.
- the **loss** calls it with the parameters as they are, so its backward produces the weight
  gradients the optimiser steps on.

Shapes are static (``dynamic=False``): one graph per batch size, no symbolic-shape guards. The
training loader keeps its last partial batch (``drop_last=False``, so that a compiled run trains on
the same images as an eager one); that batch is compiled as its own variant, once per run, and
budgeted below. Every variant is one cache entry of the student's ``forward``:
``VARIANTS_PER_SIZE`` (attack with an input gradient; attack under ``no_grad``, the TRADES-style
clean targets; loss) per batch size a process sees. torch's recompile limit is set to that count
plus ``MARGIN`` and hitting it is an error (:class:`CompileError`), not torch's default of warning
once and running the student eagerly from then on. ``fullgraph=True`` (single process) makes a
graph break an error too, for the same reason: nothing runs eagerly behind the setting's back.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch._dynamo
from torch import nn

from ..errors import UserError

BACKEND: str | object = "inductor"
"""The ``torch.compile`` backend (tests swap in a recording ``aot_autograd`` backend)."""

VARIANTS_PER_SIZE = 3
"""Compiled variants of the student's forward per batch size: the attack with an input gradient
(parameters frozen), the attack under ``no_grad`` (parameters frozen), the loss (parameters
trained). The BatchNorm mode of the attack is one per method (``attack_mode``)."""

MARGIN = 2
"""Cache entries allowed beyond the expected ones before :class:`CompileError`."""


class CompileError(UserError, RuntimeError):
    """``runtime.compile`` would have fallen back to eager execution; the message says why."""


def batch_sizes(n: int, batch_size: int, drop_last: bool, world: int = 1) -> set[int]:
    """The batch sizes one process of ``world`` sees in an epoch of ``n`` samples (the global batch
    is sharded ``rank, rank + world, ...``, :func:`absld.distributed.shard`)."""
    full = {batch_size} if n >= batch_size else set()
    last = n % batch_size
    globals_ = full | ({last} if last and not drop_last else set())
    return {-(-size // world) for size in globals_} | {size // world for size in globals_ if size // world}


def recompile_limit(sizes: set[int]) -> int:
    """The cache entries the student's forward may hold: the expected variants plus :data:`MARGIN`."""
    return VARIANTS_PER_SIZE * max(len(sizes), 1) + MARGIN


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """``module``'s parameters with ``requires_grad=False`` inside; the ones that required grad
    get it back on the way out, whatever happens inside."""
    trained = [p for p in module.parameters() if p.requires_grad]
    for p in trained:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trained:
            p.requires_grad_(True)


class FrozenParameters(nn.Module):
    """``module`` called with its parameters frozen (:func:`frozen`): the graph it builds reaches
    the input and no weight."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with frozen(self.module):
            return self.module(x)


class Budgeted(nn.Module):
    """A compiled ``module`` whose calls run with torch's recompile limit at ``limit`` and hitting
    it an error; ``what`` names the variants expected (for the message)."""

    def __init__(self, module: nn.Module, limit: int, what: str) -> None:
        super().__init__()
        self.module, self.limit, self.what = module, limit, what

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch._dynamo.config.patch(recompile_limit=self.limit, fail_on_recompile_limit_hit=True):
            try:
                return self.module(x)
            except torch._dynamo.exc.FailOnRecompileLimitHit as exc:
                raise CompileError(
                    f"runtime.compile: the student's forward needed more than {self.limit} compiled "
                    f"variants ({self.what}); torch would have run the rest eagerly. A guard changes "
                    "between calls (run with TORCH_LOGS=recompiles to see which), or set "
                    "runtime.compile: false") from exc


def compile_student(model: nn.Module, loss_model: nn.Module | None, sizes: set[int]) -> tuple[nn.Module, nn.Module]:
    """The attack's and the loss's views of ``model`` compiled (module docstring); ``loss_model``:
    its DistributedDataParallel wrapper, if any, compiled for the loss (there without
    ``fullgraph``, as DDP's hooks split its graph); ``sizes``: the batch sizes this process sees."""
    limit = recompile_limit(sizes)
    what = (f"{VARIANTS_PER_SIZE} per batch size {sorted(sizes)}: the attack with an input gradient, "
            f"the attack under no_grad, the loss; plus {MARGIN} spare")
    compiled = torch.compile(model, backend=BACKEND, dynamic=False, fullgraph=True)
    attack = Budgeted(FrozenParameters(compiled), limit, what)
    if loss_model is None:
        loss = Budgeted(compiled, limit, what)
    else:
        loss = Budgeted(torch.compile(loss_model, backend=BACKEND, dynamic=False), limit, what)
    return attack, loss
