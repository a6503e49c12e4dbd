"""Dense solve of ``(I - K) w = b``: builds K column by column, then ``torch.linalg.solve``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_int
from ._base import AbstractLinearSolver, LinearSolution

__all__ = ["Direct"]


@dataclass(frozen=True, kw_only=True)
class Direct(AbstractLinearSolver):
    """Exact dense solve for small states and tests: ``n`` matvecs for a state of ``n`` entries.

    Assumes samples are independent (``K`` is block-diagonal over the batch), which holds for any f
    without batch-coupling layers such as batch norm in training mode.

    Args:
        max_size: refuse states larger than this (a dense ``n x n`` matrix per sample is built).
    """

    max_size: int = 4096

    def __post_init__(self) -> None:
        check_int("Direct.max_size", self.max_size)

    def solve(self, K: Callable[[Tensor], Tensor], b: Tensor, w0: Tensor | None = None) -> LinearSolution:
        batch = b.shape[0]
        n = b[0].numel()
        if n > self.max_size:
            raise ValueError(
                f"Direct() builds a dense {n}x{n} matrix per sample, above max_size={self.max_size}; "
                "use GMRES() for large states or raise Direct(max_size=...)."
            )
        eye = torch.eye(n, dtype=b.dtype, device=b.device)
        cols = [K(eye[i].expand(batch, n).reshape(b.shape)).reshape(batch, n) for i in range(n)]
        Kmat = torch.stack(cols, dim=2)
        A = eye - Kmat
        w = torch.linalg.solve(A, b.reshape(batch, n, 1))[..., 0]
        res = torch.linalg.vector_norm(b.reshape(batch, n) - (A @ w[..., None])[..., 0], dim=1)
        return LinearSolution(w=w.reshape(b.shape), residual=res, matvecs=n)
