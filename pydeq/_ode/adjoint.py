"""How gradients flow through a fixed-horizon ODE solve: back-propagation through the solver, or the
continuous backsolve adjoint (Chen et al., "Neural Ordinary Differential Equations", NeurIPS 2018).

Each adjoint takes an :class:`ODEProblem` and ``u0`` and returns a :class:`~pydeq.Solution` whose ``z``
is ``u(t1)`` carrying the gradient. ``solution.backward`` is filled in when the backward pass runs.
"""

from __future__ import annotations

import abc
import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._checks import check_int, check_positive
from .._solution import BackwardStats, ConvergenceWarning, Solution, Status
from .integrate import ODERun, VectorField, _per_sample, integrate
from .solvers import AbstractODESolver

__all__ = ["ODEProblem", "AbstractODEAdjoint", "DirectAdjoint", "BacksolveAdjoint"]


@dataclass(frozen=True)
class ODEProblem:
    """``du/dt = fn(t, u)`` on ``[t0, t1]``; ``params`` are the tensors gradients must reach besides ``u0``."""

    fn: VectorField
    solver: AbstractODESolver
    t0: float
    t1: float
    max_steps: int
    params: tuple[Tensor, ...]


def to_solution(run: ODERun, t1: Tensor) -> Solution:
    """Pack an :class:`ODERun`: ``residual`` is the time each sample had left, 0 when it reached ``t1``."""
    extras = {"t": run.t, "accepted": run.accepted, "rejected": run.rejected}
    return Solution(z=run.u, residual=(t1 - run.t).detach(), status=run.status, nfe=run.nfe,
                    steps=run.accepted + run.rejected, extras=extras)


def _times(problem: ODEProblem, u0: Tensor) -> tuple[Tensor, Tensor]:
    shape = (u0.shape[0],)
    return (torch.full(shape, problem.t0, dtype=u0.dtype, device=u0.device),
            torch.full(shape, problem.t1, dtype=u0.dtype, device=u0.device))


class AbstractODEAdjoint(abc.ABC):
    """Base of the gradient modes accepted by :func:`pydeq.odeint`, ``NeuralODE`` and ``HomoODE``."""

    @abc.abstractmethod
    def solve(self, problem: ODEProblem, u0: Tensor) -> Solution:
        """Integrate ``problem`` from ``u0: (batch, *state)``; ``solution.z`` carries the gradient."""


@dataclass(frozen=True, kw_only=True)
class DirectAdjoint(AbstractODEAdjoint):
    """Back-propagate through every operation of the solver (discretise-then-optimise).

    Exact gradient of the computed ``u(t1)`` on the step sequence taken; memory grows with the number of
    steps. ``solution.backward.nfe`` counts the VJPs through recorded calls of ``fn``.
    """

    def solve(self, problem: ODEProblem, u0: Tensor) -> Solution:
        t0, t1 = _times(problem, u0)
        run = integrate(problem.solver, problem.fn, u0, t0, t1, max_steps=problem.max_steps)
        solution = to_solution(run, t1)
        if solution.z.requires_grad:
            stats = solution.backward
            probe = 1 if (problem.solver.adaptive and problem.solver.dt0 is None) else 0  # ran under no_grad

            def mark(grad: Tensor) -> None:
                stats.ran, stats.nfe = True, run.nfe - probe

            solution.z.register_hook(mark)
        return solution


@dataclass(frozen=True, kw_only=True)
class BacksolveAdjoint(AbstractODEAdjoint):
    r"""Continuous adjoint: solve ``[u, a, g]`` backward from ``t1`` to ``t0`` (optimise-then-discretise).

    .. math:: \dot u = F(t, u), \quad \dot a = -a^\top \partial_u F, \quad \dot g = -a^\top \partial_\theta F,
              \quad a(t_1) = \partial L / \partial u(t_1), \ g(t_1) = 0,

    giving ``dL/du0 = a(t0)`` and ``dL/dθ = g(t0)``. Memory is constant in the number of steps; ``u`` is
    recomputed backward, so the gradient carries the integration error of both passes.

    Per-sample stepping is kept: each sample's ``[u, a]`` has its own step and accept/reject, and the
    parameter integral is accumulated as the RK quadrature ``h * sum_i b_i a_i^T ∂F/∂θ(u_i)`` of accepted
    steps, with each sample's own ``h``. ``g`` is excluded from the error norm (a seminorm; Kidger,
    Chen & Lyons, "Hey, that's not an ODE", ICML 2021). Because the quadrature needs every stage of a
    step, FSAL is not used backward (one extra call per step).

    Which tensors receive gradients: ``θ`` is ``odeint``'s ``params`` — by default the parameters of
    ``fn`` if it is an ``nn.Module`` (or a bound method / closure holding one) plus tensors requiring grad
    that a closure captures. Pass ``params=`` explicitly when ``fn`` uses anything else.

    Args:
        solver: method for the backward solve; ``None`` uses the forward one.
        rtol, atol: backward tolerances; ``None`` uses the method's.
        max_steps: backward step limit; ``None`` uses the forward one.

    ``solution.backward.nfe`` counts evaluations of the augmented field (one call of ``fn`` and one VJP
    each); ``solution.backward.residual`` is the backward time left per sample (0 when it reached ``t0``).
    """

    solver: AbstractODESolver | None = None
    rtol: float | None = None
    atol: float | None = None
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.solver is not None and not isinstance(self.solver, AbstractODESolver):
            raise TypeError(f"BacksolveAdjoint.solver must be an ODE method such as Tsit5(); "
                            f"got {type(self.solver).__name__}.")
        for name in ("rtol", "atol"):
            if getattr(self, name) is not None:
                check_positive(f"BacksolveAdjoint.{name}", getattr(self, name))
        if self.max_steps is not None:
            check_int("BacksolveAdjoint.max_steps", self.max_steps)

    def backward_solver(self, forward: AbstractODESolver) -> AbstractODESolver:
        solver = forward if self.solver is None else self.solver
        if solver.adaptive:
            changes = {k: v for k, v in (("rtol", self.rtol), ("atol", self.atol)) if v is not None}
            solver = dataclasses.replace(solver, **changes)
        return solver

    def solve(self, problem: ODEProblem, u0: Tensor) -> Solution:
        t0, t1 = _times(problem, u0)
        box = _Box(problem=problem, adjoint=self, t0=t0, t1=t1, stats=BackwardStats())
        z = _Backsolve.apply(box, u0, *problem.params)
        solution = to_solution(box.run, t1)
        solution.z, solution.backward = z, box.stats
        return solution


@dataclass
class _Box:
    """Everything the autograd Function needs besides tensors (one object instead of a run of Nones)."""

    problem: ODEProblem
    adjoint: BacksolveAdjoint
    t0: Tensor
    t1: Tensor
    stats: BackwardStats
    run: ODERun | None = None


class _Backsolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, box: _Box, u0: Tensor, *params: Tensor) -> Tensor:
        p = box.problem
        with torch.no_grad():
            box.run = integrate(p.solver, p.fn, u0, box.t0, box.t1, max_steps=p.max_steps)
        ctx.box = box
        return box.run.u.clone() if box.run.u is u0 else box.run.u

    @staticmethod
    def backward(ctx: Any, grad_z: Tensor) -> tuple[Tensor | None, ...]:
        box = ctx.box
        p, run = box.problem, box.run
        solver = box.adjoint.backward_solver(p.solver)
        field = _AugmentedField(p.fn, p.params, solver)
        # reversed time s = -t, so the integrator still runs forward, from -t_reached to -t0
        y0 = torch.stack([run.u, grad_z.to(run.u.dtype)], dim=1)
        s_end = -box.t0
        back = integrate(solver, field, y0, -run.t, s_end, max_steps=box.adjoint.max_steps or p.max_steps,
                         reuse_last_stage=False, on_accept=field.accumulate)
        box.stats.ran, box.stats.nfe = True, back.nfe
        box.stats.residual = (s_end - back.t).detach()
        if not bool((back.status == int(Status.SUCCESS)).all()):
            warnings.warn(
                f"backsolve adjoint did not reach t0 for {int((back.status != 0).sum())} sample(s) "
                f"(backward time left up to {float(box.stats.residual.max()):.3g}): raise "
                "BacksolveAdjoint(max_steps=...) or loosen its rtol/atol; the gradient is incomplete.",
                ConvergenceWarning, stacklevel=2)
        return (None, back.u[:, 1], *field.grads)


class _AugmentedField:
    """``d/ds [u, a] = [-F(-s, u), a^T ∂F/∂u]`` with the parameter quadrature kept on the side."""

    def __init__(self, fn: VectorField, params: tuple[Tensor, ...], solver: AbstractODESolver):
        self.fn, self.params, self.b = fn, params, solver.tableau.b
        self.records: list[tuple[Tensor, Tensor]] = []
        self.grads = [torch.zeros_like(q) for q in params]

    def __call__(self, s: Tensor, y: Tensor) -> Tensor:
        u, a = y[:, 0], y[:, 1]
        with torch.enable_grad():
            u_in = u.detach().requires_grad_(True)
            f = self.fn(-s, u_in)
            vjp = None
            if f.requires_grad:
                (vjp,) = torch.autograd.grad(f, u_in, a, retain_graph=bool(self.params), allow_unused=True)
        self.records.append((f, a))
        return torch.stack([-f.detach(), torch.zeros_like(u) if vjp is None else vjp], dim=1)

    def accumulate(self, accepted: Tensor, h: Tensor) -> None:
        """Add ``sum_i b_i * h * a_i^T ∂F/∂θ(u_i)`` over the accepted samples of the step just taken."""
        stages, self.records = self.records[-len(self.b):], []
        if not self.params or not bool(accepted.any()):
            return
        w = torch.where(accepted, h, torch.zeros_like(h))
        outs, cots = [], []
        for bi, (f, a) in zip(self.b, stages, strict=True):
            if bi != 0.0 and f.requires_grad:
                outs.append(f)
                cots.append(bi * _per_sample(w, a).to(a.dtype) * a)
        if not outs:
            return
        grads = torch.autograd.grad(outs, self.params, cots, allow_unused=True)
        for acc, g in zip(self.grads, grads, strict=True):
            if g is not None:
                acc.add_(g)
