"""How gradients flow through a fixed-horizon ODE solve: back-propagation through the solver (here), the
continuous adjoints, backsolve (:mod:`~pydeq._ode.backsolve`) and interpolating (:mod:`~pydeq._ode.interpolating`),
and checkpointed back-propagation (:mod:`~pydeq._ode.checkpoint`).

Each adjoint takes an :class:`ODEProblem` and ``u0`` and returns a :class:`~pydeq.Solution` whose ``z``
carries the gradient. ``solution.backward`` is filled in when the backward pass runs.

:class:`DirectAdjoint` is also the fixed-point adjoint of the same idea (back-propagate through the root
finder's own iterations), so it lives here, where both protocols are in reach: this layer may import the
fixed-point adjoints' protocol (:mod:`pydeq._adjoint`), which never imports the ODE code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from .._adjoint import AbstractAdjoint
from .._solution import Solution
from .backsolve import BacksolveAdjoint
from .checkpoint import CheckpointAdjoint
from .interpolating import InterpolatingAdjoint
from .problem import AbstractODEAdjoint, ODEProblem, solve_forward, to_solution

__all__ = ["ODEProblem", "AbstractODEAdjoint", "DirectAdjoint", "BacksolveAdjoint", "CheckpointAdjoint",
           "InterpolatingAdjoint"]


@dataclass(frozen=True, kw_only=True)
class DirectAdjoint(AbstractODEAdjoint, AbstractAdjoint):
    """Back-propagate through every operation of the solver (discretise-then-optimise), as diffrax's
    ``DirectAdjoint``: the gradient of the computed answer exactly as computed.

    One adjoint for both kinds of solve:

    * an ODE solve (:func:`pydeq.odeint`, ``NeuralODE``, ``HomoODE``): the exact gradient of the computed
      solution on the step sequence taken; memory grows with the number of steps (every stage of every step is
      kept). ``solution.backward.nfe`` counts the VJPs through recorded calls of ``fn``.
    * a fixed-point solve (:func:`pydeq.fixed_point`, ``DEQ``; ``SteadyState`` included): the root finder runs
      with autograd recording, so the gradient is that of the returned iterate; memory grows with the number
      of iterations, and with a converged solve the gradient approaches the implicit one. It is the reference
      the other fixed-point adjoints are tested against.

    ``UnrolledAdjoint``, this adjoint's former name for fixed-point solves, is a deprecated alias.
    """

    unrolled: ClassVar[bool] = True  # fixed_point: run the solve with grad enabled

    def attach(self, fn: Callable[[Tensor], Tensor], solution: Solution) -> Tensor:
        return solution.z  # recorded by the solve already

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
