"""Events: stop each sample where an event function of ``(t, u)`` crosses zero, with a differentiable event time.

After every accepted step the event function is evaluated at the new state; a sample whose value changed sign
(in the event's direction) has its crossing located inside the step on the dense output — Illinois regula falsi,
no extra evaluation of the vector field — and is stopped there. The event time ``t*`` solves
``g(t*, u(t*; θ)) = 0``, so by the implicit function theorem

.. math:: \\frac{dt^*}{dθ} = -\\frac{\\partial_θ g + \\partial_u g \\cdot \\partial_θ u(t^*)}{\\partial_t g +
          \\partial_u g \\cdot F(t^*, u^*)}, \\qquad \\frac{du^*}{dθ} = \\partial_θ u(t^*) + F(t^*, u^*)
          \\frac{dt^*}{dθ},

which :func:`attach_event_gradient` wires into autograd on top of any gradient mode's ``u(t*)`` at fixed time
(as torchdiffeq's ``odeint_event``; Chen, Amos & Nickel, "Learning neural event functions", ICLR 2021).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._checks import check_int
from .._solution import Solution
from .dense import interpolate
from .integrate import StepRecord
from .step import per_sample

__all__ = ["Event", "attach_event_gradient"]


@dataclass(frozen=True, kw_only=True)
class Event:
    """Stop each sample of :func:`pydeq.odeint` where ``fn(t, u)`` crosses zero.

    Args:
        fn: ``fn(t: (batch,), u: (batch, *state)) -> (batch,)``, one value per sample.
        direction: ``0`` (default) any crossing; ``+1`` only from negative to positive, ``-1`` only from positive to
            negative, both along the direction of integration.
        max_iters: root-finding iterations per located crossing (Illinois regula falsi, bracketed; it stops earlier
            once the bracket is a few ulps of the step wide).

    With ``odeint(fn, u0, (t0, t_max), event=Event(fn=g))`` (``t_max`` may be ``math.inf``), ``solution.z`` is the
    state at each sample's event (or at ``t_max``), ``solution.extras["t_event"]`` the event time (differentiable),
    ``extras["event"]`` whether the event fired and ``extras["event_calls"]`` the calls of ``fn``.
    """

    fn: Callable[[Tensor, Tensor], Tensor]
    direction: int = 0
    max_iters: int = 50

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"Event.fn must be callable as fn(t, u) -> (batch,); got {type(self.fn).__name__}.")
        if self.direction not in (-1, 0, 1):
            raise ValueError(f"Event.direction must be -1, 0 or +1; got {self.direction!r}.")
        check_int("Event.max_iters", self.max_iters)

    def locator(self, problem: Any, u0: Tensor) -> _Locator:
        return _Locator(self, problem, u0)


def _check_event_value(value: Any, u: Tensor) -> None:
    if isinstance(value, Tensor) and value.shape == (u.shape[0],) and value.is_floating_point():
        return
    got = f"shape {tuple(value.shape)} {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
    raise ValueError(f"Event.fn(t, u) must return one real value per sample, shape ({u.shape[0]},); got {got}. "
                     "Reduce over the state, e.g. u[:, 0] for a height, or the min over several conditions.")


class _Locator:
    """Per-sample event state: the event value at the last accepted state."""

    def __init__(self, event: Event, problem: Any, u0: Tensor):
        self.event, self.tab, self.grid = event, problem.solver.tableau, problem.grid
        self.calls = 0
        with torch.no_grad():
            self.g = self._g(problem.grid.s0, u0)

    def _g(self, s: Tensor, u: Tensor) -> Tensor:
        self.calls += 1
        value = self.event.fn(self.grid.time(s), u)
        _check_event_value(value, u)
        return value.detach()

    def _crossed(self, g0: Tensor, g1: Tensor) -> Tensor:
        d = self.event.direction
        up, down = (g0 < 0) & (g1 >= 0), (g0 > 0) & (g1 <= 0)
        return up if d > 0 else down if d < 0 else up | down

    def locate(self, rec: StepRecord) -> tuple[Tensor, Tensor, Tensor]:
        """``(hit, theta, u_event)``: which samples crossed in this step, where (``s + θh``) and the state there."""
        with torch.no_grad():
            g_old, g_new = self.g, self._g(rec.s_next, rec.u_next)
            hit = rec.accept & self._crossed(g_old, g_new)
            self.g = torch.where(rec.accept, g_new, g_old)
            if not bool(hit.any()):
                return hit, torch.ones_like(rec.h), rec.u_next
            theta = self._root(rec, hit, g_old, g_new)
        # outside no_grad: back-propagation through the solver reaches the event state by the interpolant
        return hit, theta, interpolate(self.tab, rec.u, rec.h, rec.step.stages, theta)

    def _root(self, rec: StepRecord, hit: Tensor, g_lo: Tensor, g_hi: Tensor) -> Tensor:
        """Illinois regula falsi for ``θ`` in ``(0, 1]`` with ``g(s + θh, u(θ)) = 0``, for the samples in ``hit``."""
        lo, hi = torch.zeros_like(rec.h), torch.ones_like(rec.h)
        side = torch.zeros_like(hit, dtype=torch.int8)  # which end was kept last: -1 lo, +1 hi
        tiny = 4 * torch.finfo(rec.h.dtype).eps
        for _ in range(self.event.max_iters):
            open_ = hit & (hi - lo > tiny) & (g_hi != 0)
            if not bool(open_.any()):
                break
            denom = g_hi - g_lo
            mid = torch.where(denom != 0, lo - g_lo * (hi - lo) / torch.where(denom != 0, denom, 1), (lo + hi) / 2)
            mid = torch.where((mid > lo) & (mid < hi), mid, (lo + hi) / 2)
            g_mid = self._g(rec.s + mid * rec.h, interpolate(self.tab, rec.u, rec.h, rec.step.stages, mid))
            same = torch.sign(g_mid) == torch.sign(g_lo)  # the root is in [mid, hi]
            move_lo, move_hi = open_ & same, open_ & ~same
            lo, g_lo = torch.where(move_lo, mid, lo), torch.where(move_lo, g_mid, g_lo)
            hi, g_hi = torch.where(move_hi, mid, hi), torch.where(move_hi, g_mid, g_hi)
            # Illinois: an end kept twice in a row has its value halved, so the estimate does not stall
            g_hi = torch.where(move_lo & (side == 1), g_hi / 2, g_hi)
            g_lo = torch.where(move_hi & (side == -1), g_lo / 2, g_lo)
            side = torch.where(move_lo, 1, torch.where(move_hi, -1, side)).to(torch.int8)
        return torch.where(hit, hi, torch.ones_like(hi))  # hi: at or just past the crossing


def attach_event_gradient(problem: Any, solution: Solution) -> Solution:
    """Give ``solution.z`` (the state at the event, differentiable at fixed time) and the event time their total
    derivatives; ``extras["t_event"]`` becomes the differentiable event time."""
    event, fn = problem.event, problem.fn
    t_star = solution.extras["t"].detach()
    hit = solution.extras["event"]
    u_star = solution.z
    with torch.enable_grad():
        t_in = t_star.clone().requires_grad_(True)
        u_in = u_star.detach().requires_grad_(True)
        value = event.fn(t_in, u_in)
        dg_dt, dg_du = (torch.autograd.grad(value.sum(), [t_in, u_in], allow_unused=True) if value.requires_grad
                        else (None, None))
    with torch.no_grad():
        f_star = fn(t_star, u_star.detach())
    slope = (torch.zeros_like(t_star) if dg_dt is None else dg_dt)
    if dg_du is not None:
        slope = slope + (dg_du * f_star).reshape(f_star.shape[0], -1).sum(1)
    safe = torch.where(hit & (slope != 0), slope, torch.ones_like(slope))
    g = event.fn(t_star, u_star)
    shift = torch.where(hit, -(g - g.detach()) / safe.detach(), torch.zeros_like(g))
    solution.extras["t_event"] = t_star + shift
    solution.z = u_star + per_sample(shift, u_star) * f_star.detach()
    solution.nfe += 1
    return solution
