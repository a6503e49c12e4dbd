"""The root-finder protocol and the one driver loop that runs every solver.

A solver is a frozen dataclass with ``rtol``, ``atol`` and ``max_steps`` and three methods:

* ``init(fn, z0) -> state``: build the state; ``state.z`` is the iterate and ``state.fz = fn(state.z)``.
* ``step(fn, state, active) -> state``: one iteration for the whole batch. ``active`` is a ``(batch,)``
  bool mask; samples outside it must not change (their ``z``/``fz`` are restored by the driver, and
  solvers that keep history must not learn from them).
* ``postprocess(state) -> dict``: solver data to keep in ``Solution.extras`` (e.g. Broyden factors).

The driver measures the residual ``||f(z) - z||`` per sample, stops each sample when
``residual <= atol + rtol * ||f(z)||``, keeps each sample's best iterate, and flags NaN/Inf.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._batched import batch_norm, freeze
from .._solution import Solution, Status

__all__ = ["AbstractRootFinder", "solve", "CountedFn", "IterateState", "batch_norm", "freeze"]


@dataclasses.dataclass
class IterateState:
    """The minimal solver state: the iterate ``z`` and ``fz = f(z)`` (solvers with no memory use it as is)."""

    z: Tensor
    fz: Tensor


class CountedFn:
    """Wraps ``fn(z)`` and counts its calls (each call is one batched evaluation)."""

    def __init__(self, fn: Callable[[Tensor], Tensor]):
        self.fn = fn
        self.calls = 0

    def __call__(self, z: Tensor) -> Tensor:
        self.calls += 1
        return self.fn(z)


class AbstractRootFinder(abc.ABC):
    """Base of every solver that :func:`pydeq.fixed_point` accepts (root finders and steady-state ODEs)."""

    rtol: float
    atol: float
    max_steps: int

    @abc.abstractmethod
    def init(self, fn: Callable[[Tensor], Tensor], z0: Tensor) -> Any: ...

    @abc.abstractmethod
    def step(self, fn: Callable[[Tensor], Tensor], state: Any, active: Tensor) -> Any: ...

    def postprocess(self, state: Any) -> dict:
        return {}

    def tolerance(self, state: Any) -> Tensor:
        """``(batch,)`` acceptance threshold ``atol + rtol * ||f(z)||``."""
        return self.atol + self.rtol * batch_norm(state.fz)

    def residual(self, state: Any) -> Tensor:
        """``(batch,)`` residual norm ``||f(z) - z||`` that defines convergence."""
        return batch_norm(state.fz - state.z)


def solve(solver: AbstractRootFinder, fn: Callable[[Tensor], Tensor], z0: Tensor, *,
          trace: bool = False) -> Solution:
    """Run ``solver`` on ``fn`` from ``z0`` until every sample converges, fails or ``max_steps``.

    Gradients flow through the loop when grad mode is on (that is the unrolled adjoint); the other
    adjoints call this under ``torch.no_grad()``.

    Returns:
        A :class:`Solution` whose ``z`` is each sample's best iterate.
    """
    batch = z0.shape[0]
    device = z0.device
    if batch == 0:  # an empty shard: nothing to solve, and solvers size buffers from z0[0]
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return Solution(z=z0, residual=z0.new_zeros(0), status=empty, nfe=0, steps=empty,
                        trace=[] if trace else None)
    counted = CountedFn(fn)
    state = solver.init(counted, z0)
    res = solver.residual(state)
    status = torch.full((batch,), int(Status.MAX_STEPS), dtype=torch.int64, device=device)
    steps = torch.zeros(batch, dtype=torch.int64, device=device)
    finite = res < torch.inf  # False for NaN and Inf alike
    done = finite & (res <= solver.tolerance(state))
    status.masked_fill_(done, int(Status.SUCCESS)).masked_fill_(~finite, int(Status.NONFINITE))
    active = finite & ~done
    best_z, best_res = state.z, torch.where(finite, res, torch.inf)
    history = [res.detach().clone()] if trace else None
    # The loop keeps best_res <= res for every sample, so `res < best_res` is already False for frozen samples
    # and for NaN. The (batch, *state)-sized selects run only when the masks are mixed, which counts read
    # together at the end of each step decide. While every sample is running, one host read (counts of the
    # improved and of the still-above-tolerance samples, and the residual sum, finite iff every residual is)
    # tells whether any sample stopped; only then are the status masks updated.
    it, n_active = 0, int(active.sum())
    for it in range(1, solver.max_steps + 1):
        if n_active == 0:
            it -= 1
            break
        everyone = n_active == batch
        new = solver.step(counted, state, active)
        if everyone:
            state, res = new, solver.residual(new)
        else:
            state = dataclasses.replace(new, z=freeze(active, new.z, state.z), fz=freeze(active, new.fz, state.fz))
            res = torch.where(active, solver.residual(state), res)
        better = res < best_res
        tol = solver.tolerance(state)
        quiet = False
        if everyone:
            n_better, n_above, total = torch.stack([better.sum(), (res > tol).sum(), res.sum()]).tolist()
            quiet = n_above == batch and math.isfinite(total)
        if not quiet:
            done = res <= tol
            broken = ~(res < torch.inf)
            if not everyone:
                done, broken = done & active, broken & active
            status.masked_fill_(done, int(Status.SUCCESS)).masked_fill_(broken, int(Status.NONFINITE))
            stopped = done | broken
            steps.masked_fill_(stopped, it)
            active = active ^ stopped
            n_better, n_active = torch.stack([better.sum(), active.sum()]).tolist()
        if n_better == batch:  # every sample improved: the iterate is the best one
            best_z, best_res = state.z, res
        elif n_better:
            best_z = freeze(better, state.z, best_z)
            best_res = torch.where(better, res, best_res)
        if trace:
            history.append(res.detach().clone())
    steps.masked_fill_(active, it)
    nonfinite = status == int(Status.NONFINITE)
    best_res = torch.where(nonfinite & torch.isinf(best_res), torch.nan, best_res)
    return Solution(z=best_z, residual=best_res.detach(), status=status, nfe=counted.calls,
                    steps=steps, trace=history, extras=solver.postprocess(state))
