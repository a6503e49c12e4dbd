"""Backward pass that reuses the forward Broyden inverse-Jacobian estimate (Nguyen & Mauch 2023)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_int
from .._norms import l2_norm
from .._solution import Solution
from ._base import AbstractAdjoint
from .implicit import attach_hook

__all__ = ["BroydenReuseAdjoint"]


@dataclass(frozen=True, kw_only=True)
class BroydenReuseAdjoint(AbstractAdjoint):
    """Approximate implicit gradient with no linear solve.

    The forward Broyden solve leaves ``H = -I + U V^T ~ (J_f - I)^{-1}``. The exact adjoint is
    ``w^T = g^T (I - J_f)^{-1} = -g^T (J_f - I)^{-1}``; reusing ``H`` gives
    ``w^T ~ -g^T H = g^T - (g^T U) V^T`` in ``O(history * n)`` work. ``refine`` fixed-point steps
    ``w <- g + J_f^T w`` then correct it along directions the forward pass did not explore;
    ``Solution.backward.residual`` is the adjoint residual of the last-but-one iterate (NaN with no refine
    step), so reporting it costs no extra product.
    With empty factors this is the Jacobian-free gradient.

    Args:
        refine: number of refinement steps (each one vector-Jacobian product).

    Requires a solver that keeps Broyden factors (``Broyden``).
    """

    refine: int = 0

    def __post_init__(self) -> None:
        check_int("BroydenReuseAdjoint.refine", self.refine, minimum=0)

    def check_solution(self, solution: Solution) -> None:
        if "broyden" not in solution.extras and solution.z.shape[0] > 0:
            raise ValueError(
                "BroydenReuseAdjoint needs the inverse-Jacobian factors of a Broyden solve, but the solver "
                f"kept none (solution extras: {sorted(solution.extras) or 'empty'}). Use solver=Broyden(...), "
                "or ImplicitAdjoint() with another solver."
            )

    def attach(self, fn: Callable[[Tensor], Tensor], solution: Solution) -> Tensor:
        self.check_solution(solution)
        factors = solution.extras.get("broyden")
        refine = self.refine

        def correct(g: Tensor, K: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
            w = -factors.apply_transpose(g.reshape(g.shape[0], -1)).reshape(g.shape)
            residual = torch.full_like(l2_norm(g), torch.nan)  # unknown without a further VJP
            for _ in range(refine):
                w_next = g + K(w)
                residual, w = l2_norm(w_next - w), w_next  # residual of the previous iterate, for free
            return w, residual

        return attach_hook(fn, solution, correct)
