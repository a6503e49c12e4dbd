"""Exact implicit-function-theorem gradient: one linear solve per backward pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._linear import GMRES, AbstractLinearSolver
from .._solution import Solution
from ._base import AbstractAdjoint, vjp_operator

__all__ = ["ImplicitAdjoint", "attach_hook", "with_value"]


def attach_hook(fn: Callable[[Tensor], Tensor], solution: Solution,
                correct: Callable[[Tensor, Callable[[Tensor], Tensor]], tuple[Tensor, Tensor | None]]) -> Tensor:
    """Return ``fn(z*)`` whose incoming gradient ``g`` is replaced by ``correct(g, K)`` with ``K(v) = v^T J_f``.

    Autograd then carries the corrected ``w`` through the one recorded f call to x and every parameter,
    giving ``w^T df/dtheta``. The same graph serves the vector-Jacobian products of the linear solve.
    """
    z_in = solution.z.detach().requires_grad_()
    with torch.enable_grad():
        z_out = fn(z_in)
    solution.nfe += 1
    if not z_out.requires_grad:
        return solution.z.detach()
    counter = [0]
    K = vjp_operator(z_in, z_out, counter)
    stats = solution.backward

    def hook(g: Tensor | None) -> Tensor | None:
        if g is None or g.shape[0] == 0:  # undefined gradient or empty batch: nothing to solve
            return g
        counter[0] = 0
        w, residual = correct(g, K)
        stats.nfe, stats.residual, stats.ran = counter[0] + 1, residual, True
        return w.to(g.dtype)

    out = with_value(z_out, solution.z)  # hook on a new node: K's autograd.grad calls start below it
    out.register_hook(hook)
    return out


def with_value(graph: Tensor, value: Tensor) -> Tensor:
    """A tensor equal to ``value`` whose gradient flows into ``graph``.

    The answer returned is the solver's ``z*`` itself (the iterate its residual and status describe) rather
    than ``f(z*)``, which is farther from the fixed point whenever f expands; gradients are unchanged.
    """
    return graph + (value.detach() - graph).detach()


@dataclass(frozen=True, kw_only=True)
class ImplicitAdjoint(AbstractAdjoint):
    """Exact gradient through the equilibrium (Bai, Kolter & Koltun 2019).

    For a loss ``L(z*)`` with ``z* = f(z*, x; theta)``: solve ``(I - J_f)^T w = dL/dz*`` with
    ``linear_solver``, then ``dL/dtheta = w^T df/dtheta`` and ``dL/dx = w^T df/dx`` by one
    back-propagation through f. ``Solution.backward`` records the matvecs and the solve's residual.

    Args:
        linear_solver: ``GMRES()`` (default), ``Neumann()`` or ``Direct()``.
    """

    linear_solver: AbstractLinearSolver = field(default_factory=GMRES)

    def __post_init__(self) -> None:
        if not isinstance(self.linear_solver, AbstractLinearSolver):
            raise TypeError(
                "ImplicitAdjoint.linear_solver must be GMRES(), Neumann() or Direct(); "
                f"got {type(self.linear_solver).__name__}."
            )

    def attach(self, fn: Callable[[Tensor], Tensor], solution: Solution) -> Tensor:
        def correct(g: Tensor, K: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
            sol = self.linear_solver.solve(K, g)
            return sol.w, sol.residual

        return attach_hook(fn, solution, correct)
