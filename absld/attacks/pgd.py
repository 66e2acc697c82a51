r"""Projected gradient descent (ascent) in the L-inf ball: the one engine every attack reuses.

Paper: Madry et al., *Towards Deep Learning Models Resistant to Adversarial Attacks*, ICLR 2018
(arXiv 1706.06083).

Threat model: white-box, untargeted, L-inf, ``|x' - x|_inf <= eps`` and ``x' in [0, 1]``; ``eps``
and ``step`` are in pixel space (inputs in [0, 1], the model normalises internally).

Semantics (torchattacks style)::

    x'_0 = start(x)                                   # see below
    repeat steps:
        g    = d/dx' sum_i loss_fn(model(x'))_i       # each sample's gradient is its own
        x'   = clamp_[0,1]( project_{|x'-x|_inf <= eps}( x' + step * sign(g) ) )

Start rules:

- ``"uniform"``: ``x + U(-eps, eps)``, clamped to [0, 1] (Madry PGD-AT, the PGD-20 evaluation, ARD;
  torchattacks' ``PGD``; the TRADES-style ``_pgd_whitebox`` evaluation code skips this clamp, which
  only changes where the first gradient is taken for pixels within eps of 0 or 1);
- ``"gaussian"``: ``x + gauss_std * N(0, I)`` *without* clamping or projecting, as the official
  TRADES/RSLAD/ABSLD code does; the first step projects and clamps;
- ``"none"``: ``x`` itself.

The engine only computes ``torch.autograd.grad`` with respect to ``x'``: the model's parameters
keep their ``.grad`` untouched. It never calls ``model.train()``/``model.eval()``: the caller
chooses the mode (the distillation methods attack the student in eval mode, as the official code).
It runs with gradients enabled even inside a caller's ``torch.no_grad()``, works under an
enclosing ``torch.autocast`` (the loss is computed in float32) and with channels_last inputs.
Random starts draw from the global torch RNG (the training loop saves/restores it for exact resume;
in a data-parallel step, the whole global batch's draw, each process keeping its rows:
:func:`absld.distributed.draw_rows`), unless the caller passes ``noise``: standard draws of x's shape, U(-1, 1) for ``"uniform"``
(start ``clamp(x + eps * noise)``) and N(0, 1) for ``"gaussian"`` (start ``x + gauss_std * noise``).
The evaluation draws them per sample from a seeded generator, so that a sample's start does not
depend on the batch it lands in.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Literal, get_args

import torch
from torch import Tensor, nn

from absld.attacks.errors import AttackError
from absld.attacks.losses import LossFn
from absld.distributed import draw_rows

__all__ = ["Start", "pgd", "project_linf"]

Start = Literal["uniform", "gaussian", "none"]
"""How PGD picks its first point; see the module docstring."""


def _check_budget(eps: float | Tensor, step: float | Tensor, steps: int) -> None:
    """Reject budgets that are not numbers of the right sign, with a hint for a usual slip."""
    if isinstance(eps, Tensor):
        _check_sample_eps(eps)
    elif not (isinstance(eps, numbers.Real) and math.isfinite(eps) and eps >= 0):
        raise AttackError(f"eps={eps!r} must be a finite number >= 0 in pixel space (e.g. 8/255).")
    if not isinstance(eps, Tensor) and eps > 1:
        raise AttackError(
            f"eps={eps!r} is larger than the [0, 1] pixel range; write it as a fraction of 255 (8/255, not 8)."
        )
    if isinstance(step, Tensor):
        _check_sample_eps(step, "step")
    elif not (isinstance(step, numbers.Real) and math.isfinite(step) and step >= 0):
        raise AttackError(f"step={step!r} must be a finite number >= 0 in pixel space (e.g. 2/255).")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise AttackError(f"steps={steps!r} must be an integer >= 0.")


def _check_sample_eps(eps: Tensor, name: str = "eps") -> None:
    """A per-sample radius (or step): a 1-D float tensor (checked on the host: shape and dtype) of
    finite values in [0, 1] (checked on the device, without waiting for it: a per-sample radius
    comes from a method's class-wise state in every training step, and reading its values on the
    host would stall the GPU once per step. On the CPU a bad value raises here; on CUDA it fails
    the step with the same message at the next synchronisation)."""
    if eps.dim() != 1 or not eps.is_floating_point():
        raise AttackError(f"a per-sample {name} must be a 1-D float tensor (B,); got shape {tuple(eps.shape)}, "
                          f"dtype {eps.dtype}.")
    _assert_on_device(torch.isfinite(eps).all() & (eps >= 0).all(),
                      f"per-sample {name} must be finite and >= 0 in pixel space.")
    _assert_on_device((eps <= 1).all(), f"per-sample {name} larger than 1 is outside the [0, 1] pixel range; "
                                        "write it as a fraction of 255.")


def _assert_on_device(condition: Tensor, message: str) -> None:
    """Fail with ``message`` unless ``condition`` (a 0-d bool tensor) holds, without a host sync:
    ``torch._assert_async`` (an :class:`AttackError` on the CPU, where it is checked at once)."""
    if condition.device.type != "cpu":
        torch._assert_async(condition, message)
        return
    try:
        torch._assert_async(condition, message)
    except RuntimeError:
        raise AttackError(message) from None


def _radius(eps: float | Tensor, x: Tensor, name: str = "eps") -> float | Tensor:
    """``eps`` (or a step) broadcastable against ``x``: a float as is, a per-sample (B,) tensor as
    (B, 1, ..., 1)."""
    if not isinstance(eps, Tensor):
        return eps
    if eps.shape != (x.shape[0],):
        what = "radius" if name == "eps" else name
        raise AttackError(f"a per-sample {name} must have one {what} per sample, shape ({x.shape[0]},); "
                          f"got {tuple(eps.shape)}.")
    return eps.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


def _feasible_box(x: Tensor, eps: float | Tensor) -> tuple[Tensor, Tensor]:
    """Elementwise bounds of ``{x' : |x' - x|_inf <= eps} ∩ [0, 1]^d``: ``max(x - eps, 0)`` and
    ``min(x + eps, 1)``. Clamping to them equals projecting onto the eps-ball and then clamping to
    [0, 1] (the two boxes always meet when ``x`` is in [0, 1])."""
    return torch.clamp(x - eps, min=0.0), torch.clamp(x + eps, max=1.0)


def project_linf(x_adv: Tensor, x: Tensor, eps: float | Tensor) -> Tensor:
    """Project ``x_adv`` onto ``{x' : |x' - x|_inf <= eps} ∩ [0, 1]^d`` (elementwise, exact;
    ``eps`` a float or one radius per sample)."""
    lower, upper = _feasible_box(x, _radius(eps, x))
    return torch.clamp(x_adv, lower, upper)


def _start_point(x: Tensor, eps: float | Tensor, start: Start, gauss_std: float, noise: Tensor | None) -> Tensor:
    """The first point; noise not given is drawn from the global RNG for the whole global batch of a
    data-parallel step, this process keeping its rows (:func:`absld.distributed.draw_rows`)."""
    if start == "uniform":
        if noise is None and isinstance(eps, Tensor):  # per-sample radius: U(-1, 1) scaled per sample
            noise = draw_rows(x, lambda like: torch.empty_like(like).uniform_(-1.0, 1.0))
        if noise is None:
            offset = draw_rows(x, lambda like: torch.empty_like(like).uniform_(-eps, eps))
        else:
            offset = eps * noise
        return torch.clamp(x + offset, 0.0, 1.0)
    if start == "gaussian":
        unit = draw_rows(x, torch.randn_like) if noise is None else noise
        return x + gauss_std * unit
    return x.clone()


def _check_noise(noise: Tensor, x: Tensor, start: Start) -> Tensor:
    """``noise`` as x's device and dtype; it must have x's shape and a random start to feed."""
    if start == "none":
        raise AttackError('noise is only used by a random start; pass start="uniform" or "gaussian".')
    if noise.shape != x.shape:
        raise AttackError(f"noise must have the shape of x, {tuple(x.shape)}; got {tuple(noise.shape)}.")
    return noise.detach().to(device=x.device, dtype=x.dtype)


def pgd(
    model: nn.Module,
    x: Tensor,
    loss_fn: LossFn,
    *,
    eps: float | Tensor,
    step: float | Tensor,
    steps: int,
    start: Start,
    gauss_std: float = 0.001,
    on_logits: Callable[[Tensor], None] | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Maximise ``loss_fn(model(x'))`` over the L-inf ball of radius ``eps`` around ``x``.

    Args:
        model: maps inputs in [0, 1] (B, ...) to logits (B, C); its train/eval mode is left as is.
        x: clean inputs in [0, 1], any shape (B, ...), any memory format.
        loss_fn: ``logits (B, C) -> (B,)`` per-sample loss to maximise (see :mod:`absld.attacks.losses`).
        eps: radius of the L-inf ball, pixel space (8/255 in the papers); or a (B,) tensor, one
            radius per sample (FRL's remargin and CFA's class-wise radii, indexed by the true label).
        step: size of each signed-gradient step, pixel space (2/255 in the papers); or a (B,)
            tensor, one step per sample (DAFA's and TRIX's class-wise steps, step x w_{y_i}).
        steps: number of steps (0 returns the projected start point).
        start: ``"uniform"``, ``"gaussian"`` or ``"none"`` (see the module docstring).
        gauss_std: standard deviation of the ``"gaussian"`` start (0.001 in the official code).
        on_logits: called with the (detached) logits of every step's x' before its update, e.g.
            to count how many steps a sample stays correctly classified (Fair-ARD's kappa).
        noise: standard draws with x's shape to use instead of the global RNG: U(-1, 1) for the
            ``"uniform"`` start (``x + eps * noise``, clamped), N(0, 1) for ``"gaussian"``
            (``x + gauss_std * noise``); None draws them from the global RNG.

    Returns:
        The detached adversarial inputs, same shape, dtype and device as ``x``.
    """
    _check_budget(eps, step, steps)
    if start not in get_args(Start):
        raise AttackError(f"start={start!r} is not a PGD start rule; use one of {list(get_args(Start))}.")
    if not (math.isfinite(gauss_std) and gauss_std >= 0):
        raise AttackError(f"gauss_std={gauss_std!r} must be a finite number >= 0 (the official code uses 0.001).")

    if torch.is_inference_mode_enabled():
        raise AttackError("pgd needs autograd: call it outside torch.inference_mode() (torch.no_grad() is fine).")

    x = x.detach()
    if noise is not None:
        noise = _check_noise(noise, x, start)
    radius = _radius(eps, x)
    step_size = _radius(step, x, "step")
    lower, upper = _feasible_box(x, radius)  # computed once, used by every step
    x_adv = _start_point(x, radius, start, gauss_std, noise).detach()
    if steps == 0:
        return torch.clamp(x_adv, lower, upper)

    with torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)  # (B, C), possibly bf16 under autocast
            if on_logits is not None:
                on_logits(logits.detach())
            loss = loss_fn(logits.float())  # (B,)
            if loss.shape != (x.shape[0],):
                raise AttackError(
                    f"loss_fn must return one loss per sample, shape ({x.shape[0]},); got {tuple(loss.shape)}."
                )
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
            x_adv = torch.clamp(x_adv.detach() + step_size * grad.sign(), lower, upper)
    return x_adv
