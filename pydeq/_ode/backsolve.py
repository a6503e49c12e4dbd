"""The continuous backsolve adjoint (Chen et al., "Neural Ordinary Differential Equations", NeurIPS 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._batched import freeze
from .._solution import BackwardStats, Solution
from .continuous import AbstractContinuousAdjoint, AdjointBox, backward_sweep, solve_interval
from .integrate import ODERun
from .problem import ODEProblem, solve_untracked, to_solution
from .quadrature import AbstractQuadrature, parameter_quadrature
from .step import VectorField

__all__ = ["BacksolveAdjoint"]


@dataclass(frozen=True, kw_only=True)
class BacksolveAdjoint(AbstractContinuousAdjoint):
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
        solver: method for the backward solve; ``None`` uses the forward one. ``VCAB3()`` runs in its own loop
            with its own parameter quadrature (:mod:`~pydeq._ode.quadrature`).
        rtol, atol: backward tolerances; ``None`` uses the method's.
        max_steps: backward step limit per interval; ``None`` uses the forward one.

    ``solution.backward.nfe`` counts evaluations of the augmented field (one call of ``fn`` and one VJP
    each); ``solution.backward.residual`` is the backward time left per sample (0 when it reached ``t0``).
    """

    def solve(self, problem: ODEProblem, u0: Tensor) -> Solution:
        box = AdjointBox(problem=problem, adjoint=self, stats=BackwardStats())
        z = _Backsolve.apply(box, u0, *problem.params)
        solution = to_solution(box.forward, problem)
        solution.z, solution.backward = z, box.stats
        return solution


class _Backsolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, box: AdjointBox, u0: Tensor, *params: Tensor) -> Tensor:
        ctx.box = box
        box.forward, z = solve_untracked(box.problem, u0)
        return z

    @staticmethod
    def backward(ctx: Any, grad_z: Tensor) -> tuple[Tensor | None, ...]:
        box = ctx.box
        p, fw = box.problem, box.forward
        solver = box.adjoint.backward_solver(p.solver)
        field = _AugmentedField(p.field, parameter_quadrature(p.params, solver))
        u = fw.run.u

        def interval(j: int, got: Tensor, a: Tensor, r0: Tensor, r1: Tensor) -> tuple[Tensor, ODERun]:
            nonlocal u
            if fw.ys is not None:  # restart u from the forward solution
                u = freeze(got, fw.ys[:, j], u)
            back = solve_interval(solver, field, torch.stack([u, a], dim=1), r0, r1,
                                  max_steps=box.adjoint.max_steps or p.max_steps, quadrature=field.quadrature)
            u = back.u[:, 0]
            return back.u[:, 1], back

        a = backward_sweep(box, grad_z, interval)
        return (None, a, *field.quadrature.grads)


class _AugmentedField:
    """``d/dr [u, a] = [-F(-r, u), a^T ∂F/∂u]`` with the parameter quadrature kept on the side."""

    def __init__(self, fn: VectorField, quadrature: AbstractQuadrature):
        self.fn, self.quadrature = fn, quadrature

    def __call__(self, r: Tensor, y: Tensor) -> Tensor:
        f, vjp = self.quadrature.vjp(self.fn, -r, y[:, 0], y[:, 1])
        return torch.stack([-f, vjp], dim=1)
