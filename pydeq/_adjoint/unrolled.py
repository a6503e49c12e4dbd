"""Back-propagation through every solver step: the memory-hungry reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from .._solution import Solution
from ._base import AbstractAdjoint

__all__ = ["UnrolledAdjoint"]


@dataclass(frozen=True, kw_only=True)
class UnrolledAdjoint(AbstractAdjoint):
    """Differentiate the solver's own computation (memory grows with the number of steps).

    The solve runs with autograd recording, so the gradient is that of the returned iterate, exactly
    as computed; with a converged solve it approaches the implicit gradient.
    """

    unrolled: bool = True

    def attach(self, fn: Callable[[Tensor], Tensor], solution: Solution) -> Tensor:
        return solution.z
