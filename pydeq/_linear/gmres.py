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
    The basis is orthogonalised by classical Gram-Schmidt applied twice (CGS2, as stable as modified
    Gram-Schmidt but two batched matrix products), and the small least-squares problem is updated by
    Givens rotations, so the residual estimate costs O(iteration) scalar work per step.

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
        matvecs = int(w0 is not None)
        r = bf - A(w) if w0 is not None else bf.clone()
        res = _flat_norm(r)
        while matvecs < self.max_steps:
            active = res > tol
            if not bool(active.any()):
                break
            dw, used, est = self._cycle(A, r, res, tol, self.max_steps - matvecs)
            matvecs += used
            w = w + torch.where(active[:, None], dw, torch.zeros_like(dw))
            if matvecs >= self.max_steps or bool((est <= tol).all()):
                # the Givens estimate is the true residual in exact arithmetic; skip the extra matvec
                res = torch.where(active, est, res)
                break
            r = bf - A(w)
            matvecs += 1
            res = _flat_norm(r)
        return LinearSolution(w=w.reshape(shape), residual=res, matvecs=matvecs)

    def _cycle(self, A: Callable[[Tensor], Tensor], r: Tensor, beta: Tensor, tol: Tensor,
               budget: int) -> tuple[Tensor, int, Tensor]:
        """One Arnoldi cycle from residual ``r``; returns the correction, matvecs used, residual estimate."""
        batch, n = r.shape
        m = min(self.restart, budget)
        tiny = torch.finfo(r.dtype).tiny ** 0.5
        V = r.new_zeros(batch, m + 1, n)  # basis vectors as rows: slices stay contiguous for bmm
        V[:, 0] = r / beta.clamp_min(tiny)[:, None]
        R = r.new_zeros(batch, m, m)  # upper-triangular factor of the Hessenberg matrix
        Qt = torch.eye(m + 1, dtype=r.dtype, device=r.device).repeat(batch, 1, 1)  # product of Givens rotations
        k = 0
        for j in range(m):
            v = A(V[:, j])
            Vj = V[:, : j + 1]
            # batched mat-vecs as broadcast-and-reduce: CPU bmm with one column is a slow per-sample GEMV loop
            h = (Vj * v[:, None]).sum(-1)
            v = v - (h[..., None] * Vj).sum(1)
            h2 = (Vj * v[:, None]).sum(-1)  # second pass (CGS2)
            v = v - (h2[..., None] * Vj).sum(1)
            hn = _flat_norm(v)
            V[:, j + 1] = torch.where(hn[:, None] > tiny, v / hn.clamp_min(tiny)[:, None], torch.zeros_like(v))
            # rotate the new Hessenberg column by all previous rotations at once (one small bmm)
            col = (Qt[:, : j + 1, : j + 1] * (h + h2)[:, None]).sum(-1)
            a_, b_ = col[:, j], hn
            rho = torch.sqrt(a_**2 + b_**2)
            ok = rho > tiny
            safe = torch.where(ok, rho, torch.ones_like(rho))
            c, s = torch.where(ok, a_ / safe, torch.ones_like(rho)), torch.where(ok, b_ / safe, torch.zeros_like(rho))
            col[:, j] = rho
            R[:, : j + 1, j] = col
            row_j, row_n = Qt[:, j].clone(), Qt[:, j + 1].clone()
            Qt[:, j] = c[:, None] * row_j + s[:, None] * row_n
            Qt[:, j + 1] = -s[:, None] * row_j + c[:, None] * row_n
            k = j + 1
            if bool((beta * Qt[:, j + 1, 0].abs() <= tol).all()):
                break
        g = beta[:, None] * Qt[:, : k + 1, 0]
        Rk = R[:, :k, :k]
        diag = Rk.diagonal(dim1=1, dim2=2)
        # a zero pivot means the Krylov space was exhausted for that sample (already converged)
        Rk = Rk + torch.diag_embed(torch.where(diag.abs() > tiny, 0.0, 1.0))
        y = torch.linalg.solve_triangular(Rk, g[:, :k, None], upper=True)[..., 0]
        return (y[..., None] * V[:, :k]).sum(1), k, g[:, k].abs()
