"""Linear solvers for systems of the form ``(I - K) w = b`` with ``K`` given as a batched matvec.

Both uses in pydeq have this form: the adjoint system ``w = g + J_f^T w`` (K is a vector-Jacobian
product) and the Newton system ``(I - J_f) dz = f(z) - z`` (K is a Jacobian-vector product).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

__all__ = ["AbstractLinearSolver", "LinearSolution"]


@dataclass
class LinearSolution:
    """``w``: ``(batch, *state)``; ``residual``: ``(batch,)`` norm of ``b - (I - K) w``; ``matvecs``: K calls."""

    w: Tensor
    residual: Tensor
    matvecs: int


class AbstractLinearSolver(abc.ABC):
    """Solves ``(I - K) w = b`` per sample; ``K`` maps ``(batch, *state)`` to the same shape."""

    @abc.abstractmethod
    def solve(self, K: Callable[[Tensor], Tensor], b: Tensor, w0: Tensor | None = None) -> LinearSolution: ...
