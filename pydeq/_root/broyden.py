"""Limited-memory "good" Broyden on the inverse Jacobian of ``g(z) = f(z) - z``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._batched import combine, project, write_slot
from .._checks import check_int
from .._norms import Norm, l2_norm, rms_norm
from ._base import AbstractRootFinder, Stagnation, check_stop_fields
from ._line_search import backtrack

__all__ = ["Broyden", "BroydenFactors"]


@dataclass
class BroydenFactors:
    """Low-rank inverse-Jacobian estimate ``H = -I + sum_i u_i v_i^T`` of ``g(z) = f(z) - z``.

    ``U``, ``V``: ``(batch, history, n)``, the vectors ``u_i``, ``v_i`` as rows (``n`` the flattened state size),
    so that a row slice stays contiguous and ``H v`` is two row-vector products. ``H`` approximates
    ``(J_f - I)^{-1}`` along the directions the solve visited (Broyden 1965).
    """

    U: Tensor
    V: Tensor

    def apply(self, v: Tensor) -> Tensor:
        """``H v`` for ``v: (batch, n)``."""
        return -v + combine(project(v, self.V), self.U)

    def apply_transpose(self, v: Tensor) -> Tensor:
        """``v^T H`` as a column, for ``v: (batch, n)``."""
        return -v + combine(project(v, self.U), self.V)


@dataclass
class _State:
    z: Tensor
    fz: Tensor
    factors: BroydenFactors
    k: int


@dataclass(frozen=True, kw_only=True)
class Broyden(AbstractRootFinder):
    """Limited-memory "good" Broyden method (Broyden 1965) for ``g(z) = f(z) - z = 0``.

    Keeps ``H ~ J_g^{-1} = -I + U V^T`` and steps ``z <- z - t H g(z)``; after each step with
    ``s = dz`` and ``y = dg`` it applies the rank-one update
    ``H <- H + (s - H y) s^T H / (s^T H y)``. The oldest pair is overwritten once ``history`` are stored.
    The factors are returned in ``Solution.extras["broyden"]`` so :class:`BroydenReuseAdjoint` can
    reuse them in the backward pass (Nguyen & Mauch 2023).

    Args:
        rtol, atol, norm: a sample stops when ``norm(f(z) - z) <= atol + rtol * norm(f(z))``, ``norm`` per sample,
            default ``pydeq.rms_norm`` (modes and norms: :class:`~pydeq.AbstractRootFinder`).
        stagnation: a :class:`pydeq.Stagnation` rule (status ``STAGNATED``, best iterate) or ``None``.
        max_steps: iterations allowed.
        history: rank of the update kept.
        line_search: backtrack ``t in {1, 1/2, 1/4}`` per sample when the residual grows (costs f calls).
    """

    rtol: float = 1e-4
    atol: float = 1e-6
    max_steps: int = 50
    norm: Norm = rms_norm
    stagnation: Stagnation | None = Stagnation(patience=100)
    history: int = 20
    line_search: bool = False

    def __post_init__(self) -> None:
        check_stop_fields(self)
        check_int("Broyden.history", self.history)

    def init(self, fn: Callable[[Tensor], Tensor], z0: Tensor) -> _State:
        batch, n = z0.shape[0], z0[0].numel()
        # rows are written before they are read (steps use the first `used`): no zero fill of fresh memory
        U = z0.new_empty(batch, self.history, n)
        return _State(z=z0, fz=fn(z0), factors=BroydenFactors(U=U, V=torch.empty_like(U)), k=0)

    def step(self, fn: Callable[[Tensor], Tensor], state: _State, active: Tensor) -> _State:
        batch, shape = state.z.shape[0], state.z.shape
        used = min(state.k, self.history)  # columns past `used` are still zero: skip them
        H = BroydenFactors(U=state.factors.U[:, :used], V=state.factors.V[:, :used])
        g = (state.fz - state.z).reshape(batch, -1)
        direction = -H.apply(g).reshape(shape)
        if self.line_search:
            z, fz = backtrack(fn, state.z, state.fz, direction)
        else:
            z = state.z + direction
            fz = fn(z)
        s = (z - state.z).reshape(batch, -1)
        y = (fz - z).reshape(batch, -1) - g
        Hy = H.apply(y)
        sH = H.apply_transpose(s)
        denom = (s * Hy).sum(1)
        ok = active & (denom.abs() > torch.finfo(denom.dtype).eps * l2_norm(s) * l2_norm(Hy))
        safe = torch.where(ok, denom, torch.ones_like(denom))
        u = torch.where(ok[:, None], (s - Hy) / safe[:, None], torch.zeros_like(s))
        v = torch.where(ok[:, None], sH, torch.zeros_like(s))
        slot = state.k % self.history
        U, V = write_slot(state.factors.U, slot, u), write_slot(state.factors.V, slot, v)
        return _State(z=z, fz=fz, factors=BroydenFactors(U=U, V=V), k=state.k + 1)

    def postprocess(self, state: _State) -> dict:
        used = min(state.k, self.history)  # rows past `used` were never written
        return {"broyden": BroydenFactors(U=state.factors.U[:, :used], V=state.factors.V[:, :used])}
