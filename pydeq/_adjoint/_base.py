"""The adjoint protocol: how gradients reach x and the parameters of f through a solve.

An adjoint never sees the solver. It receives ``fn(z) = f(z, x)`` (with grad enabled, so a call builds
the graph to x and to every parameter f uses) and the forward :class:`Solution`; it returns the output
tensor carrying that graph. ``unrolled = True`` asks :func:`pydeq.fixed_point` to run the solve with
grad enabled instead (:class:`pydeq.DirectAdjoint`, which serves ODE solves too and so lives in ``pydeq._ode``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import torch
from torch import Tensor

from .._solution import Solution

__all__ = ["AbstractAdjoint", "vjp_operator"]


class AbstractAdjoint(abc.ABC):
    """Base of every adjoint accepted by :func:`pydeq.fixed_point` and the DEQ layers."""

    unrolled: bool = False

    @abc.abstractmethod
    def attach(self, fn: Callable[[Tensor], Tensor], solution: Solution) -> Tensor:
        """Return the differentiable output for the detached answer ``solution.z``."""

    def check_solution(self, solution: Solution) -> None:  # noqa: B027 (optional hook)
        """Raise if this adjoint cannot use what the forward solve produced."""


def vjp_operator(z_in: Tensor, f_out: Tensor, counter: list[int]) -> Callable[[Tensor], Tensor]:
    """``v -> v^T (df/dz)`` at the recorded call ``f_out = fn(z_in)``, reusing its graph."""

    def vjp(v: Tensor) -> Tensor:
        counter[0] += 1
        (g,) = torch.autograd.grad(f_out, z_in, v, retain_graph=True)
        return g

    return vjp
