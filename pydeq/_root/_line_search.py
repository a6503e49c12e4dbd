"""Per-sample backtracking on the residual norm, shared by Broyden and Newton-Krylov."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .._batched import freeze
from .._norms import l2_norm

__all__ = ["backtrack"]


def backtrack(fn: Callable[[Tensor], Tensor], z: Tensor, fz: Tensor, direction: Tensor,
              shrink: float = 0.5, tries: int = 3) -> tuple[Tensor, Tensor]:
    """Try ``z + t d`` with ``t = 1, shrink, shrink^2, ...``; each sample keeps the first ``t`` whose
    residual ``||f(z) - z||`` does not grow (or the last tried). Costs up to ``tries`` f calls."""
    res0 = l2_norm(fz - z)
    t = 1.0
    best_z = z + direction
    best_fz = fn(best_z)
    pending = ~(l2_norm(best_fz - best_z) <= res0)
    for _ in range(tries - 1):
        if not bool(pending.any()):
            break
        t *= shrink
        cand = z + t * direction
        fc = fn(cand)
        best_z, best_fz = freeze(pending, cand, best_z), freeze(pending, fc, best_fz)
        pending = pending & ~(l2_norm(fc - cand) <= res0)
    return best_z, best_fz
