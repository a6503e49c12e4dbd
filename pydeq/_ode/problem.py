"""What every gradient mode receives: the problem, and the forward solve and record they share."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._solution import Solution
from .adams import adams_forward
from .dense import OutputRecorder
from .integrate import ODERun, StepRecord, integrate
from .solvers import AbstractODESolver
from .step import VectorField
from .times import TimeGrid, directed
from .vcab3 import VCAB3

__all__ = ["ODEProblem", "AbstractODEAdjoint", "Forward", "solve_forward", "solve_untracked", "to_solution"]


@dataclass(frozen=True)
class ODEProblem:
    """``du/dt = fn(t, u)`` on the per-sample times ``grid``; ``params`` are the tensors gradients must reach
    besides ``u0``; ``event`` (an :class:`~pydeq.Event`) stops each sample where it fires."""

    fn: VectorField
    solver: AbstractODESolver
    grid: TimeGrid
    max_steps: int
    params: tuple[Tensor, ...]
    event: Any = None

    @property
    def field(self) -> VectorField:
        """The field in each sample's increasing variable ``s`` (see :func:`~pydeq._ode.times.directed`)."""
        return directed(self.fn, self.grid)


class AbstractODEAdjoint(abc.ABC):
    """Base of the gradient modes accepted by :func:`pydeq.odeint`, ``NeuralODE`` and ``HomoODE``."""

    @abc.abstractmethod
    def solve(self, problem: ODEProblem, u0: Tensor) -> Solution:
        """Integrate ``problem`` from ``u0: (batch, *state)``; ``solution.z`` carries the gradient: ``u(t1)``
        for an end-point problem or at the event, else ``(batch, n_times, *state)`` at the output times."""


@dataclass
class Forward:
    """A forward solve: the loop's record and, with output times, the trajectory ``ys: (batch, n, *state)``."""

    run: ODERun
    ys: Tensor | None
    event_calls: int = 0

    @property
    def z(self) -> Tensor:
        return self.run.u if self.ys is None else self.ys


def solve_forward(problem: ODEProblem, u0: Tensor, *, reuse_last_stage: bool = True,
                  observers: Sequence[Callable[[StepRecord], None]] = ()) -> Forward:
    """Run the loop on ``problem`` (dense output at the output times, event location) from ``u0``."""
    g = problem.grid
    if isinstance(problem.solver, VCAB3):  # a multistep method: its own loop, landing on every output time
        run, ys = adams_forward(problem.solver, problem.field, u0, g.s, max_steps=problem.max_steps,
                                outputs=not g.endpoint_only, observers=observers)
        return Forward(run=run, ys=ys)
    recorder = None
    if not g.endpoint_only:
        recorder = OutputRecorder(problem.solver.tableau, g.s, u0, g.s0)
        recorder.ys[:, 0] = u0
    locator = None if problem.event is None else problem.event.locator(problem, u0)
    run = integrate(problem.solver, problem.field, u0, g.s0, g.s1, max_steps=problem.max_steps, stops=g.s,
                    reuse_last_stage=reuse_last_stage, event=locator,
                    observers=(*observers, *(() if recorder is None else (recorder,))))
    return Forward(run=run, ys=None if recorder is None else recorder.ys,
                   event_calls=0 if locator is None else locator.calls)


def solve_untracked(problem: ODEProblem, u0: Tensor, *,
                    observers: Sequence[Callable[[StepRecord], None]] = ()) -> tuple[Forward, Tensor]:
    """:func:`solve_forward` without autograd, for an adjoint's ``autograd.Function``: the record and the output,
    a copy where the solve returns ``u0`` itself (a Function's output must be a new tensor)."""
    with torch.no_grad():
        forward = solve_forward(problem, u0, observers=observers)
    z = forward.z
    return forward, z.clone() if z is u0 else z


def to_solution(forward: Forward, problem: ODEProblem) -> Solution:
    """Pack a forward solve: ``residual`` is the time each sample had left, 0 when it reached the end."""
    run, g = forward.run, problem.grid
    extras = {"t": g.time(run.t), "accepted": run.accepted, "rejected": run.rejected}
    if run.hit is not None:
        extras["event"], extras["event_calls"] = run.hit, forward.event_calls
    left = (g.s1 - run.t).detach()
    if run.hit is not None:
        left = left.masked_fill(run.hit, 0.0)
    return Solution(z=forward.z, residual=left, status=run.status, nfe=run.nfe, steps=run.accepted + run.rejected,
                    extras=extras)
