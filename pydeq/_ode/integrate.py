"""One explicit Runge–Kutta step and the one driver loop that integrates a batch, each sample on its own clock.

Every sample carries its own time ``t``, step ``dt``, error ratio and accept/reject decision, so a sample's
trajectory does not depend on the batch it is solved in. Samples that reached ``t1`` (or failed) are frozen.
The step-size decisions are made on detached values: back-propagating through the loop (``DirectAdjoint``)
differentiates the discrete scheme on the step sequence it took.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._batched import freeze
from .._norms import Norm, rms_norm
from .._solution import Status
from .solvers import AbstractODESolver
from .tableau import ButcherTableau

__all__ = ["ODERun", "integrate", "rk_step", "error_ratio", "initial_dt"]

VectorField = Callable[[Tensor, Tensor], Tensor]  # F(t: (batch,), u: (batch, *state)) -> (batch, *state)


def _per_sample(h: Tensor, like: Tensor) -> Tensor:
    """``(batch,) -> (batch, 1, ..., 1)`` to broadcast against ``like``."""
    return h.reshape(h.shape + (1,) * (like.dim() - 1))


def rk_step(tab: ButcherTableau, fn: VectorField, t: Tensor, u: Tensor, h: Tensor,
            k1: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One step of ``tab`` from ``(t, u)`` with per-sample step ``h: (batch,)`` and first stage ``k1 = F(t, u)``.

    Returns:
        ``(u_new, err, k_last)``: the new state, the embedded error ``h * sum_i b_err_i k_i`` (``None``
        without an embedded pair) and, for FSAL tableaux, ``F(t + h, u_new)`` (else ``None``).
    """
    hb = _per_sample(h, u)
    # Without autograd the stages go into one stage-major buffer and every combination sum_j a_ij k_j is one
    # vector-matrix product (a Tsit5 step: ~15 tensor ops instead of ~60). Autograd needs the stages as
    # separate tensors (an in-place write would invalidate the saved ones), so it takes the term-by-term path.
    if torch.is_grad_enabled():
        return _rk_step_terms(tab, fn, t, u, hb, h, k1)
    K = k1.new_empty((len(tab.c),) + k1.shape)
    K[0] = k1
    u_stage = u
    for i, (ci, row) in enumerate(zip(tab.c[1:], tab.a, strict=True), start=1):
        u_stage = torch.addcmul(u, hb, _combine_stages(row, K[:i]))
        K[i] = fn(t + ci * h, u_stage)
    if tab.fsal:
        u_new, k_last = u_stage, K[-1]  # the last stage was taken at u_new = u + h * sum b_i k_i
    else:
        u_new, k_last = torch.addcmul(u, hb, _combine_stages(tab.b, K)), None
    err = None if tab.b_err is None else hb * _combine_stages(tab.b_err, K)
    return u_new, err, k_last


def _combine_stages(weights: tuple[float, ...], K: Tensor) -> Tensor:
    """``sum_j weights[j] * K[j]`` for stage-major ``K: (stages, batch, *state)``, as one product."""
    return (_weights(weights, K.dtype, K.device) @ K.reshape(K.shape[0], -1)).reshape(K.shape[1:])


@functools.lru_cache(maxsize=256)
def _weights(weights: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor(weights, dtype=dtype, device=device)


def _rk_step_terms(tab: ButcherTableau, fn: VectorField, t: Tensor, u: Tensor, hb: Tensor, h: Tensor,
                   k1: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """:func:`rk_step` with the stages kept as separate tensors (differentiable)."""
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
    return u_new, err, k_last


def error_ratio(err: Tensor, u: Tensor, u_new: Tensor, rtol: float, atol: float, norm: Norm = rms_norm) -> Tensor:
    """``(batch,)`` ``norm`` (RMS by default) of ``err / (atol + rtol * max(|u|, |u_new|))``; accept if <= 1."""
    scale = atol + rtol * torch.maximum(u.abs(), u_new.abs())
    return norm(err / scale)


@torch.no_grad()
def initial_dt(fn: VectorField, t: Tensor, u: Tensor, f0: Tensor, order: int, rtol: float, atol: float) -> Tensor:
    """Per-sample first step (Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.4); one extra call of F."""
    scale = atol + rtol * u.abs()
    d0, d1 = rms_norm(u / scale), rms_norm(f0 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-30))
    f1 = fn(t + h0, u + _per_sample(h0, u) * f0)
    d2 = rms_norm((f1 - f0) / scale) / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(dmax <= 1e-15, torch.clamp_min(h0 * 1e-3, 1e-6),
                     (0.01 / dmax.clamp_min(1e-30)).pow(1.0 / (order + 1)))
    return torch.minimum(100 * h0, h1)


@dataclass
class ODERun:
    """What :func:`integrate` returns; every tensor is ``(batch,)`` except ``u``."""

    u: Tensor
    t: Tensor
    status: Tensor
    accepted: Tensor
    rejected: Tensor
    nfe: int


def integrate(solver: AbstractODESolver, fn: VectorField, u0: Tensor, t0: Tensor, t1: Tensor, *,
              max_steps: int, reuse_last_stage: bool = True,
              on_accept: Callable[[Tensor, Tensor], None] | None = None) -> ODERun:
    """Integrate ``du/dt = fn(t, u)`` from per-sample ``t0: (batch,)`` to ``t1: (batch,)``.

    Args:
        solver: the method; fixed-step when ``solver.dt`` is set.
        fn: the vector field, called on the whole batch with per-sample times ``t: (batch,)``.
        u0: ``(batch, *state)``.
        max_steps: attempted steps (accepted + rejected) per sample before status ``MAX_STEPS``.
        reuse_last_stage: use FSAL when the tableau has it. The backsolve adjoint turns it off so that
            every stage of a step is evaluated (and recorded) within that step.
        on_accept: called after each step with ``(accepted: (batch,) bool, h: (batch,))``; the backsolve
            adjoint uses it to add the parameter quadrature of the accepted steps.
    """
    tab = solver.tableau
    calls = [0]

    def counted(t: Tensor, u: Tensor) -> Tensor:
        calls[0] += 1
        return fn(t, u)

    batch, device = u0.shape[0], u0.device
    eps = torch.finfo(u0.dtype).eps
    fsal = reuse_last_stage and tab.fsal
    t, u = t0.clone(), u0
    span = t1 - t0
    k1 = counted(t, u) if (fsal or solver.adaptive) else None
    if not solver.adaptive:
        dt = torch.full_like(t, solver.dt)
    elif solver.dt0 is not None:
        dt = torch.full_like(t, solver.dt0)
    else:
        dt = initial_dt(counted, t, u.detach(), k1.detach(), tab.error_order, solver.rtol, solver.atol)
    dt = torch.minimum(dt, span)
    prev_ratio = torch.ones_like(t)
    active = span > 0
    status = torch.where(active, int(Status.MAX_STEPS), int(Status.SUCCESS)).to(torch.int64)
    accepted = torch.zeros(batch, dtype=torch.int64, device=device)
    rejected = torch.zeros_like(accepted)
    for _ in range(max_steps):
        if not bool(active.any()):
            break
        remaining = t1 - t
        # snap to t1 when within rounding of it, so no sliver of a step is left over
        last = dt >= remaining - 64 * eps * torch.maximum(t.abs(), t1.abs())
        h = torch.where(active, torch.where(last, remaining, dt), torch.zeros_like(dt))
        u_new, err, k_last = rk_step(tab, counted, t, u, h, k1 if fsal else counted(t, u))
        if solver.adaptive:
            ratio = error_ratio(err.detach(), u.detach(), u_new.detach(), solver.rtol, solver.atol)
            accept = active & (ratio <= 1)
            factor = solver.controller.factor(ratio, prev_ratio, tab.error_order, accept)
            dt = torch.where(active, h * factor, dt)
            prev_ratio = torch.where(accept, ratio, prev_ratio)
            blown = active & ~accept & (dt <= 16 * eps * torch.maximum(t.abs(), span.abs()))
        else:
            accept = active
            blown = active & ~torch.isfinite(u_new.detach().reshape(batch, -1)).all(dim=1)
            accept = accept & ~blown
        u = freeze(accept, u_new, u)
        # fixed steps: t0 + k * dt, not a running sum, so k steps of t1 / k land on t1 without a sliver
        t_new = t + h if solver.adaptive else t0 + (accepted + 1).to(t.dtype) * solver.dt
        t = torch.where(accept, torch.where(last, t1, t_new), t)
        if fsal:
            k1 = freeze(accept, k_last, k1)
        if on_accept is not None:
            on_accept(accept, h)
        accepted += accept.long()
        rejected += (active & ~accept).long()
        finished = accept & last
        status = torch.where(finished, int(Status.SUCCESS), status)
        status = torch.where(blown, int(Status.NONFINITE), status)
        active = active & ~finished & ~blown
    return ODERun(u=u, t=t, status=status, accepted=accepted, rejected=rejected, nfe=calls[0])
