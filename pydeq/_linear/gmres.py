"""Batched restarted GMRES for ``(I - K) w = b`` with per-sample convergence."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._batched import combine, project
from .._checks import check_int, check_positive
from .._norms import l2_norm
from ._base import AbstractLinearSolver, LinearSolution

__all__ = ["GMRES"]


_DGKS = 0.5**0.5


@dataclass(frozen=True, kw_only=True)
class GMRES(AbstractLinearSolver):
    """Restarted GMRES (Saad & Schultz 1986), batched: one Krylov basis per sample.

    Minimises ``||b - A w||`` over ``w0 + span{r0, A r0, ...}`` with ``A = I - K``; a sample stops when
    ``||b - A w|| <= atol + rtol * ||b||``. Each inner iteration costs one call of ``K`` on the whole batch.
    The basis is orthogonalised by classical Gram-Schmidt with selective reorthogonalisation (a second pass
    only when the DGKS test sees cancellation: as stable as modified Gram-Schmidt, in two batched products
    instead of one per basis vector), and the small least-squares problem is updated by Givens rotations on
    the host in float64, so the residual estimate costs O(iteration) scalar work per step.

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
        tol = self.atol + self.rtol * l2_norm(bf)
        matvecs = int(w0 is not None)
        r = bf - A(w) if w0 is not None else bf.clone()
        res = l2_norm(r)
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
            res = l2_norm(r)
        return LinearSolution(w=w.reshape(shape), residual=res, matvecs=matvecs)

    def _cycle(self, K: Callable[[Tensor], Tensor], r: Tensor, beta: Tensor, tol: Tensor,
               budget: int) -> tuple[Tensor, int, Tensor]:
        """One Arnoldi cycle from residual ``r``; returns the correction, matvecs used, residual estimate.

        Arnoldi runs on ``K`` (same Krylov space as ``A = I - K``): ``K v_j = V h + hn u`` gives
        ``A v_j = V (e_j - h) + hn (-u)``, so the basis takes ``-u`` and A's Hessenberg column is ``e_j - h``
        over ``hn``. Orthogonalising ``K v_j`` rather than ``A v_j`` avoids the cancellation of the large
        ``v_j`` component that would otherwise trigger a second Gram-Schmidt pass at every step.

        The basis stays on the tensors' device; the small Hessenberg least-squares problem (Givens rotations,
        the triangular solve) runs on the host in float64, vectorised over the batch. Each step moves one
        ``(batch, j + 2)`` block there, which is also the step's one synchronisation: two dozen
        tensor ops of a few microseconds each on ``(batch, j)``-sized data cost more than the matvec here.
        """
        batch, n = r.shape
        m = min(self.restart, budget)
        tiny = torch.finfo(r.dtype).tiny ** 0.5
        V = r.new_empty(batch, m + 1, n)  # basis vectors as rows, each written before it is read
        V[:, 0] = r / beta.clamp_min(tiny)[:, None]
        ls = _HostLeastSquares(_host(beta), _host(tol), m, tiny)
        k = 0
        for j in range(m):
            v, col, hn, hn_h = _arnoldi_step(K(V[:, j]), V[:, : j + 1])
            # hn below `tiny` is a lucky breakdown: the rotation makes the estimate 0 and the cycle stops
            # before this (then meaningless) basis vector is used
            torch.div(v, -hn.clamp_min(tiny)[:, None], out=V[:, j + 1])
            col = -col
            col[:, j] += 1  # A's column: e_j - h
            k = j + 1
            if ls.add_column(j, col, hn_h):
                break
        y, est = ls.solve(k)
        return combine(_device(y, r), V[:, :k]), k, _device(est, r)


def _arnoldi_step(v: Tensor, Vj: Tensor) -> tuple[Tensor, np.ndarray, Tensor, np.ndarray]:
    """Orthogonalise ``v`` against the rows of ``Vj``; returns it, its coefficients and norm (host copies too).

    Classical Gram-Schmidt once, and again only where cancellation lost digits (the DGKS criterion
    ``||v_after|| < ||v_before|| / sqrt(2)``, Daniel et al. 1976): "twice is enough", usually once is.
    """
    j = Vj.shape[1]
    before = l2_norm(v)
    h = project(v, Vj)
    v = v - combine(h, Vj)
    hn = l2_norm(v)
    host = _host(torch.cat([h, hn[:, None], before[:, None]], 1))
    col, hn_h = host[:, :j], host[:, j]
    if (hn_h < _DGKS * host[:, j + 1]).any():
        h2 = project(v, Vj)
        v = v - combine(h2, Vj)
        hn = l2_norm(v)
        host = _host(torch.cat([h2, hn[:, None]], 1))
        col, hn_h = col + host[:, :j], host[:, j]
    return v, col, hn, hn_h


class _HostLeastSquares:
    """``min ||beta e_1 - H y||`` for the growing Hessenberg ``H``, by Givens rotations, in float64 on the host.

    ``Qt`` accumulates the rotations (``Qt H = R``), so a new column is rotated by all previous ones in one
    product and ``beta |Qt[j+1, 0]|`` is the residual after ``j + 1`` steps.
    """

    def __init__(self, beta: np.ndarray, tol: np.ndarray, m: int, tiny: float):
        batch = beta.shape[0]
        self.beta, self.tiny = beta, tiny
        with np.errstate(divide="ignore", invalid="ignore"):
            self.bound = tol / beta  # converged once |Qt[j+1, 0]| <= tol / beta (inf where beta = 0)
        self.R = np.zeros((batch, m, m))
        self.Qt = np.tile(np.eye(m + 1), (batch, 1, 1))

    def add_column(self, j: int, col: np.ndarray, subdiagonal: np.ndarray) -> bool:
        """Append column ``j`` of ``H`` (entries ``0..j`` and ``H[j+1, j]``); True when every sample converged."""
        Qt = self.Qt
        col = (Qt[:, : j + 1, : j + 1] @ col[..., None])[..., 0]
        rho = np.maximum(np.hypot(col[:, j], subdiagonal), self.tiny)
        c, s = col[:, j] / rho, subdiagonal / rho
        col[:, j] = rho
        self.R[:, : j + 1, j] = col
        top, bottom = Qt[:, j, : j + 2].copy(), Qt[:, j + 1, : j + 2].copy()
        Qt[:, j, : j + 2] = c[:, None] * top + s[:, None] * bottom
        Qt[:, j + 1, : j + 2] = c[:, None] * bottom - s[:, None] * top
        return bool((np.abs(Qt[:, j + 1, 0]) <= self.bound).all())

    def solve(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients ``y: (batch, k)`` after ``k`` columns and the residual estimate ``(batch,)``."""
        g = self.beta[:, None] * self.Qt[:, : k + 1, 0]
        return _back_substitute(self.R[:, :k, :k], g[:, :k], self.tiny), np.abs(g[:, k])


def _back_substitute(R: np.ndarray, g: np.ndarray, tiny: float) -> np.ndarray:
    """Solve ``R y = g`` for upper-triangular ``R: (batch, k, k)``; a zero pivot (the Krylov space was exhausted:
    the sample is solved already) gives a zero component."""
    k = R.shape[1]
    y = np.zeros_like(g)
    for i in range(k - 1, -1, -1):
        pivot = R[:, i, i]
        ok = np.abs(pivot) > tiny
        y[:, i] = np.where(ok, (g[:, i] - (R[:, i, i + 1:] * y[:, i + 1:]).sum(1)) / np.where(ok, pivot, 1.0), 0.0)
    return y


def _host(t: Tensor) -> np.ndarray:
    """A float64 host copy (one device synchronisation)."""
    return t.detach().to("cpu", torch.float64).numpy()


def _device(a: np.ndarray, like: Tensor) -> Tensor:
    return torch.from_numpy(a).to(like.device, like.dtype)
