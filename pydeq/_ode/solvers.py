"""The ODE methods: each is a tableau, an order and its settings (a frozen keyword-only dataclass)."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar

from .._checks import check_positive
from .controller import PIController
from .tableau import BS3 as _BS3
from .tableau import DOPRI5, EULER, TSIT5, ButcherTableau
from .tableau import RK4 as _RK4

__all__ = ["AbstractODESolver", "AbstractAdaptiveRK", "Tsit5", "Dopri5", "BS3", "Euler", "RK4"]


class AbstractODESolver(abc.ABC):
    """Base of the explicit Runge–Kutta methods accepted by :func:`pydeq.odeint`, ``NeuralODE`` and
    ``SteadyState``. ``dt`` is ``None`` for adaptive stepping, else the fixed step size."""

    tableau: ClassVar[ButcherTableau]
    dt: float | None
    rtol: float
    atol: float
    dt0: float | None
    controller: PIController

    @property
    def adaptive(self) -> bool:
        return self.dt is None


@dataclass(frozen=True, kw_only=True)
class AbstractAdaptiveRK(AbstractODESolver):
    """Shared fields of the embedded (adaptive) methods.

    Args:
        rtol: relative tolerance of the local error (> 0).
        atol: absolute tolerance of the local error (> 0).
        dt: ``None`` (default) for adaptive steps; a number runs the method with that fixed step
            (no error control), e.g. to measure its convergence order.
        dt0: first step; ``None`` chooses it per sample (Hairer, Nørsett & Wanner, *Solving ODEs I*, II.4).
        controller: the step-size controller.
    """

    rtol: float = 1e-3
    atol: float = 1e-6
    dt: float | None = None
    dt0: float | None = None
    controller: PIController = field(default_factory=PIController)

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_positive(f"{name}.rtol", self.rtol)
        check_positive(f"{name}.atol", self.atol)
        if self.dt is not None:
            check_positive(f"{name}.dt", self.dt)
        if self.dt0 is not None:
            check_positive(f"{name}.dt0", self.dt0)
        if not isinstance(self.controller, PIController):
            raise TypeError(f"{name}.controller must be a PIController; got {type(self.controller).__name__}.")


@dataclass(frozen=True, kw_only=True)
class Tsit5(AbstractAdaptiveRK):
    """Tsitouras 5(4) (2011): 7 stages, FSAL, order 5 — the default; usually fewer steps than Dopri5."""

    tableau: ClassVar[ButcherTableau] = TSIT5


@dataclass(frozen=True, kw_only=True)
class Dopri5(AbstractAdaptiveRK):
    """Dormand–Prince 5(4) (1980): 7 stages, FSAL, order 5 (torchdiffeq's ``dopri5``)."""

    tableau: ClassVar[ButcherTableau] = DOPRI5


@dataclass(frozen=True, kw_only=True)
class BS3(AbstractAdaptiveRK):
    """Bogacki–Shampine 3(2) (1989): 4 stages, FSAL, order 3 — cheap for loose tolerances."""

    tableau: ClassVar[ButcherTableau] = _BS3


@dataclass(frozen=True, kw_only=True)
class AbstractFixedRK(AbstractODESolver):
    """Shared fields of the fixed-step methods.

    Args:
        dt: step size (> 0); the last step is shortened to land exactly on ``t1``.
    """

    dt: float = 0.1
    # no error estimate, hence no tolerances; kept so every method answers the same attributes
    rtol: ClassVar[float] = 0.0
    atol: ClassVar[float] = 0.0
    dt0: ClassVar[None] = None
    controller: ClassVar[PIController] = PIController()

    def __post_init__(self) -> None:
        check_positive(f"{type(self).__name__}.dt", self.dt)


@dataclass(frozen=True, kw_only=True)
class Euler(AbstractFixedRK):
    """Explicit Euler, order 1, one stage per step."""

    tableau: ClassVar[ButcherTableau] = EULER


@dataclass(frozen=True, kw_only=True)
class RK4(AbstractFixedRK):
    """The classical Runge–Kutta method, order 4, four stages per step."""

    tableau: ClassVar[ButcherTableau] = _RK4
