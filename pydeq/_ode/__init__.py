"""ODE integrators: Runge–Kutta tableaux, one driver loop, gradient modes and the steady-state root finder."""

from .adjoint import AbstractODEAdjoint, BacksolveAdjoint, CheckpointAdjoint, DirectAdjoint, InterpolatingAdjoint
from .controller import PIController
from .events import Event
from .odeint import odeint
from .residual_euler import ResidualEuler
from .secant_euler import SecantEuler
from .solvers import (
    BS3,
    RK4,
    RK38,
    AbstractODESolver,
    Dopri5,
    Euler,
    Fehlberg2,
    Heun2,
    Heun3,
    HeunEuler,
    Midpoint,
    Tsit5,
)
from .steady_state import SteadyState
from .vcab3 import VCAB3

__all__ = [
    "AbstractODEAdjoint", "AbstractODESolver", "BS3", "BacksolveAdjoint", "DirectAdjoint", "Dopri5", "Euler",
    "PIController", "RK4", "ResidualEuler", "SecantEuler", "SteadyState", "Tsit5", "VCAB3", "odeint",
    "CheckpointAdjoint", "InterpolatingAdjoint", "Event", "Fehlberg2", "Heun2", "Heun3", "HeunEuler", "Midpoint",
    "RK38",
]
