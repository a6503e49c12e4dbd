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
        rtol, atol, norm: a sample stops when ``norm(f(z) - z) <= atol + rtol * norm(f(z))``, ``norm`` per sample,
            default ``pydeq.rms_norm`` (modes and norms: :class:`~pydeq.AbstractRootFinder`).
        stagnation: a :class:`pydeq.Stagnation` rule (status ``STAGNATED``, best iterate) or ``None``.
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
