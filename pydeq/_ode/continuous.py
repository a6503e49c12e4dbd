r"""What the continuous adjoints (optimise-then-discretise) share: the backward solve's settings, the sweep from
``t1`` back to ``t0`` over the output intervals, and the quadrature of the parameter integral.

Both :class:`~pydeq.BacksolveAdjoint` and :class:`~pydeq.InterpolatingAdjoint` solve

.. math:: \dot a = -a^\top \partial_u F(t, u(t)), \quad \dot g = -a^\top \partial_\theta F(t, u(t)),
          \quad a(t_1) = \partial L / \partial u(t_1), \ g(t_1) = 0

backward; they differ in where ``u(t)`` comes from (re-integrated backward, or the forward pass's dense output).
The parameter integral ``g`` is the quadrature of :mod:`~pydeq._ode.quadrature`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._checks import check_int, check_positive
from .._solution import BackwardStats, ConvergenceWarning
from .adams import adams_forward
from .integrate import ODERun, integrate
from .problem import AbstractODEAdjoint, Forward, ODEProblem
from .quadrature import AbstractQuadrature
from .solvers import AbstractODESolver
from .step import VectorField, per_sample
from .vcab3 import VCAB3

__all__ = ["AbstractContinuousAdjoint", "AdjointBox", "backward_sweep", "solve_interval"]

# (output index j, got: (batch,) reached output j, a at s_j, r0, r1) -> (a at s_{j-1}, the backward run)
Interval = Callable[[int, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, ODERun]]


@dataclass(frozen=True, kw_only=True)
class AbstractContinuousAdjoint(AbstractODEAdjoint):
    """The backward solve's settings: ``solver`` (``None``: the forward method), ``rtol``/``atol`` (``None``:
    the method's) and ``max_steps`` per output interval (``None``: the forward one)."""

    solver: AbstractODESolver | None = None
    rtol: float | None = None
    atol: float | None = None
    max_steps: int | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.solver is not None and not isinstance(self.solver, AbstractODESolver):
            raise TypeError(f"{name}.solver must be an ODE method such as Tsit5(); "
                            f"got {type(self.solver).__name__}.")
        for attr in ("rtol", "atol"):
            if getattr(self, attr) is not None:
                check_positive(f"{name}.{attr}", getattr(self, attr))
        if self.max_steps is not None:
            check_int(f"{name}.max_steps", self.max_steps)

    def backward_solver(self, forward: AbstractODESolver) -> AbstractODESolver:
        solver = forward if self.solver is None else self.solver
        if solver.adaptive:
            changes = {k: v for k, v in (("rtol", self.rtol), ("atol", self.atol)) if v is not None}
            solver = dataclasses.replace(solver, **changes)
        return solver


@dataclass
class AdjointBox:
    """Everything the autograd Function needs besides tensors (one object instead of a run of Nones)."""

    problem: ODEProblem
    adjoint: AbstractContinuousAdjoint
    stats: BackwardStats
    forward: Forward | None = None
    tape: Any = None


def backward_sweep(box: AdjointBox, grad_z: Tensor, interval: Interval) -> Tensor:
    """``a(t0) = dL/du0``: ``interval`` solves each output interval backward, from the last to the first, and
    ``a`` jumps by ``∂L/∂y_j`` at each output time the sample reached. Fills ``box.stats`` and warns for samples
    whose backward solve stopped short of ``t0``."""
    p, fw = box.problem, box.forward
    reached, g = fw.run.t, p.grid
    a = torch.zeros_like(fw.run.u)
    left = torch.zeros_like(reached)
    for j in range(g.n - 1, 0, -1):
        got = g.s[:, j] <= reached  # output j was computed (a failed sample stopped short of it)
        if fw.ys is None:
            a = grad_z.to(a.dtype)
        else:
            a = a + per_sample(got, a).to(a.dtype) * grad_z[:, j]
        # reversed time r = -s, so the integrator still runs forward, from -s_j to -s_{j-1}
        r0, r1 = -torch.minimum(g.s[:, j], reached), -torch.minimum(g.s[:, j - 1], reached)
        a, back = interval(j, got, a, r0, r1)
        box.stats.nfe += back.nfe
        left = left + (r1 - back.t).detach()
    if fw.ys is not None:
        a = a + grad_z[:, 0]
    box.stats.ran, box.stats.residual = True, left
    if bool((left > 0).any()):
        name = type(box.adjoint).__name__
        warnings.warn(
            f"{name.removesuffix('Adjoint').lower()} adjoint did not reach t0 for {int((left > 0).sum())} sample(s) "
            f"(backward time left up to {float(left.max()):.3g}): raise {name}(max_steps=...) or loosen its "
            "rtol/atol; the gradient is incomplete.", ConvergenceWarning, stacklevel=3)
    return a


def solve_interval(solver: AbstractODESolver, field: VectorField, y: Tensor, r0: Tensor, r1: Tensor, *,
                   max_steps: int, quadrature: AbstractQuadrature) -> ODERun:
    """Integrate the backward field from ``r0`` to ``r1`` (reversed time, ``(batch,)`` each) with ``quadrature``
    observing every step: VCAB3 in its own loop, from a fresh history (``a`` jumps at the interval's ends), a
    Runge–Kutta method without FSAL (the quadrature needs every stage of a step within it)."""
    observers = (quadrature.accumulate,)
    if isinstance(solver, VCAB3):
        run, _ = adams_forward(solver, field, y, torch.stack([r0, r1], dim=1), max_steps=max_steps, outputs=False,
                               observers=observers)
    else:
        run = integrate(solver, field, y, r0, r1, max_steps=max_steps, reuse_last_stage=False, observers=observers)
    quadrature.finish()
    return run
