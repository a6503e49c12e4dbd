"""The times a solve runs between and reports at: an end point ``(t0, t1)``, or output times per sample.

Every sample integrates in its own variable ``s = d * t`` with ``d = ±1`` its direction, so ``s`` always increases
and the driver loop never runs backward; the vector field seen by the loop is ``d * F(d * s, u)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .step import VectorField, per_sample

__all__ = ["TimeGrid", "time_grid", "endpoint_grid", "directed"]


@dataclass(frozen=True)
class TimeGrid:
    """Per-sample times of one solve.

    Attributes:
        t: ``(batch, n)`` the times as given (may require grad); ``t[:, 0]`` is the start.
        s: ``(batch, n)`` ``direction * t``, detached and strictly increasing along each row.
        direction: ``(batch,)`` ``+1.0`` or ``-1.0``.
        forward: every sample runs forward (the field needs no sign flip).
        endpoint_only: the call gave ``(t0, t1)``: the answer is ``u(t1)``, not a trajectory.
    """

    t: Tensor
    s: Tensor
    direction: Tensor
    forward: bool
    endpoint_only: bool

    @property
    def s0(self) -> Tensor:
        return self.s[:, 0]

    @property
    def s1(self) -> Tensor:
        return self.s[:, -1]

    @property
    def n(self) -> int:
        return self.s.shape[1]

    def time(self, s: Tensor) -> Tensor:
        """Original time of the integration variable ``s: (batch,)``."""
        return s if self.forward else self.direction * s


def directed(fn: VectorField, grid: TimeGrid) -> VectorField:
    """``G(s, u) = d * F(d * s, u)``: the field in each sample's increasing variable ``s = d * t``."""
    if grid.forward:
        return fn
    d = grid.direction

    def field(s: Tensor, u: Tensor) -> Tensor:
        return per_sample(d, u).to(u.dtype) * fn(d * s, u)

    return field


def endpoint_grid(t0: float, t1: float, like: Tensor) -> TimeGrid:
    """The grid of an end-point call ``(t0, t1)``, ``t0 < t1``, for a batch shaped like ``like``."""
    t = torch.tensor([t0, t1], dtype=like.dtype, device=like.device).expand(like.shape[0], 2).contiguous()
    ones = torch.ones(like.shape[0], dtype=like.dtype, device=like.device)
    return TimeGrid(t=t, s=t, direction=ones, forward=True, endpoint_only=True)


def time_grid(t_span: Any, u0: Tensor, *, open_end: bool = False) -> TimeGrid:
    """Validate ``t_span`` (a pair, or a tensor of output times) against ``u0: (batch, *state)``.

    ``open_end``: the last time may be infinite (a solve that an event ends).
    """
    if isinstance(t_span, Tensor):
        return _output_times(t_span, u0, open_end)
    if isinstance(t_span, (str, bytes)) or not isinstance(t_span, Sequence):
        raise ValueError(f"t_span must be a pair (t0, t1) of numbers or a tensor of output times; got {t_span!r}.")
    try:
        t0, t1 = (float(t) for t in t_span)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"t_span must be a pair (t0, t1) of numbers or a tensor of output times; got {t_span!r}. "
                         "For several output times pass a 1-D tensor, e.g. torch.linspace(0, 1, 10).") from None
    if not (math.isfinite(t0) and (math.isfinite(t1) or open_end and t1 == math.inf)) or not t1 > t0:
        raise ValueError(f"t_span must be increasing and finite, t0 < t1; got ({t0}, {t1}). To integrate backward "
                         f"pass the times as a tensor, torch.tensor([{t0}, {t1}]) (output times may decrease).")
    return endpoint_grid(t0, t1, u0)


def _output_times(t: Tensor, u0: Tensor, open_end: bool) -> TimeGrid:
    batch = u0.shape[0]
    if not t.is_floating_point():
        raise TypeError(f"output times t must be floating point; got dtype={t.dtype}. Try t.to({u0.dtype}).")
    if t.dtype != u0.dtype:
        raise TypeError(f"output times t must have u0's dtype {u0.dtype} (each sample's clock runs in it); got "
                        f"{t.dtype}. Use t.to(u0.dtype).")
    if t.device != u0.device:
        raise ValueError(f"output times t must be on u0's device {u0.device}; got {t.device}. Use t.to(u0.device).")
    if t.dim() not in (1, 2) or t.dim() == 2 and t.shape[0] != batch:
        raise ValueError(f"output times t must be 1-D (n_times,) or per sample (batch, n_times) = ({batch}, n); "
                         f"got shape {tuple(t.shape)}.")
    if t.shape[-1] == 0:
        raise ValueError("output times t is empty; give at least the start time, e.g. torch.tensor([0.0, 1.0]).")
    body = t[..., :-1] if open_end else t
    if not bool(torch.isfinite(body).all()) or open_end and bool(torch.isnan(t[..., -1]).any()):
        raise ValueError(f"output times t contain {int((~torch.isfinite(body)).sum())} NaN/Inf value(s); every "
                         "time must be a finite number" + (" (only an event solve's end may be infinite)."
                                                           if open_end else "."))
    _check_monotone(t)
    t = t.expand(batch, t.shape[-1])
    down = t[:, -1] < t[:, 0]  # monotone rows: the ends give the direction (a single time runs forward)
    direction = torch.where(down, -1.0, 1.0).to(t.dtype)
    forward = not bool(down.any())
    s = (t.detach() if forward else per_sample(direction, t) * t.detach()).contiguous()  # searchsorted wants it
    return TimeGrid(t=t, s=s, direction=direction, forward=forward, endpoint_only=False)


def with_start_time(fn: VectorField, grid: TimeGrid, u0: Tensor) -> Tensor:
    """``u0`` whose gradient also reaches the start time: ``dL/dt_0 = -<dL/du0, F(t_0, u0)>`` (the flow moves
    with its start). ``u0`` itself when the times need no gradient."""
    if not grid.t.requires_grad:
        return u0
    t0 = grid.t[:, 0]
    with torch.no_grad():
        f0 = fn(t0.detach(), u0.detach())
    return u0 - per_sample(t0 - t0.detach(), u0) * f0


def with_output_times(fn: VectorField, grid: TimeGrid, ys: Tensor, u0: Tensor) -> tuple[Tensor, int]:
    """``ys: (batch, n, *state)`` whose gradient reaches the output times, ``dL/dt_j = <dL/dy_j, F(t_j, y_j)>``
    for ``j >= 1``; ``ys[:, 0]`` is ``u0`` (which does not move with ``t_0``). Returns ``(ys, calls of fn)``."""
    if not grid.t.requires_grad:
        return ys, 0
    cols = [u0]
    for j in range(1, grid.n):
        tj, yj = grid.t[:, j], ys[:, j]
        with torch.no_grad():
            fj = fn(tj.detach(), yj.detach())
        cols.append(yj + per_sample(tj - tj.detach(), yj) * fj)
    return torch.stack(cols, dim=1), grid.n - 1


def _check_monotone(t: Tensor) -> None:
    """Each row of ``t`` (or ``t`` itself) strictly increasing or strictly decreasing, else say where it is not."""
    rows = t.reshape(-1, t.shape[-1]).detach()
    dt = rows[:, 1:] - rows[:, :-1]
    bad = ~((dt > 0).all(dim=1) | (dt < 0).all(dim=1))
    if not bool(bad.any()):
        return
    row = int(bad.nonzero()[0, 0])
    wrong = (dt[row] == 0) | ((dt[row] > 0) != bool(dt[row, 0] > 0))
    col = int(wrong.nonzero()[0, 0]) + 1
    where = f" (row {row})" if t.dim() == 2 else ""
    shown = ", ".join(f"{float(v):.6g}" for v in rows[row, max(col - 1, 0) : col + 2])
    raise ValueError(f"output times t must be strictly increasing or strictly decreasing{where}; they change "
                     f"direction or repeat at index {col}: [{shown}]. Sort them (and drop duplicates), keeping the "
                     "start time first.")
