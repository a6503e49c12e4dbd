"""One step of each steady-state method on ``du/dt = f(u) - u``, per sample: what :class:`SteadyState` runs.

Every step ends with ``f`` at the new point, which gives both the next first stage (``f(u) - u``) and the
residual that the driver tests and that the residual guard compares with the last one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._norms import Norm
from .residual_euler import ResidualEuler
from .secant_euler import SecantEuler
from .solvers import AbstractODESolver
from .step import attempt_step, error_ratio, per_sample
from .vcab3 import VCAB3, AdamsHistory, ab_proposal

__all__ = ["SteadyStateState", "steady_init", "steady_step", "GUARD_SHRINK"]

GUARD_SHRINK = 0.7  # largest step factor after a step that made the residual grow
EulerMethod = ResidualEuler | SecantEuler  # Euler steps sized by the residual alone


@dataclass
class SteadyStateState:
    """Per-sample ODE clock on top of the root-finder state (all ``(batch,)`` except z, fz and the history)."""

    z: Tensor
    fz: Tensor
    res: Tensor
    t: Tensor
    dt: Tensor
    rejected: Tensor
    prev_ratio: Tensor
    history: AdamsHistory | None = None


class _Relaxation:
    """``F(t, u) = f(u) − u``; remembers the last ``f(u)`` so the FSAL stage also gives ``fz``."""

    def __init__(self, fn: Callable[[Tensor], Tensor]):
        self.fn, self.last_fu = fn, None

    def __call__(self, t: Tensor, u: Tensor) -> Tensor:
        self.last_fu = self.fn(u)
        return self.last_fu - u


def steady_init(method: AbstractODESolver | EulerMethod, norm: Norm, fn: Callable[[Tensor], Tensor],
                z0: Tensor) -> SteadyStateState:
    """The state at ``t = 0``: one call of f, the first step size, an empty history."""
    fz = fn(z0)
    t = torch.zeros(z0.shape[0], dtype=z0.dtype, device=z0.device)
    if isinstance(method, EulerMethod):
        dt = method.dt0
    elif not method.adaptive:
        dt = method.dt
    else:  # the relaxation's -u decays at rate 1: a unit first step unless the method says otherwise
        dt = 1.0 if method.dt0 is None else method.dt0
    history = AdamsHistory.empty(z0) if isinstance(method, VCAB3) else None
    return SteadyStateState(z=z0, fz=fz, res=norm(fz - z0), t=t, dt=torch.full_like(t, dt),
                            rejected=torch.zeros(t.shape, dtype=torch.int64, device=t.device),
                            prev_ratio=torch.ones_like(t), history=history)


def steady_step(method: AbstractODESolver | EulerMethod, norm: Norm, fn: Callable[[Tensor], Tensor],
                state: SteadyStateState, active: Tensor) -> SteadyStateState:
    """One attempted step of ``method`` for the samples in ``active``; the others keep every field."""
    h = torch.where(active, state.dt, torch.zeros_like(state.dt))
    if isinstance(method, EulerMethod):
        return _euler_step(method, norm, fn, state, active, h)
    if isinstance(method, VCAB3):
        return _adams_step(method, norm, fn, state, active, h)
    field = _Relaxation(fn)
    # k1 = f(z) − z is known already: no call for the first stage, FSAL or not; the step attempt is the one
    # every integrator shares, with this solver's norm for the error ratio
    att = attempt_step(method, field, state.t, state.z, h, state.fz - state.z, state.prev_ratio, active, norm=norm)
    z_new = att.step.u_new
    fz_new = field.last_fu if method.tableau.fsal else fn(z_new)
    res_new = norm(fz_new - z_new)
    if not method.adaptive:
        return SteadyStateState(z=z_new, fz=fz_new, res=res_new, t=state.t + h, dt=state.dt,
                                rejected=state.rejected, prev_ratio=state.prev_ratio)
    grew = active & ~(res_new <= state.res)  # the residual guard; NaN counts as growth
    accept = att.accept & ~grew
    dt = torch.where(grew, torch.minimum(att.dt_next, GUARD_SHRINK * h), att.dt_next)
    return _accepted(state, accept, z_new, fz_new, res_new, h, torch.where(active, dt, state.dt),
                     prev_ratio=torch.where(accept, att.prev_ratio, state.prev_ratio), active=active)


def _adams_step(method: VCAB3, norm: Norm, fn: Callable[[Tensor], Tensor], state: SteadyStateState,
                active: Tensor, h: Tensor) -> SteadyStateState:
    step = ab_proposal(state.z, state.fz - state.z, state.history, h)
    z_new, err = step.u_new, step.err
    fz_new = fn(z_new)
    res_new = norm(fz_new - z_new)
    ratio = error_ratio(err.detach(), state.z.detach(), z_new.detach(), method.rtol, method.atol, norm=norm)
    grew = active & ~(res_new <= state.res)  # NaN counts as growth
    accept = active & (ratio <= 1) & ~grew
    factor = method.controller.factor(ratio, state.prev_ratio, VCAB3.error_order, accept)
    factor = torch.where(grew, factor.clamp_max(GUARD_SHRINK), factor)
    dt = (h * factor).clamp(method.dtmin, method.dtmax)
    return _accepted(state, accept, z_new, fz_new, res_new, h, torch.where(active, dt, state.dt),
                     prev_ratio=torch.where(accept, ratio, state.prev_ratio), active=active)


def _euler_step(method: EulerMethod, norm: Norm, fn: Callable[[Tensor], Tensor], state: SteadyStateState,
                active: Tensor, h: Tensor) -> SteadyStateState:
    r = state.fz - state.z
    z_new = torch.addcmul(state.z, per_sample(h, state.z), r)
    fz_new = fn(z_new)
    r_new = fz_new - z_new
    res_new = norm(r_new)
    accept = active & (res_new <= state.res)  # NaN is rejected
    if isinstance(method, SecantEuler):
        grown = _secant_step(h, r.detach(), r_new.detach(), method.dt_max)
    else:
        grown = (h * method.grow).clamp_max(method.dt_max)
    dt = torch.where(accept, grown, h * method.shrink)
    return _accepted(state, accept, z_new, fz_new, res_new, h, torch.where(active, dt, state.dt),
                     prev_ratio=state.prev_ratio, active=active)


def _secant_step(h: Tensor, r: Tensor, r_new: Tensor, dt_max: float) -> Tensor:
    """``<s, y> / <y, y>`` with ``s = h r``, ``y = r - r_new``, per sample, in (0, dt_max]; ``h`` where undefined."""
    y = (r - r_new).flatten(1)
    sy = h * (r.flatten(1) * y).sum(1)
    yy = (y * y).sum(1)
    secant = sy / yy
    usable = (sy > 0) & torch.isfinite(secant)  # an accepted step in the rms or l2 norm has <s, y> >= 0
    return torch.where(usable, secant, h).clamp_max(dt_max)


def _accepted(state: SteadyStateState, accept: Tensor, z_new: Tensor, fz_new: Tensor, res_new: Tensor, h: Tensor,
              dt: Tensor, *, prev_ratio: Tensor, active: Tensor) -> SteadyStateState:
    """The state after a step: accepted samples move to ``z_new``, the others stay; the history shifts."""
    mask = per_sample(accept, state.z)
    history = state.history
    if history is not None:  # VCAB3: the derivative at the old point becomes F_{n-1}
        history = history.shift(accept, state.fz - state.z, h)
    return SteadyStateState(
        z=torch.where(mask, z_new, state.z), fz=torch.where(mask, fz_new, state.fz),
        res=torch.where(accept, res_new, state.res), t=torch.where(accept, state.t + h, state.t), dt=dt,
        rejected=state.rejected + (active & ~accept).long(), prev_ratio=prev_ratio, history=history,
    )
