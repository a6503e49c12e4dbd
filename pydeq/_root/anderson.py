"""Anderson acceleration (type II), batched with a ring-buffer history."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_fraction, check_int, check_positive, check_tolerances
from ._base import AbstractRootFinder

__all__ = ["Anderson"]


@dataclass
class _State:
    z: Tensor
    fz: Tensor
    G: Tensor  # (batch, m, n) residuals f(z_i) - z_i of past iterates
    F: Tensor  # (batch, m, n) f of past iterates
    k: int


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
        G = z0.new_zeros(batch, self.history, z0[0].numel())
        F = torch.zeros_like(G)
        G = _put(G, 0, (fz - z0).reshape(batch, -1))  # residuals kept, not iterates: no buffer-wide F - X per step
        F = _put(F, 0, fz.reshape(batch, -1))
        return _State(z=z0, fz=fz, G=G, F=F, k=1)

    def step(self, fn: Callable[[Tensor], Tensor], state: _State, active: Tensor) -> _State:
        n = min(state.k, self.history)
        G, F = state.G[:, :n], state.F[:, :n]
        GG = G @ G.transpose(1, 2)  # (batch, n, n)
        scale = GG.diagonal(dim1=1, dim2=2).mean(1)
        # an all-zero history (x = 0, a sample already exact) would make the bordered system singular
        scale = torch.where(scale > torch.finfo(GG.dtype).tiny ** 0.5, scale, torch.ones_like(scale))
        eye = torch.eye(n, dtype=G.dtype, device=G.device)
        GG = GG + (self.regularisation * scale)[:, None, None] * eye
        # bordered system [[0, 1^T], [1, GG]] [mu, a] = [1, 0]
        H = G.new_zeros(G.shape[0], n + 1, n + 1)
        H[:, 0, 1:] = 1
        H[:, 1:, 0] = 1
        H[:, 1:, 1:] = GG
        rhs = G.new_zeros(G.shape[0], n + 1, 1)
        rhs[:, 0] = 1
        alpha = torch.linalg.solve(H, rhs)[:, 1:, 0]  # (batch, n)
        mix = (alpha[:, None] @ F)[:, 0]
        if self.damping != 1.0:
            mix = mix - (1 - self.damping) * (alpha[:, None] @ G)[:, 0]  # sum a_i z_i = sum a_i (f_i - g_i)
        z = mix.reshape(state.z.shape)
        fz = fn(z)
        slot = state.k % self.history
        Gn = _put(state.G, slot, (fz - z).reshape(z.shape[0], -1))
        Fn = _put(state.F, slot, fz.reshape(z.shape[0], -1))
        return _State(z=z, fz=fz, G=Gn, F=Fn, k=state.k + 1)


def _put(buf: Tensor, slot: int, row: Tensor) -> Tensor:
    """Out-of-place write of one history slot (keeps the unrolled adjoint's graph intact)."""
    if not (buf.requires_grad or row.requires_grad):
        buf[:, slot] = row
        return buf
    mask = torch.zeros(buf.shape[1], dtype=torch.bool, device=buf.device)
    mask[slot] = True
    return torch.where(mask[None, :, None], row[:, None], buf)
