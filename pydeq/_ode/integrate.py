"""The one driver loop that integrates a batch, each sample on its own clock.

Every sample carries its own time ``s``, step ``dt``, error ratio and accept/reject decision, so a sample's
trajectory does not depend on the batch it is solved in. Samples that reached ``s1`` (or failed, or hit an
event) are frozen. The loop always runs forward in ``s``; :mod:`~pydeq._ode.times` maps backward solves onto it.
What happens after a step besides moving the state (dense output, a recorded tape, the backsolve quadrature)
is an observer called with the :class:`StepRecord`; an event locator may cut a step short.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from .._batched import freeze
from .._solution import Status
from .solvers import AbstractODESolver
from .step import (  # noqa: F401  (rk_step, error_ratio, initial_dt: the stepping API other solvers import here)
    RKStep,
    VectorField,
    attempt_step,
    error_ratio,
    initial_dt,
    initial_step,
    per_sample,
    rk_step,
)
from .vcab3 import AdamsStep

__all__ = ["ODERun", "StepRecord", "integrate", "rk_step", "error_ratio", "initial_dt", "check_field_output",
           "VectorField"]

_per_sample = per_sample  # the old private name, kept for callers inside pydeq


@dataclass
class StepRecord:
    """One pass of the loop: each sample went from ``(s, u)`` by a step of ``h`` to ``(s_next, u_next)``.

    ``accept: (batch,)``; where it is False, ``s_next == s`` and ``u_next == u``; ``h`` is 0 for samples that
    have stopped (finished or failed). ``step`` holds the stages (for dense output): an :class:`RKStep`, or
    VCAB3's :class:`~pydeq._ode.vcab3.AdamsStep` in its own loop. ``theta: (batch,)`` is 1 except where an event
    cut the step at ``s + theta h``.
    """

    s: Tensor
    s_next: Tensor
    h: Tensor
    u: Tensor
    u_next: Tensor
    step: RKStep | AdamsStep
    accept: Tensor
    theta: Tensor


class EventLocator(Protocol):
    """Finds where, within an accepted step, a sample's event function crosses zero."""

    def locate(self, rec: StepRecord) -> tuple[Tensor, Tensor, Tensor]:
        """``(hit: (batch,) bool, theta: (batch,), u_event)`` for the step just taken."""


@dataclass
class ODERun:
    """What :func:`integrate` returns; every tensor is ``(batch,)`` except ``u``. ``hit`` marks the samples
    stopped by an event (``None`` without one)."""

    u: Tensor
    t: Tensor
    status: Tensor
    accepted: Tensor
    rejected: Tensor
    nfe: int
    hit: Tensor | None = None


def check_field_output(out: Any, u: Tensor, *, name: str = "fn(t, u)", hint: str = "") -> None:
    """Reject a field value whose shape or dtype differs from the state's (it would broadcast or promote)."""
    if isinstance(out, Tensor) and out.shape == u.shape and out.dtype == u.dtype:
        return
    got = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, Tensor) else type(out).__name__
    raise ValueError(f"{name} must return the shape and dtype of u, {tuple(u.shape)} {u.dtype}; got {got}. "
                     + (hint or "Return one derivative per entry of u, in u's dtype (e.g. out.to(u.dtype))."))


class _Counted:
    """Calls the field, checks every answer's shape and dtype, counts the batched calls."""

    def __init__(self, fn: VectorField):
        self.fn, self.calls = fn, 0

    def __call__(self, t: Tensor, u: Tensor) -> Tensor:
        self.calls += 1
        out = self.fn(t, u)
        check_field_output(out, u)
        return out


def _finite(x: Tensor) -> Tensor:
    """``x`` with infinities replaced by 0 (an open end, ``t1 = inf``, sets no scale)."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _targets(solver: AbstractODESolver, s: Tensor, s0: Tensor, s1: Tensor, dt: Tensor, grid_k: Tensor,
             stops: Tensor | None, slack: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(h, s_next, on_grid)``: the step each sample tries and where it lands if accepted.

    Adaptive steps are cut to land on ``s1``; fixed steps run on the grid ``s0 + k dt`` and are cut to land on
    every stop (output time). Landing points are assigned exactly, so no sliver of a step is left over: a target
    within ``slack`` (a few ulps of the clock) of the next one is snapped to it.
    """
    if solver.adaptive:
        last = dt >= (s1 - s) - slack
        return torch.where(last, s1 - s, dt), torch.where(last, s1, s + dt), grid_k
    # fixed: k dt from s0, not a running sum, so k steps of (s1 - s0) / k land on s1 without a sliver
    grid = s0 + (grid_k + 1).to(s.dtype) * solver.dt
    if stops is None:
        stop = s1
    else:
        idx = torch.searchsorted(stops, s[:, None].contiguous(), right=True).clamp_max(stops.shape[1] - 1)
        stop = stops.gather(1, idx).squeeze(1)
    snap = grid >= stop - slack
    target = torch.where(snap, stop, grid)
    on_grid = grid_k + (grid <= stop + slack).long()
    return target - s, target, on_grid


def integrate(solver: AbstractODESolver, fn: VectorField, u0: Tensor, s0: Tensor, s1: Tensor, *,
              max_steps: int, stops: Tensor | None = None, reuse_last_stage: bool = True,
              observers: Sequence[Callable[[StepRecord], None]] = (), event: EventLocator | None = None) -> ODERun:
    """Integrate ``du/ds = fn(s, u)`` from per-sample ``s0: (batch,)`` to ``s1: (batch,)``, ``s1 >= s0``.

    Args:
        solver: the method; fixed-step when ``solver.adaptive`` is False.
        fn: the vector field, called on the whole batch with per-sample times ``s: (batch,)``.
        u0: ``(batch, *state)``.
        max_steps: attempted steps (accepted + rejected) per sample before status ``MAX_STEPS``.
        stops: ``(batch, n)`` increasing times that fixed steps land on (the output times); adaptive steps
            ignore them (dense output reaches the output times between steps).
        reuse_last_stage: use FSAL when the tableau has it. The backsolve adjoint turns it off so that
            every stage of a step is evaluated (and recorded) within that step.
        observers: called after every step with its :class:`StepRecord` (dense output, tapes, quadratures).
        event: stops a sample inside the step where its event function crosses zero.
    """
    tab, counted = solver.tableau, _Counted(fn)
    batch, device = u0.shape[0], u0.device
    eps = torch.finfo(u0.dtype).eps
    fsal = reuse_last_stage and tab.fsal
    s, u = s0.clone(), u0
    k1 = counted(s, u) if (fsal or solver.adaptive) else None
    dt = torch.minimum(initial_step(solver, counted, s, u, k1), s1 - s0)
    prev_ratio, grid_k = torch.ones_like(s), torch.zeros(batch, dtype=torch.int64, device=device)
    active = s1 > s0
    status = torch.where(active, int(Status.MAX_STEPS), int(Status.SUCCESS)).to(torch.int64)
    accepted, rejected = torch.zeros_like(grid_k), torch.zeros_like(grid_k)
    hit_any = torch.zeros_like(active) if event is not None else None
    scale = torch.maximum(s0.abs(), _finite(s1).abs())  # bounds |s| on the whole run (s0 <= s <= s1)
    slack = 64 * eps * scale
    floor = 16 * eps * torch.maximum(scale, _finite(s1 - s0))  # a rejected step below it is round-off: a blow-up
    for _ in range(max_steps):
        if not bool(active.any()):
            break
        h, s_target, on_grid = _targets(solver, s, s0, s1, dt, grid_k, stops, slack)
        h = torch.where(active, h, torch.zeros_like(h))
        att = attempt_step(solver, counted, s, u, h, k1 if fsal else counted(s, u), prev_ratio, active)
        accept = att.accept
        rec = StepRecord(s=s, s_next=torch.where(accept, s_target, s), h=h, u=u,
                         u_next=freeze(accept, att.step.u_new, u), step=att.step, accept=accept,
                         theta=torch.ones_like(h))
        hit = None
        if event is not None:
            hit, theta, u_event = event.locate(rec)
            rec.theta = torch.where(hit, theta, rec.theta)
            rec.s_next = torch.where(hit, s + theta * h, rec.s_next)
            rec.u_next = freeze(hit, u_event, rec.u_next)
            hit_any = hit_any | hit
        for observe in observers:
            observe(rec)
        if solver.adaptive:
            dt = torch.where(active, att.dt_next, dt)
            blown = active & ~accept & (dt <= floor)
        else:
            grid_k = torch.where(accept, on_grid, grid_k)
            blown = active & ~accept
        prev_ratio = att.prev_ratio
        s, u = rec.s_next, rec.u_next
        if fsal:
            k1 = freeze(accept, att.step.k_last, k1)
        accepted += accept.long()
        rejected += (active & ~accept).long()
        finished = accept & (s >= s1) if hit is None else accept & ((s >= s1) | hit)
        status = torch.where(finished, int(Status.SUCCESS), status)
        status = torch.where(blown, int(Status.NONFINITE), status)
        status = torch.where(att.stuck, int(Status.STEP_TOO_SMALL), status)
        active = active & ~finished & ~blown & ~att.stuck
    return ODERun(u=u, t=s, status=status, accepted=accepted, rejected=rejected, nfe=counted.calls, hit=hit_any)
