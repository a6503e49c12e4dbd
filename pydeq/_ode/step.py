"""One explicit Runge–Kutta step and the accept/reject/controller decision, per sample.

:func:`attempt_step` is the shared stepping of every integrator-like solver (the driver loop of
:func:`~pydeq._ode.integrate.integrate`; a steady-state solver can call it too): the stages, the embedded error
ratio in the method's norm, accept if the ratio is at most 1, and the controller's next step size clipped to
``[dtmin, dtmax]``. Decisions are made on detached values, so back-propagating through a step differentiates the
discrete scheme on the step sequence taken.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._norms import Norm, rms_norm
from .solvers import AbstractODESolver
from .tableau import ButcherTableau

__all__ = ["RKStep", "Attempt", "rk_stages", "rk_step", "error_ratio", "initial_dt", "initial_step",
           "attempt_step", "per_sample"]

VectorField = Callable[[Tensor, Tensor], Tensor]  # F(t: (batch,), u: (batch, *state)) -> (batch, *state)


def per_sample(h: Tensor, like: Tensor) -> Tensor:
    """``(batch,) -> (batch, 1, ..., 1)`` to broadcast against ``like``."""
    return h.reshape(h.shape + (1,) * (like.dim() - 1))


@dataclass
class RKStep:
    """One step's result: ``u_new``, the embedded error (``None`` without a pair), ``F(t + h, u_new)`` for FSAL
    tableaux (else ``None``) and the stages, a stage-major ``(stages, batch, *state)`` tensor without autograd or
    a list of ``(batch, *state)`` tensors with it (what dense output and event location interpolate)."""

    u_new: Tensor
    err: Tensor | None
    k_last: Tensor | None
    stages: Tensor | list[Tensor]


def rk_stages(tab: ButcherTableau, fn: VectorField, t: Tensor, u: Tensor, h: Tensor, k1: Tensor) -> RKStep:
    """One step of ``tab`` from ``(t, u)`` with per-sample step ``h: (batch,)`` and first stage ``k1 = F(t, u)``."""
    hb = per_sample(h, u)
    # Without autograd the stages go into one stage-major buffer and every combination sum_j a_ij k_j is one
    # vector-matrix product (a Tsit5 step: ~15 tensor ops instead of ~60). Autograd needs the stages as
    # separate tensors (an in-place write would invalidate the saved ones), so it takes the term-by-term path;
    # it is needed only if u or F(t, u) carries a graph (then every stage does; else none does).
    if torch.is_grad_enabled() and (u.requires_grad or k1.requires_grad or h.requires_grad):
        return _rk_stages_terms(tab, fn, t, u, hb, h, k1)
    K = k1.new_empty((len(tab.c),) + k1.shape)
    flat = K.view(K.shape[0], -1)  # (stages, batch * n): each combination is one vector-matrix product
    K[0] = k1
    u_stage = u
    for i, (ci, row) in enumerate(zip(tab.c[1:], tab.a, strict=True), start=1):
        u_stage = torch.addcmul(u, hb, _combine_stages(row, flat[:i], u))
        K[i] = fn(torch.add(t, h, alpha=ci), u_stage)
    if tab.fsal:
        u_new, k_last = u_stage, K[-1]  # the last stage was taken at u_new = u + h * sum b_i k_i
    else:
        u_new, k_last = torch.addcmul(u, hb, _combine_stages(tab.b, flat, u)), None
    err = None if tab.b_err is None else hb * _combine_stages(tab.b_err, flat, u)
    return RKStep(u_new=u_new, err=err, k_last=k_last, stages=K)


def rk_step(tab: ButcherTableau, fn: VectorField, t: Tensor, u: Tensor, h: Tensor,
            k1: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """:func:`rk_stages` without the stages: ``(u_new, err, k_last)``."""
    step = rk_stages(tab, fn, t, u, h, k1)
    return step.u_new, step.err, step.k_last


def _combine_stages(weights: tuple[float, ...], flat: Tensor, like: Tensor) -> Tensor:
    """``sum_j weights[j] * K[j]`` for flattened stages ``flat: (stages, batch * n)``, shaped like ``like``."""
    return (_weights(weights, flat.dtype, flat.device) @ flat).view(like.shape)


@functools.lru_cache(maxsize=256)
def _weights(weights: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor(weights, dtype=dtype, device=device)


def _rk_stages_terms(tab: ButcherTableau, fn: VectorField, t: Tensor, u: Tensor, hb: Tensor, h: Tensor,
                     k1: Tensor) -> RKStep:
    """:func:`rk_stages` with the stages kept as separate tensors (differentiable)."""
    ks = [k1]
    u_stage = u
    for ci, row in zip(tab.c[1:], tab.a, strict=True):
        incr = sum(aij * kj for aij, kj in zip(row, ks, strict=True) if aij != 0.0)
        u_stage = u + hb * incr
        ks.append(fn(t + ci * h, u_stage))
    if tab.fsal:
        u_new, k_last = u_stage, ks[-1]
    else:
        u_new, k_last = u + hb * sum(bi * ki for bi, ki in zip(tab.b, ks, strict=True) if bi != 0.0), None
    err = None
    if tab.b_err is not None:
        err = hb * sum(ei * ki for ei, ki in zip(tab.b_err, ks, strict=True) if ei != 0.0)
    return RKStep(u_new=u_new, err=err, k_last=k_last, stages=ks)


def error_ratio(err: Tensor, u: Tensor, u_new: Tensor, rtol: float, atol: float, norm: Norm = rms_norm) -> Tensor:
    """``(batch,)`` ``norm`` (RMS by default) of ``err / (atol + rtol * max(|u|, |u_new|))``; accept if <= 1."""
    scale = atol + rtol * torch.maximum(u.abs(), u_new.abs())
    return norm(err / scale)


@torch.no_grad()
def initial_dt(fn: VectorField, t: Tensor, u: Tensor, f0: Tensor, order: int, rtol: float, atol: float,
               norm: Norm = rms_norm) -> Tensor:
    """Per-sample first step (Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.4); one extra call of F."""
    scale = atol + rtol * u.abs()
    d0, d1 = norm(u / scale), norm(f0 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-30))
    f1 = fn(t + h0, u + per_sample(h0, u) * f0)
    d2 = norm((f1 - f0) / scale) / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(dmax <= 1e-15, torch.clamp_min(h0 * 1e-3, 1e-6),
                     (0.01 / dmax.clamp_min(1e-30)).pow(1.0 / (order + 1)))
    return torch.minimum(100 * h0, h1)


def initial_step(solver: AbstractODESolver, fn: VectorField, t: Tensor, u: Tensor, k1: Tensor | None) -> Tensor:
    """``(batch,)`` first step: the fixed ``dt``, else ``dt0``, else :func:`initial_dt`; within ``[dtmin, dtmax]``."""
    if not solver.adaptive:
        return torch.full_like(t, solver.dt)
    if solver.dt0 is not None:
        dt = torch.full_like(t, solver.dt0)
    else:
        dt = initial_dt(fn, t, u.detach(), k1.detach(), solver.tableau.error_order, solver.rtol, solver.atol,
                        norm=solver.norm)
    return dt.clamp(solver.dtmin, solver.dtmax)


@dataclass
class Attempt:
    """What :func:`attempt_step` decided, per sample (``(batch,)`` tensors besides ``step``).

    ``accept``: active and within tolerance (fixed steps: active and finite, so a rejected fixed step is a
    blow-up). ``dt_next``: the controller's next step (meaningful where active). ``prev_ratio``: the last
    accepted error ratio. ``stuck``: rejected at ``dtmin`` or below, so no smaller step may be tried.
    """

    step: RKStep
    accept: Tensor
    dt_next: Tensor
    prev_ratio: Tensor
    stuck: Tensor


def attempt_step(solver: AbstractODESolver, fn: VectorField, t: Tensor, u: Tensor, h: Tensor, k1: Tensor,
                 prev_ratio: Tensor, active: Tensor, *, rtol: float | None = None,
                 atol: float | None = None, norm: Norm | None = None) -> Attempt:
    """Try one step of size ``h: (batch,)`` from ``(t, u)``; accept, reject and pick the next step per sample.

    The error ratio is ``solver.norm`` of ``err / (atol + rtol * max(|u|, |u_new|))``; a step is accepted when
    it is at most 1. The next step is ``h`` times ``solver.controller.factor(...)``, clipped to
    ``[solver.dtmin, solver.dtmax]``. ``rtol``/``atol``/``norm`` override the solver's (``None``: the solver's
    own); :class:`~pydeq.SteadyState` passes its termination norm, so acceptance and termination agree.
    """
    step = rk_stages(solver.tableau, fn, t, u, h, k1)
    if not solver.adaptive:  # no error estimate: a fixed step is rejected only when it is not finite
        finite = torch.isfinite(step.u_new.detach().reshape(u.shape[0], -1)).all(dim=1)
        return Attempt(step=step, accept=active & finite, dt_next=h, prev_ratio=prev_ratio,
                       stuck=torch.zeros_like(active))
    rtol = solver.rtol if rtol is None else rtol
    atol = solver.atol if atol is None else atol
    norm = solver.norm if norm is None else norm
    ratio = error_ratio(step.err.detach(), u.detach(), step.u_new.detach(), rtol, atol, norm=norm)
    accept = active & (ratio <= 1)
    factor = solver.controller.factor(ratio, prev_ratio, solver.tableau.error_order, accept)
    dt_next = (h * factor).clamp(solver.dtmin, solver.dtmax)
    stuck = active & ~accept & (h <= solver.dtmin) if solver.dtmin > 0 else torch.zeros_like(accept)
    return Attempt(step=step, accept=accept, dt_next=dt_next, prev_ratio=torch.where(accept, ratio, prev_ratio),
                   stuck=stuck)
