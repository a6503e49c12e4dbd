"""Damped fixed-point (Picard / Krasnosel'skii-Mann) iteration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from .._checks import check_fraction
from .._norms import Norm, rms_norm
from ._base import AbstractRootFinder, IterateState, Stagnation, check_stop_fields

__all__ = ["FixedPointIteration"]


@dataclass(frozen=True, kw_only=True)
class FixedPointIteration(AbstractRootFinder):
    """``z <- (1 - damping) z + damping f(z)``; converges linearly when f is a contraction.

    Args:
        rtol, atol: a sample stops when ``norm(f(z) - z) <= atol + rtol * norm(f(z))``; ``rtol = 0`` is an
            absolute test, ``atol = 0`` a relative one (DeepEquilibriumNetworks.jl's ``rel_norm``).
        norm: per-sample norm ``(batch, *state) -> (batch,)``: ``pydeq.rms_norm`` (default; a tolerance means
            the same at any state size), ``pydeq.max_norm`` or ``pydeq.l2_norm``.
        stagnation: a :class:`pydeq.Stagnation` rule stopping a sample whose residual stopped falling
            (status ``STAGNATED``, best iterate returned); ``None`` runs to ``max_steps``.
        max_steps: iterations allowed.
        damping: in (0, 1]; 1 is plain Picard iteration.
    """

    rtol: float = 1e-4
    atol: float = 1e-6
    max_steps: int = 50
    norm: Norm = rms_norm
    stagnation: Stagnation | None = Stagnation()
    damping: float = 1.0

    def __post_init__(self) -> None:
        check_stop_fields(self)
        check_fraction("FixedPointIteration.damping", self.damping)

    def init(self, fn: Callable[[Tensor], Tensor], z0: Tensor) -> IterateState:
        return IterateState(z=z0, fz=fn(z0))

    def step(self, fn: Callable[[Tensor], Tensor], state: IterateState, active: Tensor) -> IterateState:
        z = state.fz if self.damping == 1.0 else state.z + self.damping * (state.fz - state.z)
        return IterateState(z=z, fz=fn(z))
