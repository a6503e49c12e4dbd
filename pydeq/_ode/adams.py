"""The driver loop of the multistep method VCAB3 for :func:`pydeq.odeint`: per-sample clocks, one f call a step.

Each sample keeps its own time ``s``, step ``dt``, error ratio and its last two accepted derivatives and steps
(:class:`~pydeq._ode.vcab3.VCAB3` needs them for its weights). A step is cut so that it lands exactly on the
sample's next output time, so the trajectory at every output time is the method's own solution rather than its
dense output (:func:`~pydeq._ode.vcab3.ab_interpolate`). Step decisions are made on detached values: back-propagating
through the loop (``DirectAdjoint``) differentiates the discrete scheme on the step sequence taken. As in
:func:`~pydeq._ode.integrate.integrate`, observers see every pass's :class:`StepRecord` (its ``step`` an
:class:`~pydeq._ode.vcab3.AdamsStep`): the interpolating adjoint's tape, the parameter quadrature of a backward solve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._batched import freeze
from .._solution import Status
from .integrate import ODERun, StepRecord, _Counted, _finite
from .step import error_ratio, initial_dt
from .vcab3 import VCAB3, AdamsHistory, ab_proposal

__all__ = ["adams_forward"]


def _next_stop(stops: Tensor, k: Tensor) -> Tensor:
    """``(batch,)`` each sample's next output time ``stops[b, k_b]`` (the last one once all are passed)."""
    return stops.gather(1, k.clamp_max(stops.shape[1] - 1)[:, None]).squeeze(1)


def _record(ys: Tensor | None, k: Tensor, here: Tensor, u: Tensor) -> tuple[Tensor | None, Tensor]:
    """Write ``u`` into output slot ``k`` of the samples in ``here`` (out of place, so autograd keeps it) and move
    those samples on to their next output time."""
    if ys is None:
        return ys, k + here.long()
    slot = (torch.arange(ys.shape[1], device=k.device)[None] == k[:, None]) & here[:, None]
    return torch.where(slot.reshape(slot.shape + (1,) * (u.dim() - 1)), u[:, None], ys), k + here.long()


def adams_forward(solver: VCAB3, fn, u0: Tensor, stops: Tensor, *, max_steps: int, outputs: bool,
                  observers: Sequence[Callable[[StepRecord], None]] = ()) -> tuple[ODERun, Tensor | None]:
    """Integrate ``du/ds = fn(s, u)`` along each row of ``stops: (batch, n)`` (increasing; ``stops[:, 0]`` the
    start) with VCAB3; returns the run and, when ``outputs``, ``ys: (batch, n, *state)`` at the stops.
    ``observers`` are called after every pass, once its one call of ``fn`` is made."""
    counted = _Counted(fn)
    batch, device, dtype = u0.shape[0], u0.device, u0.dtype
    s0, s1 = stops[:, 0], stops[:, -1]
    eps = torch.finfo(dtype).eps
    scale = torch.maximum(s0.abs(), _finite(s1).abs())
    slack, floor = 64 * eps * scale, 16 * eps * torch.maximum(scale, _finite(s1 - s0))
    s, u = s0.clone(), u0
    f0 = counted(s, u)
    if solver.dt0 is not None:
        dt = torch.full_like(s, solver.dt0)
    else:
        dt = initial_dt(counted, s, u.detach(), f0.detach(), VCAB3.error_order, solver.rtol, solver.atol,
                        norm=solver.norm)
    dt = torch.minimum(dt.clamp(solver.dtmin, solver.dtmax), s1 - s0)
    past = AdamsHistory.empty(u0)
    ys = u0.new_zeros((batch, stops.shape[1], *u0.shape[1:])) if outputs else None
    k = torch.ones(batch, dtype=torch.int64, device=device)
    ys, _ = _record(ys, torch.zeros_like(k), torch.ones_like(s, dtype=torch.bool), u0)
    prev_ratio = torch.ones_like(s)
    active = s1 > s0
    status = torch.where(active, int(Status.MAX_STEPS), int(Status.SUCCESS)).to(torch.int64)
    accepted, rejected = torch.zeros_like(k), torch.zeros_like(k)
    for _ in range(max_steps):
        if not bool(active.any()):
            break
        target = _next_stop(stops, k)
        last = dt >= (target - s) - slack
        h = torch.where(active, torch.where(last, target - s, dt), torch.zeros_like(dt))
        step = ab_proposal(u, f0, past, h)
        u_new = step.u_new
        ratio = error_ratio(step.err.detach(), u.detach(), u_new.detach(), solver.rtol, solver.atol,
                            norm=solver.norm)
        accept = active & (ratio <= 1) & torch.isfinite(u_new.detach().reshape(batch, -1)).all(dim=1)
        s_new = torch.where(last, target, s + h)
        f_new = counted(s_new, u_new)  # the one call of the step: the next step's F_n
        rec = StepRecord(s=s, s_next=torch.where(accept, s_new, s), h=h, u=u, u_next=freeze(accept, u_new, u),
                         step=step, accept=accept, theta=torch.ones_like(h))
        for observe in observers:
            observe(rec)
        factor = solver.controller.factor(ratio, prev_ratio, VCAB3.error_order, accept)
        dt = torch.where(active, (h * factor).clamp(solver.dtmin, solver.dtmax), dt)
        past = past.shift(accept, f0, h)
        s, u, f0 = rec.s_next, rec.u_next, freeze(accept, f_new, f0)
        prev_ratio = torch.where(accept, ratio, prev_ratio)
        landed = accept & last
        ys, k = _record(ys, k, landed, u)
        accepted += accept.long()
        rejected += (active & ~accept).long()
        finished = landed & (k >= stops.shape[1])
        blown = active & ~accept & (dt <= floor)
        status = torch.where(finished, int(Status.SUCCESS), status)
        status = torch.where(blown, int(Status.NONFINITE), status)
        active = active & ~finished & ~blown
    run = ODERun(u=u, t=s, status=status, accepted=accepted, rejected=rejected, nfe=counted.calls)
    return run, ys
