"""The continuous backsolve adjoint (Chen et al., "Neural Ordinary Differential Equations", NeurIPS 2018)."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._batched import freeze
from .._checks import check_int, check_positive
from .._solution import BackwardStats, ConvergenceWarning, Solution
from .integrate import StepRecord, integrate
from .problem import AbstractODEAdjoint, Forward, ODEProblem, solve_forward, to_solution
from .solvers import AbstractODESolver
from .step import VectorField, per_sample

__all__ = ["BacksolveAdjoint"]


@dataclass(frozen=True, kw_only=True)
class BacksolveAdjoint(AbstractODEAdjoint):
    r"""Continuous adjoint: solve ``[u, a, g]`` backward from ``t1`` to ``t0`` (optimise-then-discretise).

    .. math:: \dot u = F(t, u), \quad \dot a = -a^\top \partial_u F, \quad \dot g = -a^\top \partial_\theta F,
              \quad a(t_1) = \partial L / \partial u(t_1), \ g(t_1) = 0,

    giving ``dL/du0 = a(t0)`` and ``dL/dθ = g(t0)``. Memory is constant in the number of steps; ``u`` is
    recomputed backward, so the gradient carries the integration error of both passes (and can be unstable
    where the backward flow of ``u`` is: Gholami, Keutzer & Biros 2019). With output times the backward solve
    runs interval by interval, restarting ``u`` from the forward solution and adding ``∂L/∂y_j`` to ``a`` at
    each output time (as torchdiffeq's ``odeint_adjoint``).

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
        max_steps: backward step limit per interval; ``None`` uses the forward one.

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
        box = _Box(problem=problem, adjoint=self, stats=BackwardStats())
        z = _Backsolve.apply(box, u0, *problem.params)
        solution = to_solution(box.forward, problem)
        solution.z, solution.backward = z, box.stats
        return solution


@dataclass
class _Box:
    """Everything the autograd Function needs besides tensors (one object instead of a run of Nones)."""

    problem: ODEProblem
    adjoint: BacksolveAdjoint
    stats: BackwardStats
    forward: Forward | None = None


class _Backsolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, box: _Box, u0: Tensor, *params: Tensor) -> Tensor:
        with torch.no_grad():
            box.forward = solve_forward(box.problem, u0)
        ctx.box = box
        z = box.forward.z
        return z.clone() if z is u0 else z

    @staticmethod
    def backward(ctx: Any, grad_z: Tensor) -> tuple[Tensor | None, ...]:
        box = ctx.box
        p, fw = box.problem, box.forward
        solver = box.adjoint.backward_solver(p.solver)
        field = _AugmentedField(p.field, p.params, solver)
        reached, g = fw.run.t, p.grid
        u, a = fw.run.u, torch.zeros_like(fw.run.u)
        left = torch.zeros_like(reached)
        for j in range(g.n - 1, 0, -1):
            got = g.s[:, j] <= reached  # output j was computed (a failed sample stopped short of it)
            if fw.ys is None:
                a = grad_z.to(u.dtype)
            else:
                u = freeze(got, fw.ys[:, j], u)
                a = a + per_sample(got, u).to(u.dtype) * grad_z[:, j]
            # reversed time r = -s, so the integrator still runs forward, from -s_j to -s_{j-1}
            r0, r1 = -torch.minimum(g.s[:, j], reached), -torch.minimum(g.s[:, j - 1], reached)
            back = integrate(solver, field, torch.stack([u, a], dim=1), r0, r1,
                             max_steps=box.adjoint.max_steps or p.max_steps, reuse_last_stage=False,
                             observers=(field.accumulate,))
            u, a = back.u[:, 0], back.u[:, 1]
            box.stats.nfe += back.nfe
            left = left + (r1 - back.t).detach()
        if fw.ys is not None:
            a = a + grad_z[:, 0]
        box.stats.ran, box.stats.residual = True, left
        _warn_unfinished(left)
        return (None, a, *field.grads)


def _warn_unfinished(left: Tensor) -> None:
    if bool((left > 0).any()):
        warnings.warn(
            f"backsolve adjoint did not reach t0 for {int((left > 0).sum())} sample(s) (backward time left up to "
            f"{float(left.max()):.3g}): raise BacksolveAdjoint(max_steps=...) or loosen its rtol/atol; the gradient "
            "is incomplete.", ConvergenceWarning, stacklevel=3)


class _AugmentedField:
    """``d/dr [u, a] = [-F(-r, u), a^T ∂F/∂u]`` with the parameter quadrature kept on the side."""

    def __init__(self, fn: VectorField, params: tuple[Tensor, ...], solver: AbstractODESolver):
        self.fn, self.params, self.b = fn, params, solver.tableau.b
        self.records: list[tuple[Tensor, Tensor]] = []
        self.grads = [torch.zeros_like(q) for q in params]

    def __call__(self, r: Tensor, y: Tensor) -> Tensor:
        u, a = y[:, 0], y[:, 1]
        with torch.enable_grad():
            u_in = u.detach().requires_grad_(True)
            f = self.fn(-r, u_in)
            vjp = None
            if f.requires_grad:
                (vjp,) = torch.autograd.grad(f, u_in, a, retain_graph=bool(self.params), allow_unused=True)
        self.records.append((f, a))
        return torch.stack([-f.detach(), torch.zeros_like(u) if vjp is None else vjp.to(u.dtype)], dim=1)

    def accumulate(self, rec: StepRecord) -> None:
        """Add ``sum_i b_i * h * a_i^T ∂F/∂θ(u_i)`` over the accepted samples of the step just taken."""
        stages, self.records = self.records[-len(self.b):], []
        if not self.params or not bool(rec.accept.any()):
            return
        w = torch.where(rec.accept, rec.h, torch.zeros_like(rec.h))
        outs, cots = [], []
        for bi, (f, a) in zip(self.b, stages, strict=True):
            if bi != 0.0 and f.requires_grad:
                outs.append(f)
                cots.append(bi * per_sample(w, a).to(a.dtype) * a)
        if not outs:
            return
        grads = torch.autograd.grad(outs, self.params, cots, allow_unused=True)
        for acc, gq in zip(self.grads, grads, strict=True):
            if gq is not None:
                acc.add_(gq)
