"""Checkpointed back-propagation through the solver: the exact gradient of the discrete solve in O(√steps) or
O(log steps) memory (Griewank 1992; Griewank & Walther, "Revolve", 2000; diffrax's default adjoint).

The forward pass runs without autograd and keeps, per step, only each sample's step size, accept flag, new time
and event fraction (a few bytes per sample), plus the state at a few steps (the checkpoints). The backward pass
re-executes the recorded steps from a checkpoint with autograd — the same steps, not a new solve: nothing is
decided again — and back-propagates through them one segment at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._batched import freeze
from .._checks import check_int
from .._solution import BackwardStats, Solution
from .dense import OutputRecorder, interpolate
from .integrate import StepRecord
from .problem import AbstractODEAdjoint, Forward, ODEProblem, solve_untracked, to_solution
from .step import rk_stages

__all__ = ["CheckpointAdjoint"]


@dataclass(frozen=True, kw_only=True)
class CheckpointAdjoint(AbstractODEAdjoint):
    """Back-propagate through the solver with recomputation: :class:`DirectAdjoint`'s gradient, less memory.

    Two schedules, for ``N`` steps of a state of size ``n`` per sample (Tsit5: 7 stages per step):

    * flat (default): the forward pass stores the state every ``segment`` steps; the backward pass replays
      each segment once with autograd. With ``segment=None`` the spacing starts at 1 and doubles whenever more
      than ``2 * spacing`` checkpoints are held, so it stays between ``sqrt(N/2)`` and ``sqrt(2N)``: memory
      O(√N · n) instead of DirectAdjoint's O(N · stages · n), for one extra forward pass.
    * ``recursive=True``: only ``u0`` is stored; the backward pass replays to the middle of a span (without
      autograd), recurses on the second half, then the first, down to spans of ``segment`` steps (``None``:
      4): memory O(log N · n), for about ``log2(N / segment) / 2`` extra forward passes.

    The gradient is exactly DirectAdjoint's (up to round-off: the replay runs the stages term by term, the
    autograd-free forward as one product) — unlike :class:`BacksolveAdjoint` it does not re-solve ``u``
    backward, so it is as stable as the forward solve. ``params`` are found as for ``BacksolveAdjoint``.
    ``solution.backward.nfe`` counts the field evaluations of the replays.
    """

    segment: int | None = None
    recursive: bool = False

    def __post_init__(self) -> None:
        if self.segment is not None:
            check_int("CheckpointAdjoint.segment", self.segment)
        if not isinstance(self.recursive, bool):
            raise TypeError(f"CheckpointAdjoint.recursive must be True or False; got {self.recursive!r}.")

    def solve(self, problem: ODEProblem, u0: Tensor) -> Solution:
        box = _Box(problem=problem, adjoint=self, stats=BackwardStats())
        z = _Checkpointed.apply(box, u0, *problem.params)
        solution = to_solution(box.forward, problem)
        solution.z, solution.backward = z, box.stats
        solution.extras["checkpoints"] = len(box.tape.states)
        return solution


class _Tape:
    """The forward pass's record: per-step decisions, and the states at the checkpointed steps."""

    def __init__(self, s0: Tensor, u0: Tensor, segment: int | None, recursive: bool):
        self.steps: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []  # (h, accept, s_next, theta) per step
        self.states: dict[int, tuple[Tensor, Tensor]] = {0: (s0, u0)}
        self.every, self.thin, self.recursive = segment or 1, segment is None, recursive

    def __call__(self, rec: StepRecord) -> None:
        self.steps.append((rec.h, rec.accept, rec.s_next, rec.theta))
        n = len(self.steps)
        if self.recursive or n % self.every:
            return
        self.states[n] = (rec.s_next, rec.u_next)
        if self.thin and len(self.states) > 2 * self.every:
            self.every *= 2
            self.states = {k: v for k, v in self.states.items() if k % self.every == 0}


@dataclass
class _Box:
    problem: ODEProblem
    adjoint: CheckpointAdjoint
    stats: BackwardStats
    forward: Forward | None = None
    tape: _Tape | None = None


class _Checkpointed(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, box: _Box, u0: Tensor, *params: Tensor) -> Tensor:
        p = box.problem
        box.tape = _Tape(p.grid.s0, u0, box.adjoint.segment, box.adjoint.recursive)
        ctx.box = box
        box.forward, z = solve_untracked(p, u0, observers=(box.tape,))
        return z

    @staticmethod
    def backward(ctx: Any, grad_z: Tensor) -> tuple[Tensor | None, ...]:
        box = ctx.box
        outputs = box.forward.ys is not None
        replay = _Replay(box.problem, box.tape, box.stats, outputs)
        a = torch.zeros_like(box.forward.run.u) if outputs else grad_z
        n, states = len(box.tape.steps), box.tape.states
        if box.adjoint.recursive:
            a = replay.bisect(0, n, states[0], a, grad_z, box.adjoint.segment or 4)
        else:
            marks = sorted(states) + [n]
            for i, j in reversed(list(zip(marks[:-1], marks[1:], strict=True))):
                a = replay.backprop(i, j, states[i], a, grad_z)
        if outputs:
            a = a + grad_z[:, 0]
        box.stats.ran = True
        return (None, a, *replay.grads)


class _Replay:
    """Re-executes recorded steps ``[i, j)`` from a stored state, with or without autograd."""

    def __init__(self, problem: ODEProblem, tape: _Tape, stats: BackwardStats, outputs: bool):
        self.p, self.tape, self.stats, self.outputs = problem, tape, stats, outputs
        self.field = problem.field
        self.grads = [torch.zeros_like(q) for q in problem.params]

    def _call(self, s: Tensor, u: Tensor) -> Tensor:
        self.stats.nfe += 1
        return self.field(s, u)

    def run(self, i: int, j: int, state: tuple[Tensor, Tensor],
            recorder: OutputRecorder | None) -> tuple[Tensor, Tensor]:
        """The state after steps ``[i, j)`` from ``state = (s_i, u_i)``; outputs in between go to ``recorder``."""
        tab = self.p.solver.tableau
        s, u = state
        k1 = None
        for h, accept, s_next, theta in self.tape.steps[i:j]:
            k1 = self._call(s, u) if k1 is None else k1
            step = rk_stages(tab, self._call, s, u, h, k1)
            u_next = freeze(accept, step.u_new, u)
            if self.p.event is not None:  # an event stopped the sample inside this step
                u_next = freeze(theta < 1, interpolate(tab, u, h, step.stages, theta), u_next)
            if recorder is not None:
                recorder(StepRecord(s=s, s_next=s_next, h=h, u=u, u_next=u_next, step=step, accept=accept,
                                    theta=theta))
            s, u = s_next, u_next
            k1 = freeze(accept, step.k_last, k1) if tab.fsal else None
        return s, u

    def backprop(self, i: int, j: int, state: tuple[Tensor, Tensor], a: Tensor, grad_z: Tensor) -> Tensor:
        """Cotangent of the state at step ``i`` from that at step ``j`` and the outputs written in between."""
        with torch.enable_grad():
            u_i = state[1].detach().requires_grad_(True)
            recorder = OutputRecorder(self.p.solver.tableau, self.p.grid.s, u_i, state[0]) if self.outputs else None
            _, u_j = self.run(i, j, (state[0], u_i), recorder)
            outs, cots = [u_j], [a]
            if recorder is not None and recorder.ys.requires_grad:
                outs.append(recorder.ys)
                cots.append(grad_z)
            grads = torch.autograd.grad(outs, [u_i, *self.p.params], cots, allow_unused=True)
        for acc, g in zip(self.grads, grads[1:], strict=True):
            if g is not None:
                acc.add_(g)
        return torch.zeros_like(a) if grads[0] is None else grads[0]

    def bisect(self, i: int, j: int, state: tuple[Tensor, Tensor], a: Tensor, grad_z: Tensor, leaf: int) -> Tensor:
        if j - i <= leaf:
            return self.backprop(i, j, state, a, grad_z)
        mid = (i + j) // 2
        with torch.no_grad():
            middle = self.run(i, mid, state, None)
        a = self.bisect(mid, j, middle, a, grad_z, leaf)
        return self.bisect(i, mid, state, a, grad_z, leaf)
