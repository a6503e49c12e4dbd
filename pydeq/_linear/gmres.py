"""Batched restarted GMRES for ``(I - K) w = b`` with per-sample convergence."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._batched import combine, project
from .._checks import check_int, check_positive
from ._base import AbstractLinearSolver, LinearSolution

__all__ = ["GMRES"]


_DGKS = 0.5**0.5


def _flat_norm(v: Tensor) -> Tensor:
    return torch.linalg.vector_norm(v, dim=1)


@dataclass(frozen=True, kw_only=True)
class GMRES(AbstractLinearSolver):
    """Restarted GMRES (Saad & Schultz 1986), batched: one Krylov basis per sample.

    Minimises ``||b - A w||`` over ``w0 + span{r0, A r0, ...}`` with ``A = I - K``; a sample stops when
    ``||b - A w|| <= atol + rtol * ||b||``. Each inner iteration costs one call of ``K`` on the whole batch.
    The basis is orthogonalised by classical Gram-Schmidt with selective reorthogonalisation (a second pass
    only when the DGKS test sees cancellation: as stable as modified Gram-Schmidt, in two batched products
    instead of one per basis vector), and the small least-squares problem is updated by Givens rotations,
    so the residual estimate costs O(iteration) scalar work per step.

    Args:
        rtol, atol: per-sample stopping tolerance on the residual norm.
        restart: Krylov subspace size before a restart.
        max_steps: total matvecs allowed, counting the one per cycle that checks ``b - A w`` (the residual
            reported is that true residual, not the Givens estimate, except when the budget ran out mid-cycle).
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

        def Kf(v: Tensor) -> Tensor:
            return K(v.reshape(shape)).reshape(batch, -1)

        def A(v: Tensor) -> Tensor:
            return v - Kf(v)

        w = torch.zeros_like(bf) if w0 is None else w0.reshape(batch, -1).clone()
        tol = self.atol + self.rtol * _flat_norm(bf)
        matvecs = int(w0 is not None)
        r = bf - A(w) if w0 is not None else bf.clone()
        res = _flat_norm(r)
        while matvecs < self.max_steps:
            active = res > tol
            if not bool(active.any()):
                break
            # one matvec is kept back for the true residual after the cycle (unless that leaves none to cycle)
            dw, used, est = self._cycle(Kf, r, res, tol, max(self.max_steps - matvecs - 1, 1))
            matvecs += used
            w = w + torch.where(active[:, None], dw, torch.zeros_like(dw))
            if matvecs >= self.max_steps:  # no matvec left to check with: report the Givens estimate
                res = torch.where(active, est, res)
                break
            # the Givens estimate equals the true residual only in exact arithmetic; with an ill-conditioned
            # system it can claim convergence that the iterate does not have, so the stop is decided on b - A w
            r = bf - A(w)
            matvecs += 1
            res = _flat_norm(r)
        return LinearSolution(w=w.reshape(shape), residual=res, matvecs=matvecs)

    def _cycle(self, K: Callable[[Tensor], Tensor], r: Tensor, beta: Tensor, tol: Tensor,
               budget: int) -> tuple[Tensor, int, Tensor]:
        """One Arnoldi cycle from residual ``r``; returns the correction, matvecs used, residual estimate.

        Arnoldi runs on ``K`` (same Krylov space as ``A = I - K``): ``K v_j = V h + hn u`` gives
        ``A v_j = V (e_j - h) + hn (-u)``, so the basis takes ``-u`` and A's Hessenberg column is ``e_j - h``
        over ``hn``. Orthogonalising ``K v_j`` rather than ``A v_j`` avoids the cancellation of the large
        ``v_j`` component that would otherwise trigger a second Gram-Schmidt pass at every step.
        """
        batch, n = r.shape
        m = min(self.restart, budget)
        tiny = torch.finfo(r.dtype).tiny ** 0.5
        V = r.new_empty(batch, m + 1, n)  # basis vectors as rows, each written before it is read
        V[:, 0] = r / beta.clamp_min(tiny)[:, None]
        R = r.new_zeros(batch, m, m)  # upper-triangular factor of the Hessenberg matrix
        Qt = torch.eye(m + 1, dtype=r.dtype, device=r.device).repeat(batch, 1, 1)  # product of Givens rotations
        bound = tol / beta  # stop once |Qt[j+1, 0]| <= tol / beta (inf where beta = 0: nothing to solve)
        k = 0
        for j in range(m):
            v = K(V[:, j])
            Vj = V[:, : j + 1]
            before = _flat_norm(v)
            h = project(v, Vj)
            v = v - combine(h, Vj)
            hn = _flat_norm(v)
            # classical Gram-Schmidt once, and again only where cancellation lost digits (the DGKS criterion
            # ||v_after|| < ||v_before|| / sqrt(2), Daniel et al. 1976): "twice is enough", usually once is
            if bool((hn < _DGKS * before).any()):
                h2 = project(v, Vj)
                v = v - combine(h2, Vj)
                h = h + h2
                hn = _flat_norm(v)
            # hn below `tiny` is a lucky breakdown: the rotation below makes the estimate 0 and the cycle stops
            # before this (then meaningless) basis vector is used
            V[:, j + 1] = v / -hn.clamp_min(tiny)[:, None]
            h = -h
            h[:, j] += 1  # A's column: e_j - h
            # rotate the new Hessenberg column by all previous rotations at once (one small product)
            col = (Qt[:, : j + 1, : j + 1] * h[:, None]).sum(-1)
            rho = torch.hypot(col[:, j], hn).clamp_min(tiny)
            c, s = col[:, j] / rho, hn / rho
            col[:, j] = rho
            R[:, : j + 1, j] = col
            # the new rotation mixes rows j and j + 1 of Qt (row j + 1 is still e_{j+1})
            rot = torch.stack([c, s, -s, c], 1).view(-1, 2, 2, 1)
            rows = Qt[:, j : j + 2, : j + 2]
            rows.copy_((rot * rows[:, None]).sum(2))
            k = j + 1
            if bool((Qt[:, j + 1, 0].abs() <= bound).all()):
                break
        g = beta[:, None] * Qt[:, : k + 1, 0]
        Rk = R[:, :k, :k]
        diag = Rk.diagonal(dim1=1, dim2=2)
        # a zero pivot means the Krylov space was exhausted for that sample (already converged)
        Rk = Rk + torch.diag_embed(torch.where(diag.abs() > tiny, 0.0, 1.0))
        y = torch.linalg.solve_triangular(Rk, g[:, :k, None], upper=True)[..., 0]
        return combine(y, V[:, :k]), k, g[:, k].abs()
