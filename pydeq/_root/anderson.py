"""Anderson acceleration (type II), batched with a ring-buffer history."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._batched import combine, project, write_slot
from .._checks import check_fraction, check_int, check_positive, check_tolerances
from ._base import AbstractRootFinder

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


@dataclass(frozen=True, kw_only=True)
class Anderson(AbstractRootFinder):
    """Anderson acceleration (Anderson 1965; Walker & Ni 2011).

    With residuals ``G_i = f(z_i) - z_i`` of the last ``m = history`` iterates, solves
    ``min_a ||sum_i a_i G_i||^2 + regularisation ||a||^2`` subject to ``sum_i a_i = 1`` and steps to
    ``z <- damping sum_i a_i f(z_i) + (1 - damping) sum_i a_i z_i``.

    Args:
        rtol, atol: a sample stops when ``||f(z) - z|| <= atol + rtol ||f(z)||``.
        max_steps: iterations allowed (one f call each).
        history: ``m``, number of past iterates mixed.
        regularisation: Tikhonov term on the mixing weights, relative to the mean squared residual.
        damping: ``beta`` in (0, 1].
    """

    rtol: float = 1e-4
    atol: float = 1e-6
    max_steps: int = 50
    history: int = 5
    regularisation: float = 1e-4
    damping: float = 1.0

    def __post_init__(self) -> None:
        check_tolerances(self)
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
        alpha = self._weights(state, n)
        mix = combine(alpha, state.F[:, :n])
        if self.damping != 1.0:
            mix = mix - (1 - self.damping) * combine(alpha, state.G[:, :n])  # sum a_i z_i = sum a_i (f_i - g_i)
        z = mix.reshape(state.z.shape)
        return self._record(dataclasses.replace(state, z=z, fz=fn(z)))

    def _weights(self, state: _State, n: int) -> Tensor:
        """Mixing weights ``(batch, n)``: ``min ||G^T a||^2 + lam ||a||^2`` s.t. ``sum a = 1``."""
        GG = state.GG[:, :n, :n]
        # Tikhonov term relative to the mean squared residual; the floor keeps an all-zero history
        # (x = 0, a sample already exact) solvable
        scale = GG.diagonal(dim1=1, dim2=2).mean(1).clamp_min(torch.finfo(GG.dtype).tiny ** 0.5)
        eye = state.eye[:n, :n]
        # the constrained minimiser is a = y / sum(y) with (GG + lam I) y = 1
        lhs = GG + (self.regularisation * scale)[:, None, None] * eye
        y = torch.linalg.solve_ex(lhs, state.ones[:, :n])[0][..., 0]
        total = y.sum(1, keepdim=True)
        alpha = y / total
        if self.regularisation == 0:  # a singular Gram matrix (repeated residuals): take the newest iterate
            ok = torch.isfinite(alpha).all(1, keepdim=True) & (total.abs() > torch.finfo(GG.dtype).eps)
            alpha = torch.where(ok, alpha, eye[(state.k - 1) % self.history])
        return alpha

    def residual(self, state: _State) -> Tensor:
        return torch.linalg.vector_norm(state.G[:, (state.k - 1) % self.history], dim=1)

    def _record(self, state: _State) -> _State:
        """Store ``f(z) - z`` and ``f(z)`` in the next slot and update that row and column of the Gram matrix."""
        batch, slot, written = state.z.shape[0], state.k % self.history, min(state.k + 1, self.history)
        fz, z = state.fz.reshape(batch, -1), state.z.reshape(batch, -1)
        if state.G.requires_grad or fz.requires_grad or z.requires_grad:
            g = fz - z
            G = write_slot(state.G, slot, g)
        else:  # the residual is formed in its slot directly: one pass over the state instead of two
            G = state.G
            g = torch.sub(fz, z, out=G[:, slot])
        F = write_slot(state.F, slot, fz)
        row = project(g, G[:, :written])  # <g_i, g_new> over the written slots only
        GG = write_slot(write_slot(state.GG, slot, row), slot, row, dim=2)
        return dataclasses.replace(state, G=G, F=F, GG=GG, k=state.k + 1)
