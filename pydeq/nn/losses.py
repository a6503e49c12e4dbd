"""Fixed-point correction loss (Bai, Koltun & Kolter 2022, "Deep equilibrium optical flow estimation").

The task loss is applied not only at ``z*`` but at intermediate solver states ``z_i``, each pushed through a few
damped steps of f with ordinary back-propagation (a phantom gradient, Geng et al. 2021), and weighted so that
later states count more:

    L_corr = sum_i gamma^(n - 1 - i) L(phi(z_i)) / sum_i gamma^(n - 1 - i),
    phi(z) = z_k,  z_{j+1} = (1 - tau) z_j + tau f(z_j, x),  z_0 = sg(z)

It trains f so that the states a solver visits already lead towards the target, which stabilises training and
shortens solves. The states come from :func:`solver_states` (damped iterations re-run from the solve's starting
point, since the driver keeps residual norms only) or from anywhere else the caller has them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._checks import check_fraction, check_int, check_positive
from .deq import DEQ

__all__ = ["correction_loss", "solver_states", "deq_correction_loss"]


def solver_states(f: Callable[[Tensor, Any], Tensor], x: Any, start: Tensor, *, count: int = 3, every: int = 2,
                  damping: float = 1.0) -> list[Tensor]:
    """``count`` detached states of the damped iteration ``z <- (1 - damping) z + damping f(z, x)`` from ``start``.

    States ``every``, ``2 every``, ... steps in are kept; costs ``count * every`` calls of f (no graph kept).

    Args:
        f: the DEQ's map, called ``f(z, x)``.
        x: the injected input.
        start: ``(batch, *state)``, usually the solve's initial state (``solution.extras["z0"]``).

    Returns:
        A list of ``count`` tensors of shape ``(batch, *state)``, earliest first.
    """
    check_int("count", count)
    check_int("every", every)
    check_fraction("damping", damping)
    states, z = [], start.detach()
    with torch.no_grad():
        for _ in range(count):
            for _ in range(every):
                z = z + damping * (f(z, x) - z)
            states.append(z)
    return states


def correction_loss(f: Callable[[Tensor, Any], Tensor], x: Any, states: Sequence[Tensor],
                    loss_fn: Callable[[Tensor], Tensor], *, gamma: float = 0.8, steps: int = 1,
                    damping: float = 1.0) -> Tensor:
    """Weighted task loss over solver states, each differentiated through ``steps`` damped steps of f.

    Args:
        f: the DEQ's map, called ``f(z, x)``; gradients reach its parameters and x.
        x: the injected input.
        states: ``(batch, *state)`` tensors, earliest first (detached here: gradients start at the phantom steps).
        loss_fn: task loss of a state, ``(batch, *state) -> ()`` (e.g. ``lambda z: ce(head(z), y)``).
        gamma: in (0, 1]; state ``i`` of ``n`` is weighted ``gamma^(n - 1 - i)`` (later states count more).
        steps: phantom steps per state (one f call and one VJP each).
        damping: ``tau`` of the phantom steps, in (0, 1].

    Returns:
        A scalar: the normalised weighted mean of the per-state losses.
    """
    if len(states) == 0:
        raise ValueError("correction_loss needs at least one state; get some with solver_states(...).")
    check_fraction("gamma", gamma)
    check_int("steps", steps)
    check_fraction("damping", damping)
    n = len(states)
    weights = [gamma ** (n - 1 - i) for i in range(n)]
    total = None
    for w, state in zip(weights, states, strict=True):
        z = state.detach()
        for _ in range(steps):
            z = z + damping * (f(z, x) - z) if damping != 1.0 else f(z, x)
        term = w * loss_fn(z)
        total = term if total is None else total + term
    return total / sum(weights)


def deq_correction_loss(deq: DEQ, loss_fn: Callable[[Tensor], Tensor], *, count: int = 3, every: int = 2,
                        gamma: float = 0.8, steps: int = 1, damping: float = 1.0, weight: float = 1.0) -> Tensor:
    """:func:`correction_loss` for the last call of ``deq``: states re-run from that call's initial state.

    Call it after ``deq(x)`` in the same training step (and inside the same normalisation/dropout step, so f is
    the map that was solved).

    Returns:
        ``weight * correction_loss(...)``, a scalar.
    """
    check_positive("weight", weight, allow_zero=True)
    solution = deq.last_solution
    if solution is None:
        raise RuntimeError("no solution yet: call the layer on an input before deq_correction_loss.")
    x = deq._last_x  # the layer keeps its last input for its own auxiliary losses
    states = solver_states(deq.f, x, solution.extras["z0"], count=count, every=every, damping=damping)
    return weight * correction_loss(deq.f, x, states, loss_fn, gamma=gamma, steps=steps, damping=damping)
