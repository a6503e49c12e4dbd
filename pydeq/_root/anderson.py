"""Anderson acceleration (type II), batched with a ring-buffer history."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._batched import combine, project, write_slot
from .._checks import check_fraction, check_int, check_positive
from .._norms import Norm, l2_norm, rms_norm
from ._base import AbstractRootFinder, Stagnation, check_stop_fields

__all__ = ["Anderson"]


@dataclass
class _State:
    z: Tensor
    fz: Tensor
    G: Tensor  # (batch, m, n) residuals f(z_i) - z_i of past iterates
    F: Tensor  # (batch, m, n) f of past iterates
    GG: Tensor  # (batch, m, m) Gram matrix of G, updated one row and column per step
    eye: Tensor  # (m, m) and (batch, m, 1) constants, made once per solve
    ones: Tensor
    k: int  # iterates stored so far; the newest sits in slot (k - 1) % m
    res: Tensor | None = None  # (batch,) norm(f(z) - z) read off the Gram diagonal (no-grad path), else None
    views: dict | None = None  # no-grad path: views of the in-place buffers, made once per solve (see _views)


class _Views:
    """Views of the in-place history buffers over the first ``n`` slots, and of each slot.

    The buffers are written in place when no gradient is recorded, so these views stay valid for the whole
    solve: made once instead of re-sliced every step (each view is a dispatch of ~1-2 us, and an Anderson step
    on a small state is made of a few dozen such costs).
    """

    def __init__(self, state: _State, n: int):
        self.GG, self.eye, self.ones = state.GG[:, :n, :n], state.eye[:n, :n], state.ones[:, :n]
        self.diag = self.GG.diagonal(dim1=1, dim2=2)
        self.F, self.G = state.F[:, :n], state.G[:, :n]
        self.Gt = self.G.transpose(1, 2)
        self.g_slot, self.f_slot = state.G.select(1, n - 1), state.F.select(1, n - 1)
        self.row, self.col = state.GG[:, n - 1], state.GG[:, :, n - 1]  # slot n - 1's, over all m slots


@dataclass(frozen=True, kw_only=True)
class Anderson(AbstractRootFinder):
    """Anderson acceleration (Anderson 1965; Walker & Ni 2011).

    With residuals ``G_i = f(z_i) - z_i`` of the last ``m = history`` iterates, solves
    ``min_a ||sum_i a_i G_i||^2 + regularisation ||a||^2`` subject to ``sum_i a_i = 1`` and steps to
    ``z <- damping sum_i a_i f(z_i) + (1 - damping) sum_i a_i z_i``.

    Args:
        rtol, atol, norm: a sample stops when ``norm(f(z) - z) <= atol + rtol * norm(f(z))``, ``norm`` per sample,
            default ``pydeq.rms_norm`` (modes and norms: :class:`~pydeq.AbstractRootFinder`).
        stagnation: a :class:`pydeq.Stagnation` rule (status ``STAGNATED``, best iterate) or ``None``.
        max_steps: iterations allowed (one f call each).
        history: ``m``, number of past iterates mixed.
        regularisation: Tikhonov term on the mixing weights, relative to the mean squared residual.
        damping: ``beta`` in (0, 1].
    """

    rtol: float = 1e-4
    atol: float = 1e-6
    max_steps: int = 50
    norm: Norm = rms_norm
    stagnation: Stagnation | None = Stagnation(patience=100)
    history: int = 5
    regularisation: float = 1e-4
    damping: float = 1.0

    def __post_init__(self) -> None:
        check_stop_fields(self)
        check_int("Anderson.history", self.history)
        check_positive("Anderson.regularisation", self.regularisation, allow_zero=True)
        check_fraction("Anderson.damping", self.damping)

    def init(self, fn: Callable[[Tensor], Tensor], z0: Tensor) -> _State:
        batch = z0.shape[0]
        fz = fn(z0)
        # slots are written before they are read: no zero fill (a fresh buffer's first touch is page faults)
        G = z0.new_empty(batch, self.history, z0[0].numel())
        F = torch.empty_like(G)
        GG = G.new_zeros(batch, self.history, self.history)
        eye, ones = torch.eye(self.history, dtype=G.dtype, device=G.device), G.new_ones(batch, self.history, 1)
        return self._record(_State(z=z0, fz=fz, G=G, F=F, GG=GG, eye=eye, ones=ones, k=0))

    def step(self, fn: Callable[[Tensor], Tensor], state: _State, active: Tensor) -> _State:
        n = min(state.k, self.history)
        if n == 1:  # one iterate: the mixing weight is 1, a (damped) fixed-point step
            z = state.fz if self.damping == 1.0 else state.z + self.damping * (state.fz - state.z)
            return self._record(dataclasses.replace(state, z=z, fz=fn(z)))
        v = self._views(state, n)
        alpha = self._weights(state, v)
        mix = combine(alpha, v.F)
        if self.damping != 1.0:
            mix = mix - (1 - self.damping) * combine(alpha, v.G)  # sum a_i z_i = sum a_i (f_i - g_i)
        z = mix.reshape(state.z.shape)
        return self._record(dataclasses.replace(state, z=z, fz=fn(z)))

    def _weights(self, state: _State, v: _Views) -> Tensor:
        """Weights ``(batch, n)`` over the slots of ``v``: ``min ||G^T a||^2 + lam ||a||^2`` s.t. ``sum a = 1``."""
        # Tikhonov term relative to the mean squared residual; the floor keeps an all-zero history
        # (x = 0, a sample already exact) solvable
        scale = v.diag.mean(1).clamp_min(torch.finfo(v.GG.dtype).tiny ** 0.5)
        eye = v.eye
        # the constrained minimiser is a = y / sum(y) with (GG + lam I) y = 1
        lhs = torch.addcmul(v.GG, scale[:, None, None], eye, value=self.regularisation)
        y = torch.linalg.solve_ex(lhs, v.ones)[0].squeeze(2)
        total = y.sum(1, keepdim=True)
        alpha = y / total
        if self.regularisation == 0:  # a singular Gram matrix (repeated residuals): take the newest iterate
            ok = torch.isfinite(alpha).all(1, keepdim=True) & (total.abs() > torch.finfo(v.GG.dtype).eps)
            alpha = torch.where(ok, alpha, eye[(state.k - 1) % self.history])
        return alpha

    def _views(self, state: _State, n: int) -> _Views:
        """The buffers' views over ``n`` slots: cached for the solve on the in-place path, fresh otherwise."""
        if state.views is None:
            return _Views(state, n)
        if n not in state.views:
            state.views[n] = _Views(state, n)
        return state.views[n]

    def residual(self, state: _State) -> Tensor:
        if state.res is not None:
            return state.res
        return self.norm(state.G[:, (state.k - 1) % self.history].reshape(state.z.shape))

    def _norm_from_square(self, square: Tensor, n: int) -> Tensor | None:
        """The residual's norm from its squared Euclidean norm, for the norms that allow it (else ``None``)."""
        if self.norm is l2_norm:
            return square.sqrt()
        if self.norm is rms_norm:
            return (square / max(n, 1)).sqrt()
        return None

    def _record(self, state: _State) -> _State:
        """Store ``f(z) - z`` and ``f(z)`` in the next slot and update that row and column of the Gram matrix."""
        batch, slot, written = state.z.shape[0], state.k % self.history, min(state.k + 1, self.history)
        fz, z = state.fz.reshape(batch, -1), state.z.reshape(batch, -1)
        if state.G.requires_grad or fz.requires_grad or z.requires_grad:  # DirectAdjoint: out of place
            g = fz - z
            G = write_slot(state.G, slot, g)
            F = write_slot(state.F, slot, fz)
            row = project(g, G[:, :written])  # <g_i, g_new> over the written slots only
            GG = write_slot(write_slot(state.GG, slot, row), slot, row, dim=2)
            return dataclasses.replace(state, G=G, F=F, GG=GG, k=state.k + 1, res=None)
        # in place: the residual is formed in its slot directly (one pass over the state instead of two), and its
        # norm is read off the new Gram diagonal entry instead of another pass
        if state.views is None:
            state = dataclasses.replace(state, views={})
        v, s = self._views(state, written), self._views(state, slot + 1)
        g = torch.sub(fz, z, out=s.g_slot)
        s.f_slot.copy_(fz)
        row = torch.bmm(g.unsqueeze(1), v.Gt).squeeze(1)  # <g_i, g_new> over the written slots only
        if written == self.history:
            s.row.copy_(row)
            s.col.copy_(row)
        else:  # before the ring buffer wraps, the slot is the newest of the written ones
            s.row[:, :written] = row
            s.col[:, :written] = row
        return dataclasses.replace(state, k=state.k + 1, res=self._norm_from_square(row[:, slot], g.shape[1]))
