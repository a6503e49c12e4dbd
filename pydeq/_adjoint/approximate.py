"""Cheap gradients that skip the linear solve: Jacobian-free (JFB) and phantom gradients."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_fraction, check_int
from .._solution import Solution
from ._base import AbstractAdjoint
from .implicit import with_value

__all__ = ["JacobianFreeAdjoint", "PhantomAdjoint"]


def _record(out: Tensor, solution: Solution, nfe: int) -> Tensor:
    if not out.requires_grad:
        return solution.z.detach()
    out = with_value(out, solution.z)
    if out.requires_grad:
        stats = solution.backward

        def hook(g: Tensor) -> None:
            stats.nfe, stats.ran = nfe, True

        out.register_hook(hook)
    return out


@dataclass(frozen=True, kw_only=True)
class JacobianFreeAdjoint(AbstractAdjoint):
    """Jacobian-free backprop (Fung et al. 2022): replace ``(I - J_f)^{-T}`` by ``I``.

    Back-propagates through one call ``f(z*, x)`` with ordinary autograd, so ``w = dL/dz*``: one
    vector-Jacobian product, a descent direction when f is contractive, but biased. The value returned is
    ``z*`` itself.
    """

    def attach(self, fn: Callable[[Tensor], Tensor], solution: Solution) -> Tensor:
        with torch.enable_grad():
            out = fn(solution.z.detach())
        solution.nfe += 1
        return _record(out, solution, 1)


@dataclass(frozen=True, kw_only=True)
class PhantomAdjoint(AbstractAdjoint):
    """Unrolled phantom gradient (Geng et al. 2021): differentiate ``steps`` damped iterations from z*.

    ``z_{k+1} = (1 - damping) z_k + damping f(z_k)``, starting at the detached ``z*``; the gradient
    approaches the exact implicit one as ``steps`` grows (for contractive f). ``steps=1, damping=1`` is
    :class:`JacobianFreeAdjoint`. The value returned is ``z*``; only the gradient goes through the steps.

    Args:
        steps: iterations differentiated (each costs one f call forward and one VJP backward).
        damping: in (0, 1].
    """

    steps: int = 5
    damping: float = 0.5

    def __post_init__(self) -> None:
        check_int("PhantomAdjoint.steps", self.steps)
        check_fraction("PhantomAdjoint.damping", self.damping)

    def attach(self, fn: Callable[[Tensor], Tensor], solution: Solution) -> Tensor:
        z = solution.z.detach()
        with torch.enable_grad():
            for _ in range(self.steps):
                z = z + self.damping * (fn(z) - z) if self.damping != 1.0 else fn(z)
        solution.nfe += self.steps
        return _record(z, solution, self.steps)
