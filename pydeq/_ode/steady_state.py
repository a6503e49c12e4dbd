"""Continuous DEQ solver: integrate du/dt = f(u, x) − u to its steady state (Pal, Edelman & Rackauckas 2022)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any

import torch
from torch import Tensor

from .._batched import batch_norm
from .._checks import check_tolerances
from .._root._base import AbstractRootFinder
from .integrate import error_ratio, initial_dt, rk_step
from .odeint import check_ode_solver
from .solvers import AbstractODESolver

__all__ = ["SteadyState"]


@dataclass
class SteadyStateState:
    """Per-sample ODE clock on top of the root-finder state (all ``(batch,)`` except z, fz)."""

    z: Tensor
    fz: Tensor
    t: Tensor
    dt: Tensor
    prev_ratio: Tensor
    rejected: Tensor


class _Relaxation:
    """``F(t, u) = f(u) − u``; remembers the last ``f(u)`` so the FSAL stage also gives ``fz``."""

    def __init__(self, fn: Callable[[Tensor], Tensor]):
        self.fn, self.last_fu = fn, None

    def __call__(self, t: Tensor, u: Tensor) -> Tensor:
        self.last_fu = self.fn(u)
        return self.last_fu - u


@dataclass(frozen=True)
class SteadyState(AbstractRootFinder):
    r"""Root finder that follows the flow :math:`\dot u = f(u, x) - u` from ``t = 0`` towards ``t = ∞``.

    Each driver step is one Runge–Kutta step of ``method`` with a per-sample step size (adaptive methods:
    per-sample accept/reject with ``method.rtol``/``method.atol`` and its controller). A sample stops when

    .. math:: \|f(u, x) - u\| \le \mathrm{atol} + \mathrm{rtol} \cdot \|u\|

    (Euclidean norms over the sample's state). A steady state of the flow is a fixed point of f, so
    ``DEQ(f, solver=SteadyState(Tsit5()))`` is a continuous DEQ, differentiated by the same adjoints as a
    discrete DEQ (implicit, JFB, ...).

    The local-error control uses ``min(method.rtol, rtol)`` and ``min(method.atol, atol)``: with looser
    integration tolerances an explicit method settles at its stability limit, where the residual
    stagnates at about the integration tolerance and never meets the termination test (the paper uses
    equal tolerances for both).

    Args:
        method: the ODE method (``Tsit5()``, ``Dopri5()``, ``BS3()``, or fixed-step ``Euler``/``RK4``).
        rtol: relative termination tolerance on ``||f(u) − u||``.
        atol: absolute termination tolerance.
        max_steps: attempted RK steps (accepted + rejected) per sample.

    Returns (via the driver): ``Solution.extras["t"]`` the time reached, ``["dt"]`` the last step size,
    ``["rejected"]`` rejected steps per sample.

    Reference: Pal, Edelman & Rackauckas, "Mixing implicit and explicit deep learning with skip DEQs and
    infinite time neural ODEs (continuous DEQs)", arXiv:2201.12240 (2022).
    """

    method: AbstractODESolver
    _: KW_ONLY
    rtol: float = 1e-4
    atol: float = 1e-6
    max_steps: int = 100

    def __post_init__(self) -> None:
        check_ode_solver(self.method, where="SteadyState's method")
        check_tolerances(self)

    def init(self, fn: Callable[[Tensor], Tensor], z0: Tensor) -> SteadyStateState:
        fz = fn(z0)
        t = torch.zeros(z0.shape[0], dtype=z0.dtype, device=z0.device)
        m = self.method
        rtol, atol = self._integration_tolerances()
        if not m.adaptive:
            dt = torch.full_like(t, m.dt)
        elif m.dt0 is not None:
            dt = torch.full_like(t, m.dt0)
        else:
            dt = initial_dt(_Relaxation(fn), t, z0.detach(), (fz - z0).detach(), m.tableau.error_order,
                            rtol, atol)
        return SteadyStateState(z=z0, fz=fz, t=t, dt=dt, prev_ratio=torch.ones_like(t),
                                rejected=torch.zeros(t.shape, dtype=torch.int64, device=t.device))

    def step(self, fn: Callable[[Tensor], Tensor], state: SteadyStateState, active: Tensor) -> SteadyStateState:
        m, field = self.method, _Relaxation(fn)
        z, fz = state.z, state.fz
        h = torch.where(active, state.dt, torch.zeros_like(state.dt))
        # k1 = f(z) − z is known already: no call for the first stage, FSAL or not
        z_new, err, _ = rk_step(m.tableau, field, state.t, z, h, fz - z)
        fz_new = field.last_fu if m.tableau.fsal else fn(z_new)
        if not m.adaptive:
            return SteadyStateState(z=z_new, fz=fz_new, t=state.t + h, dt=state.dt,
                                    prev_ratio=state.prev_ratio, rejected=state.rejected)
        ratio = error_ratio(err.detach(), z.detach(), z_new.detach(), *self._integration_tolerances())
        accept = active & (ratio <= 1)
        factor = m.controller.factor(ratio, state.prev_ratio, m.tableau.error_order, accept)
        mask = accept.reshape(accept.shape + (1,) * (z.dim() - 1))
        return SteadyStateState(
            z=torch.where(mask, z_new, z), fz=torch.where(mask, fz_new, fz),
            t=torch.where(accept, state.t + h, state.t),
            dt=torch.where(active, h * factor, state.dt),
            prev_ratio=torch.where(accept, ratio, state.prev_ratio),
            rejected=state.rejected + (active & ~accept).long(),
        )

    def _integration_tolerances(self) -> tuple[float, float]:
        return min(self.method.rtol, self.rtol), min(self.method.atol, self.atol)

    def tolerance(self, state: SteadyStateState) -> Tensor:
        """``(batch,)`` threshold ``atol + rtol * ||u||`` (the state, not f(u), as in the paper)."""
        return self.atol + self.rtol * batch_norm(state.z)

    def postprocess(self, state: Any) -> dict:
        return {"t": state.t, "dt": state.dt, "rejected": state.rejected}
