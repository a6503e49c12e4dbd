"""Matrix-free Newton: GMRES on Jacobian-vector products of f."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._linear import GMRES, AbstractLinearSolver
from .._norms import Norm, rms_norm
from ._base import AbstractRootFinder, IterateState, Stagnation, check_stop_fields
from ._line_search import backtrack

__all__ = ["NewtonKrylov"]


@dataclass(frozen=True, kw_only=True)
class NewtonKrylov(AbstractRootFinder):
    """Inexact Newton on ``g(z) = f(z) - z``: solve ``(I - J_f) dz = f(z) - z`` by a Krylov method.

    ``J_f v`` comes from forward-mode AD (``torch.func.jvp``), one f-equivalent call per product, so
    ``Solution.nfe`` counts the Krylov matvecs too. Converges quadratically near a regular root.

    Args:
        rtol, atol, norm: a sample stops when ``norm(f(z) - z) <= atol + rtol * norm(f(z))``, ``norm`` per sample,
            default ``pydeq.rms_norm`` (modes and norms: :class:`~pydeq.AbstractRootFinder`).
        stagnation: a :class:`pydeq.Stagnation` rule (status ``STAGNATED``, best iterate) or ``None``.
        max_steps: Newton iterations allowed.
        linear_solver: solver for the Newton system (``GMRES`` by default, relative tolerance 1e-4).
        line_search: backtrack per sample when the residual grows.
    """

    rtol: float = 1e-4
    atol: float = 1e-6
    max_steps: int = 20
    norm: Norm = rms_norm
    stagnation: Stagnation | None = Stagnation(patience=10)
    linear_solver: AbstractLinearSolver = field(default_factory=lambda: GMRES(rtol=1e-4, atol=0.0, restart=20,
                                                                           max_steps=40))
    line_search: bool = True

    def __post_init__(self) -> None:
        check_stop_fields(self)
        if not isinstance(self.linear_solver, AbstractLinearSolver):
            raise TypeError(
                f"NewtonKrylov.linear_solver must be a pydeq linear solver (GMRES, Neumann, Direct); "
                f"got {type(self.linear_solver).__name__}."
            )

    def init(self, fn: Callable[[Tensor], Tensor], z0: Tensor) -> IterateState:
        return IterateState(z=z0, fz=fn(z0))

    def step(self, fn: Callable[[Tensor], Tensor], state: IterateState, active: Tensor) -> IterateState:
        z = state.z

        def jvp(v: Tensor) -> Tensor:
            return torch.func.jvp(fn, (z,), (v,))[1]

        g = state.fz - z
        dz = self.linear_solver.solve(jvp, g).w
        if self.line_search:
            zn, fzn = backtrack(fn, z, state.fz, dz)
        else:
            zn = z + dz
            fzn = fn(zn)
        return IterateState(z=zn, fz=fzn)
