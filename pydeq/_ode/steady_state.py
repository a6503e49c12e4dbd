"""Continuous DEQ solver: integrate du/dt = f(u, x) − u to its steady state (Pal, Edelman & Rackauckas 2022)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from torch import Tensor

from .._norms import Norm, rms_norm
from .._root import AbstractRootFinder, Stagnation, check_stop_fields
from ._steady_steps import SteadyStateState, steady_init, steady_step
from .odeint import METHODS, check_ode_solver
from .residual_euler import ResidualEuler
from .secant_euler import SecantEuler
from .solvers import AbstractODESolver

__all__ = ["SteadyState"]


@dataclass(frozen=True)
class SteadyState(AbstractRootFinder):
    r"""Root finder that follows the flow :math:`\dot u = f(u, x) - u` from ``t = 0`` towards ``t = ∞``.

    A steady state of the flow is a fixed point of f, so ``DEQ(f, solver=SteadyState())`` is a continuous DEQ,
    differentiated by the same adjoints as a discrete DEQ (implicit, Broyden re-use, JFB, ...). Each driver step
    is one step of ``method`` with a per-sample step size. A sample stops when

    .. math:: \mathrm{norm}(f(u) - u) \le \mathrm{atol} + \mathrm{rtol} \cdot \mathrm{norm}(f(u))

    i.e. ``norm(du) <= atol + rtol * norm(du + u)``: ``rtol = 0`` is the absolute mode (``abs_norm``/``abs`` of
    DeepEquilibriumNetworks.jl with ``l2_norm``/``max_norm``), ``atol = 0`` the relative one (``rel_norm``),
    both their sum. The default :func:`~pydeq.rms_norm` makes ``atol`` mean the same at any state size.

    Methods:

    * :class:`~pydeq.SecantEuler` (default): Euler steps, accepted when the residual does not grow, sized by a
      secant fit of the flow along the last step; as few f calls as fixed-point iteration where it converges
      fast, fewer where it converges slowly, and it still converges where iteration diverges but the flow does
      not.
    * :class:`~pydeq.ResidualEuler`: the same Euler steps with the step size grown by a fixed factor (to 1) after
      each accepted step: damped fixed-point iteration.
    * Adaptive Runge–Kutta (``Tsit5``, ``Dopri5``, ``BS3``) and :class:`~pydeq.VCAB3`: the local error is
      controlled with the method's own ``rtol``/``atol`` in this ``norm`` (as in :func:`pydeq.odeint`), and a
      step is also rejected (and the step size cut to at most 0.7×) when it makes ``norm(f(u) - u)`` grow.
      Without that guard an explicit method settles at its stability limit, where the error controller holds
      the stiffest mode at about the integration tolerance and the residual stops falling (measured: Tsit5 at
      5e-3 ran to its step cap on every ``||W|| = 1.5`` map of the README's grid; with the guard it converges in
      55-73 f calls). The first step is ``method.dt0`` or, when unset, 1: the relaxation term ``-u`` decays at
      rate 1, and Hairer's accuracy-based guess for a trajectory took 56-62 calls on the ``||W|| <= 0.9`` maps
      instead of 25-43.
    * Fixed-step ``Euler(dt=...)`` / ``RK4(dt=...)``: plain steps, no guard. ``Euler(dt=1.0)`` is exactly
      fixed-point iteration.

    Args:
        method: the stepping method (default ``SecantEuler()``).
        rtol: relative termination tolerance (against ``norm(f(u))``).
        atol: absolute termination tolerance.
        max_steps: attempted steps (accepted + rejected) per sample.
        norm: per-sample norm ``(batch, *state) -> (batch,)`` of the termination test and of the error control.
        stagnation: a :class:`~pydeq.Stagnation` rule (default: no 1% progress in 20 steps stops the sample
            with status ``STAGNATED``), or ``None``.

    Returns (via the driver): ``Solution.extras["t"]`` the (pseudo-)time reached, ``["dt"]`` the next step
    size, ``["rejected"]`` rejected steps per sample.

    Reference: Pal, Edelman & Rackauckas, "Mixing implicit and explicit deep learning with skip DEQs and
    infinite time neural ODEs (continuous DEQs)", arXiv:2201.12240 (2022).
    """

    method: AbstractODESolver | SecantEuler | ResidualEuler = field(default_factory=SecantEuler)
    _: KW_ONLY
    rtol: float = 1e-4
    atol: float = 1e-6
    max_steps: int = 200
    norm: Norm = rms_norm
    stagnation: Stagnation | None = Stagnation()

    def __post_init__(self) -> None:
        if not isinstance(self.method, (SecantEuler, ResidualEuler)):
            check_ode_solver(self.method, where="SteadyState's method",
                             methods=f"SecantEuler (the default), ResidualEuler, VCAB3, {METHODS}")
        check_stop_fields(self)

    def init(self, fn: Callable[[Tensor], Tensor], z0: Tensor) -> SteadyStateState:
        return steady_init(self.method, self.norm, fn, z0)

    def step(self, fn: Callable[[Tensor], Tensor], state: SteadyStateState, active: Tensor) -> SteadyStateState:
        return steady_step(self.method, self.norm, fn, state, active)

    def residual(self, state: SteadyStateState) -> Tensor:
        return state.res  # norm(f(u) - u), formed by the step already

    def postprocess(self, state: Any) -> dict:
        return {"t": state.t, "dt": state.dt, "rejected": state.rejected}
