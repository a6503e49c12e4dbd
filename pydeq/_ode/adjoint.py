"""How gradients flow through a fixed-horizon ODE solve: back-propagation through the solver (here), the
continuous backsolve adjoint (:mod:`~pydeq._ode.backsolve`) and checkpointed back-propagation
(:mod:`~pydeq._ode.checkpoint`).

Each adjoint takes an :class:`ODEProblem` and ``u0`` and returns a :class:`~pydeq.Solution` whose ``z``
carries the gradient. ``solution.backward`` is filled in when the backward pass runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .._solution import Solution
from .backsolve import BacksolveAdjoint
from .checkpoint import CheckpointAdjoint
from .problem import AbstractODEAdjoint, ODEProblem, solve_forward, to_solution

__all__ = ["ODEProblem", "AbstractODEAdjoint", "DirectAdjoint", "BacksolveAdjoint", "CheckpointAdjoint"]


@dataclass(frozen=True, kw_only=True)
class DirectAdjoint(AbstractODEAdjoint):
    """Back-propagate through every operation of the solver (discretise-then-optimise).

    Exact gradient of the computed solution on the step sequence taken; memory grows with the number of
    steps (every stage of every step is kept). ``solution.backward.nfe`` counts the VJPs through recorded
    calls of ``fn``.
    """

    def solve(self, problem: ODEProblem, u0: Tensor) -> Solution:
        forward = solve_forward(problem, u0)
        solution = to_solution(forward, problem)
        if solution.z.requires_grad:
            stats, nfe = solution.backward, forward.run.nfe
            probe = 1 if (problem.solver.adaptive and problem.solver.dt0 is None) else 0  # ran under no_grad

            def mark(grad: Tensor) -> None:
                stats.ran, stats.nfe = True, nfe - probe

            solution.z.register_hook(mark)
        return solution
