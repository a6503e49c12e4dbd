"""The root-finder protocol and the one driver loop that runs every solver.

A solver is a frozen dataclass with ``rtol``, ``atol``, ``max_steps``, ``norm`` and ``stagnation`` and three methods:

* ``init(fn, z0) -> state``: build the state; ``state.z`` is the iterate and ``state.fz = fn(state.z)``.
* ``step(fn, state, active) -> state``: one iteration for the whole batch. ``active`` is a ``(batch,)``
  bool mask; samples outside it must not change (their ``z``/``fz`` are restored by the driver, and
  solvers that keep history must not learn from them).
* ``postprocess(state) -> dict``: solver data to keep in ``Solution.extras`` (e.g. Broyden factors).

The driver measures the residual ``norm(f(z) - z)`` per sample, stops each sample when
``norm(f(z) - z) <= atol + rtol * norm(f(z))`` (:func:`pydeq._norms.converged`), keeps each sample's best iterate,
flags NaN/Inf, and stops a sample whose best residual has stopped falling (:class:`Stagnation`) with status
``STAGNATED``.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._batched import freeze
from .._checks import check_int, check_positive, check_tolerances
from .._norms import Norm, check_norm, check_norm_output, converged
from .._solution import Solution, Status

__all__ = ["AbstractRootFinder", "Stagnation", "solve", "CountedFn", "IterateState", "check_stop_fields"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stagnation:
    """When a sample has stopped making progress: its best residual fell by less than ``min_decrease``
    (relative) over the last ``patience`` steps.

    Each sample keeps a reference level, its best residual when it last made progress. A step makes progress
    when the best residual drops to ``(1 - min_decrease) * reference`` or below; that resets the reference.
    A sample that goes ``patience`` steps without progress stops with ``Status.STAGNATED`` and returns its best
    iterate, instead of running to ``max_steps``. With the defaults a sample must cut its best residual by 1%
    within any 20 steps: a steady rate slower than ``0.99 ** (1 / 20) = 0.9995`` per step counts as stagnation
    (at that rate a tolerance of 1e-4 from a residual of 1 would take ~18,000 steps).

    The rule is DeepEquilibriumNetworks.jl's ``*_deq_default`` termination in spirit (there: stop after 30
    steps when the objective's max/min over a window is below 1.3), stated on the best residual so that an
    oscillating residual (an explicit ODE method at its stability limit, Broyden's non-monotone steps) is caught.

    Args:
        patience: steps without progress before a sample stops (int >= 1).
        min_decrease: relative decrease of the best residual that counts as progress, in [0, 1).
    """

    patience: int = 20
    min_decrease: float = 0.01

    def __post_init__(self) -> None:
        check_int("Stagnation.patience", self.patience)
        check_positive("Stagnation.min_decrease", self.min_decrease, allow_zero=True)
        if self.min_decrease >= 1:
            raise ValueError(f"Stagnation.min_decrease must be in [0, 1); got {self.min_decrease!r}. 0.01 is typical.")


def check_stagnation(where: str, value: Any) -> None:
    """Require a :class:`Stagnation` or ``None``."""
    if value is not None and not isinstance(value, Stagnation):
        raise TypeError(
            f"{where}.stagnation must be pydeq.Stagnation(patience=..., min_decrease=...) or None (never stop "
            f"early); got {type(value).__name__} {value!r}."
        )


def check_stop_fields(obj: Any) -> None:
    """Validate the fields every root finder carries: ``rtol``, ``atol``, ``max_steps``, ``norm``, ``stagnation``."""
    check_tolerances(obj)
    check_norm(type(obj).__name__, obj.norm)
    check_stagnation(type(obj).__name__, obj.stagnation)




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
    """Base of every solver that :func:`pydeq.fixed_point` accepts (root finders and steady-state ODEs).

    The fields every solver has:

    * ``rtol``, ``atol``: a sample stops when ``norm(f(z) - z) <= atol + rtol * norm(f(z))``; ``rtol = 0`` is an
      absolute test, ``atol = 0`` a relative one (DeepEquilibriumNetworks.jl's ``rel_norm``).
    * ``norm``: the per-sample norm ``(batch, *state) -> (batch,)`` of that test: ``pydeq.rms_norm`` (default; a
      tolerance means the same at any state size), ``pydeq.max_norm`` (every entry) or ``pydeq.l2_norm`` (the
      whole vector, growing like the square root of the state size).
    * ``stagnation``: a :class:`Stagnation` rule that stops a sample whose best residual stopped falling (status
      ``STAGNATED``, best iterate returned); ``None`` runs to ``max_steps``.
    * ``max_steps``: iterations allowed per sample.
    """

    rtol: float
    atol: float
    max_steps: int
    norm: Norm
    stagnation: Stagnation | None

    @abc.abstractmethod
    def init(self, fn: Callable[[Tensor], Tensor], z0: Tensor) -> Any: ...

    @abc.abstractmethod
    def step(self, fn: Callable[[Tensor], Tensor], state: Any, active: Tensor) -> Any: ...

    def postprocess(self, state: Any) -> dict:
        return {}

    def converged(self, state: Any, res: Tensor) -> Tensor:
        """``(batch,)`` bool: the stop test ``res <= atol + rtol * norm(f(z))`` for ``res = self.residual(state)``."""
        return converged(res, self.norm(state.fz), rtol=self.rtol, atol=self.atol)

    def residual(self, state: Any) -> Tensor:
        """``(batch,)`` residual ``norm(f(z) - z)`` that defines convergence."""
        return self.norm(state.fz - state.z)


def solve(solver: AbstractRootFinder, fn: Callable[[Tensor], Tensor], z0: Tensor, *,
          trace: bool = False) -> Solution:
    """Run ``solver`` on ``fn`` from ``z0`` until every sample converges, fails or ``max_steps``.

    Gradients flow through the loop when grad mode is on (that is :class:`~pydeq.DirectAdjoint`); the other
    adjoints call this under ``torch.no_grad()``.

    Returns:
        A :class:`Solution` whose ``z`` is each sample's best iterate.
    """
    batch = z0.shape[0]
    if batch == 0:  # an empty shard: nothing to solve, and solvers size buffers from z0[0]
        empty = torch.zeros(0, dtype=torch.int64, device=z0.device)
        return Solution(z=z0, residual=z0.new_zeros(0), status=empty, nfe=0, steps=empty,
                        trace=[] if trace else None)
    counted = CountedFn(fn)
    state = solver.init(counted, z0)
    res = solver.residual(state)
    check_norm_output(type(solver).__name__, res, batch)
    status, active = _initial_status(solver, state, res)
    steps = torch.zeros(batch, dtype=torch.int64, device=z0.device)
    best_z, best_res = state.z, torch.where(res < torch.inf, res, torch.inf)
    stall = _StallClock(solver.stagnation, best_res)
    history = [res.detach().clone()] if trace else None
    # The loop keeps best_res <= res for every sample, so `res < best_res` is already False for frozen samples
    # and for NaN. The (batch, *state)-sized selects run only when the masks are mixed, which counts read
    # together at the end of each step decide. While every sample is running, one host read (counts of the
    # improved, of the still-above-tolerance and of the stalled samples, and the residual sum, finite iff every
    # residual is) tells whether any sample stopped; only then are the status masks updated.
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
        done = solver.converged(state, res)
        stalled = stall.update(torch.where(better, res, best_res), it)
        quiet = False
        if everyone:  # with every residual finite (total finite), "none converged" is "every residual above tol"
            n_better, n_done, n_stalled, total = torch.stack(
                [better.sum(), done.sum(), stalled.sum(), res.sum()]).tolist()
            quiet = n_done == 0 and n_stalled == 0 and math.isfinite(total)
        if not quiet:
            active = _record_stops(status, steps, active, done, res, stalled, it, everyone)
            n_better, n_active = torch.stack([better.sum(), active.sum()]).tolist()
        best_z, best_res = _keep_best(better, n_better, state.z, res, best_z, best_res)
        if trace:
            history.append(res.detach().clone())
    steps.masked_fill_(active, it)
    nonfinite = status == int(Status.NONFINITE)
    best_res = torch.where(nonfinite & torch.isinf(best_res), torch.nan, best_res)
    return Solution(z=best_z, residual=best_res.detach(), status=status, nfe=counted.calls,
                    steps=steps, trace=history, extras=solver.postprocess(state))


def _initial_status(solver: AbstractRootFinder, state: Any, res: Tensor) -> tuple[Tensor, Tensor]:
    """Each sample's status before the first step (``SUCCESS`` if it starts converged, ``NONFINITE``, else
    ``MAX_STEPS`` until it stops) and the mask of samples still to iterate."""
    status = torch.full(res.shape, int(Status.MAX_STEPS), dtype=torch.int64, device=res.device)
    finite = res < torch.inf  # False for NaN and Inf alike
    done = finite & solver.converged(state, res)
    status.masked_fill_(done, int(Status.SUCCESS)).masked_fill_(~finite, int(Status.NONFINITE))
    return status, finite & ~done


def _record_stops(status: Tensor, steps: Tensor, active: Tensor, done: Tensor, res: Tensor, stalled: Tensor,
                  it: int, everyone: bool) -> Tensor:
    """Mark (in place) the samples that stopped at step ``it`` (converged, non-finite, stagnated, in that order of
    precedence) with their status and step count; return the mask of those still running."""
    broken = ~(res < torch.inf)
    if not everyone:
        done, broken = done & active, broken & active
    stalled = stalled & active & ~done & ~broken
    status.masked_fill_(done, int(Status.SUCCESS)).masked_fill_(broken, int(Status.NONFINITE))
    status.masked_fill_(stalled, int(Status.STAGNATED))
    stopped = done | broken | stalled
    steps.masked_fill_(stopped, it)
    return active ^ stopped


def _keep_best(better: Tensor, n_better: int, z: Tensor, res: Tensor, best_z: Tensor,
               best_res: Tensor) -> tuple[Tensor, Tensor]:
    """Each sample's best iterate and residual so far, selecting per sample only when the masks are mixed."""
    if n_better == better.numel():  # every sample improved: the iterate is the best one
        return z, res
    if n_better:
        return freeze(better, z, best_z), torch.where(better, res, best_res)
    return best_z, best_res


class _StallClock:
    """Per-sample progress bookkeeping of :class:`Stagnation`: the reference level and the step it was set."""

    def __init__(self, rule: Stagnation | None, best_res: Tensor):
        self.rule = rule
        self.level = best_res.detach().clone()
        self.since = torch.zeros(best_res.shape, dtype=torch.int64, device=best_res.device)
        self.never = torch.zeros(best_res.shape, dtype=torch.bool, device=best_res.device)

    def update(self, best_res: Tensor, it: int) -> Tensor:
        """``(batch,)`` mask of samples with ``patience`` steps and no progress, given the best residual so far."""
        if self.rule is None:
            return self.never
        best = best_res.detach()
        progress = best <= (1.0 - self.rule.min_decrease) * self.level
        self.level = torch.where(progress, best, self.level)
        self.since = torch.where(progress, it, self.since)
        return (it - self.since) >= self.rule.patience
