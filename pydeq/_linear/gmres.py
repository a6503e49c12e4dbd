"""Batched restarted GMRES for ``(I - K) w = b`` with per-sample convergence."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_int, check_positive
from ._base import AbstractLinearSolver, LinearSolution

__all__ = ["GMRES"]


def _flat_norm(v: Tensor) -> Tensor:
    return torch.linalg.vector_norm(v, dim=1)


@dataclass(frozen=True, kw_only=True)
class GMRES(AbstractLinearSolver):
    """Restarted GMRES (Saad & Schultz 1986), batched: one Krylov basis per sample.

    Minimises ``||b - A w||`` over ``w0 + span{r0, A r0, ...}`` with ``A = I - K``; a sample stops when
    ``||b - A w|| <= atol + rtol * ||b||``. Each inner iteration costs one call of ``K`` on the whole batch.

    Args:
        rtol, atol: per-sample stopping tolerance on the residual norm.
        restart: Krylov subspace size before a restart.
        max_steps: total matvecs allowed.
    """

    rtol: float = 1e-6
    atol: float = 1e-10
    restart: int = 20
    max_steps: int = 60

    def __post_init__(self) -> None:
        check_positive("GMRES.rtol", self.rtol, allow_zero=True)
        check_positive("GMRES.atol", self.atol, allow_zero=True)
        check_int("GMRES.restart", self.restart)
        check_int("GMRES.max_steps", self.max_steps)

    def solve(self, K: Callable[[Tensor], Tensor], b: Tensor, w0: Tensor | None = None) -> LinearSolution:
        shape, batch = b.shape, b.shape[0]
        bf = b.reshape(batch, -1)

        def A(v: Tensor) -> Tensor:
            return v - K(v.reshape(shape)).reshape(batch, -1)

        w = torch.zeros_like(bf) if w0 is None else w0.reshape(batch, -1).clone()
        tol = self.atol + self.rtol * _flat_norm(bf)
        matvecs = 0
        r = bf - A(w) if w0 is not None else bf.clone()
        matvecs += int(w0 is not None)
        res = _flat_norm(r)
        while matvecs < self.max_steps:
            active = res > tol
            if not bool(active.any()):
                break
            dw, used = self._cycle(A, r, res, tol, self.max_steps - matvecs)
            matvecs += used
            w = w + torch.where(active[:, None], dw, torch.zeros_like(dw))
            r = bf - A(w)
            matvecs += 1
            res = _flat_norm(r)
        return LinearSolution(w=w.reshape(shape), residual=res, matvecs=matvecs)

    def _cycle(self, A, r: Tensor, beta: Tensor, tol: Tensor, budget: int) -> tuple[Tensor, int]:
        """One Arnoldi cycle from residual ``r``; returns the correction and matvecs used."""
        batch, m = r.shape[0], min(self.restart, budget)
        tiny = torch.finfo(r.dtype).tiny ** 0.5
        basis = [r / beta.clamp_min(tiny)[:, None]]
        hess = r.new_zeros(batch, m + 1, m)
        e1 = r.new_zeros(batch, m + 1)
        e1[:, 0] = beta
        y = r.new_zeros(batch, 0)
        for j in range(m):
            v = A(basis[j])
            for i in range(j + 1):  # modified Gram-Schmidt
                h = (v * basis[i]).sum(1)
                hess[:, i, j] = h
                v = v - h[:, None] * basis[i]
            hn = _flat_norm(v)
            hess[:, j + 1, j] = hn
            basis.append(torch.where(hn[:, None] > tiny, v / hn.clamp_min(tiny)[:, None], torch.zeros_like(v)))
            H = hess[:, : j + 2, : j + 1]
            y = torch.linalg.lstsq(H, e1[:, : j + 2, None]).solution[..., 0]
            est = _flat_norm(e1[:, : j + 2] - (H @ y[..., None])[..., 0])
            if bool((est <= tol).all()):
                break
        V = torch.stack(basis[: y.shape[1]], dim=2)
        return (V @ y[..., None])[..., 0], y.shape[1]
