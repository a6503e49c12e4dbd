"""Fixed-point (Neumann-series) iteration for ``(I - K) w = b``: ``w <- (1 - a) w + a (b + K w)``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_fraction, check_int, check_positive
from .._norms import l2_norm
from ._base import AbstractLinearSolver, LinearSolution

__all__ = ["Neumann"]


@dataclass(frozen=True, kw_only=True)
class Neumann(AbstractLinearSolver):
    """Damped fixed-point iteration on the linear system; converges when ``rho(K) < 1``.

    Undamped and started at ``w = b`` it sums the Neumann series ``sum_k K^k b``. A sample stops when
    ``||b + K w - w|| <= atol + rtol * ||b||``; converged samples stop changing.

    Args:
        rtol, atol: per-sample stopping tolerance.
        max_steps: matvecs allowed.
        damping: ``a`` in (0, 1].
    """

    rtol: float = 1e-6
    atol: float = 1e-10
    max_steps: int = 100
    damping: float = 1.0

    def __post_init__(self) -> None:
        check_positive("Neumann.rtol", self.rtol, allow_zero=True)
        check_positive("Neumann.atol", self.atol, allow_zero=True)
        check_int("Neumann.max_steps", self.max_steps)
        check_fraction("Neumann.damping", self.damping)

    def solve(self, K: Callable[[Tensor], Tensor], b: Tensor, w0: Tensor | None = None) -> LinearSolution:
        w = b.clone() if w0 is None else w0.clone()
        tol = self.atol + self.rtol * l2_norm(b)
        shape = (-1,) + (1,) * (b.dim() - 1)
        res = torch.full_like(tol, torch.inf)
        matvecs = 0
        while matvecs < self.max_steps:
            target = b + K(w)
            matvecs += 1
            diff = target - w
            res = l2_norm(diff)
            active = res > tol
            n_active = int(active.sum())
            if n_active == 0:
                break
            step = target if self.damping == 1.0 else w + self.damping * diff
            w = step if n_active == b.shape[0] else torch.where(active.reshape(shape), step, w)
        return LinearSolution(w=w, residual=res, matvecs=matvecs)
