"""The ODE methods: each is a tableau, an order and its settings (a frozen keyword-only dataclass)."""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import ClassVar

from .._checks import check_positive
from .._norms import Norm, check_norm, rms_norm
from .controller import PIController
from .tableau import BS3 as _BS3
from .tableau import DOPRI5, EULER, FEHLBERG2, HEUN2, HEUN3, HEUN_EULER, MIDPOINT, TSIT5, ButcherTableau
from .tableau import RK4 as _RK4
from .tableau import RK38 as _RK38

__all__ = ["METHODS", "AbstractODESolver", "AbstractAdaptiveRK", "AbstractFixedRK", "Tsit5", "Dopri5", "BS3",
           "HeunEuler", "Fehlberg2", "Euler", "Midpoint", "Heun2", "Heun3", "RK4", "RK38"]

# the Runge–Kutta methods odeint integrates with (each has a dense output)
METHODS = "Tsit5, Dopri5, BS3, HeunEuler, Fehlberg2, Euler, Midpoint, Heun2, Heun3, RK4, RK38"


class AbstractODESolver(abc.ABC):
    """Base of the explicit Runge–Kutta methods accepted by :func:`pydeq.odeint`, ``NeuralODE`` and
    ``SteadyState``. ``dt`` is ``None`` for adaptive stepping, else the fixed step size."""

    tableau: ClassVar[ButcherTableau]
    dt: float | None
    rtol: float
    atol: float
    dt0: float | None
    dtmin: float
    dtmax: float
    norm: Norm
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
        dtmin: smallest step (default 0: only round-off limits it). A sample whose step is rejected at
            ``dtmin`` stops with status ``STEP_TOO_SMALL``.
        dtmax: largest step (default ``inf``).
        norm: per-sample norm of the scaled local error ``err / (atol + rtol * max(|u|, |u_new|))``, accepted
            when at most 1: :func:`~pydeq.rms_norm` (default; torchdiffeq's and scipy's choice),
            :func:`~pydeq.max_norm` (every entry within tolerance) or any ``(batch, *state) -> (batch,)``.
        controller: the step-size controller.
    """

    rtol: float = 1e-3
    atol: float = 1e-6
    dt: float | None = None
    dt0: float | None = None
    dtmin: float = 0.0
    dtmax: float = math.inf
    norm: Norm = rms_norm
    controller: PIController = field(default_factory=PIController)

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_positive(f"{name}.rtol", self.rtol)
        check_positive(f"{name}.atol", self.atol)
        for attr in ("dt", "dt0"):
            if getattr(self, attr) is not None:
                check_positive(f"{name}.{attr}", getattr(self, attr))
        check_positive(f"{name}.dtmin", self.dtmin, allow_zero=True)
        if not (isinstance(self.dtmax, (int, float)) and self.dtmax > self.dtmin):
            raise ValueError(f"{name}.dtmax must be a number > dtmin = {self.dtmin!r} (math.inf for no cap); "
                             f"got {self.dtmax!r}.")
        if self.dt0 is not None and not self.dtmin <= self.dt0 <= self.dtmax:
            raise ValueError(f"{name}.dt0 must lie in [dtmin, dtmax] = [{self.dtmin!r}, {self.dtmax!r}]; "
                             f"got {self.dt0!r}.")
        check_norm(name, self.norm)
        if not isinstance(self.controller, PIController):
            raise TypeError(f"{name}.controller must be a PIController; got {type(self.controller).__name__}.")


@dataclass(frozen=True, kw_only=True)
class Tsit5(AbstractAdaptiveRK):
    """Tsitouras 5(4) (2011): 7 stages, FSAL, order 5, free dense output of order 4 — the default; usually
    fewer steps than Dopri5."""

    tableau: ClassVar[ButcherTableau] = TSIT5


@dataclass(frozen=True, kw_only=True)
class Dopri5(AbstractAdaptiveRK):
    """Dormand–Prince 5(4) (1980): 7 stages, FSAL, order 5, free dense output of order 4 (torchdiffeq's
    ``dopri5``, scipy's ``RK45``)."""

    tableau: ClassVar[ButcherTableau] = DOPRI5


@dataclass(frozen=True, kw_only=True)
class BS3(AbstractAdaptiveRK):
    """Bogacki–Shampine 3(2) (1989): 4 stages, FSAL, order 3, free Hermite dense output of order 3 — cheap for
    loose tolerances (torchdiffeq's ``bosh3``, scipy's ``RK23``)."""

    tableau: ClassVar[ButcherTableau] = _BS3


@dataclass(frozen=True, kw_only=True)
class HeunEuler(AbstractAdaptiveRK):
    """Heun–Euler 2(1): 2 stages, order 2, dense output of order 2 (torchdiffeq's ``adaptive_heun``)."""

    tableau: ClassVar[ButcherTableau] = HEUN_EULER


@dataclass(frozen=True, kw_only=True)
class Fehlberg2(AbstractAdaptiveRK):
    """Fehlberg's RKF 1(2) propagating the order-2 solution: 3 stages, dense output of order 2 (torchdiffeq's
    ``fehlberg2``)."""

    tableau: ClassVar[ButcherTableau] = FEHLBERG2


@dataclass(frozen=True, kw_only=True)
class AbstractFixedRK(AbstractODESolver):
    """Shared fields of the fixed-step methods.

    Args:
        dt: step size (> 0). Steps run on the grid ``t0 + k dt`` and are shortened to land exactly on every
            output time (and on ``t1``), so each output carries the method's full order.
    """

    dt: float = 0.1
    # no error estimate, hence no tolerances; kept so every method answers the same attributes
    rtol: ClassVar[float] = 0.0
    atol: ClassVar[float] = 0.0
    dt0: ClassVar[None] = None
    dtmin: ClassVar[float] = 0.0
    dtmax: ClassVar[float] = math.inf
    norm: ClassVar[Norm] = staticmethod(rms_norm)
    controller: ClassVar[PIController] = PIController()

    def __post_init__(self) -> None:
        check_positive(f"{type(self).__name__}.dt", self.dt)


@dataclass(frozen=True, kw_only=True)
class Euler(AbstractFixedRK):
    """Explicit Euler, order 1, one stage per step."""

    tableau: ClassVar[ButcherTableau] = EULER


@dataclass(frozen=True, kw_only=True)
class Midpoint(AbstractFixedRK):
    """The explicit midpoint rule, order 2, two stages per step."""

    tableau: ClassVar[ButcherTableau] = MIDPOINT


@dataclass(frozen=True, kw_only=True)
class Heun2(AbstractFixedRK):
    """Heun's method (explicit trapezoidal rule), order 2, two stages per step."""

    tableau: ClassVar[ButcherTableau] = HEUN2


@dataclass(frozen=True, kw_only=True)
class Heun3(AbstractFixedRK):
    """Heun's third-order method, three stages per step."""

    tableau: ClassVar[ButcherTableau] = HEUN3


@dataclass(frozen=True, kw_only=True)
class RK4(AbstractFixedRK):
    """The classical Runge–Kutta method, order 4, four stages per step."""

    tableau: ClassVar[ButcherTableau] = _RK4


@dataclass(frozen=True, kw_only=True)
class RK38(AbstractFixedRK):
    """Kutta's 3/8 rule, order 4, four stages per step (torchdiffeq's ``rk4``)."""

    tableau: ClassVar[ButcherTableau] = _RK38
