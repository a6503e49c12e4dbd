"""pydeq: deep equilibrium models and infinite-time neural ODEs for PyTorch.

The native PyTorch engine is the default and runs everywhere; the Julia engine (``pydeq.julia``) is
optional and only imported when asked for.
"""

from . import compat, interop, spec
from ._adjoint import (
    AbstractAdjoint,
    BroydenReuseAdjoint,
    ImplicitAdjoint,
    JacobianFreeAdjoint,
    PhantomAdjoint,
)
from ._linear import GMRES, AbstractLinearSolver, Direct, Neumann
from ._norms import l2_norm, max_norm, rms_norm
from ._ode import (
    BS3,
    RK4,
    RK38,
    VCAB3,
    AbstractODEAdjoint,
    AbstractODESolver,
    BacksolveAdjoint,
    CheckpointAdjoint,
    DirectAdjoint,
    Dopri5,
    Euler,
    Event,
    Fehlberg2,
    Heun2,
    Heun3,
    HeunEuler,
    InterpolatingAdjoint,
    Midpoint,
    PIController,
    ResidualEuler,
    SecantEuler,
    SteadyState,
    Tsit5,
    odeint,
)
from ._root import (
    AbstractRootFinder,
    Anderson,
    Broyden,
    BroydenFactors,
    FixedPointIteration,
    NewtonKrylov,
    Stagnation,
)
from ._solution import BackwardStats, ConvergenceError, ConvergenceWarning, NonFiniteError, Solution, Status
from .fixed_point import fixed_point
from .nn import (
    DEQ,
    AugmentedNeuralODE,
    DEQVectorField,
    HomoODE,
    MultiScaleDEQ,
    MultiScaleNeuralODE,
    MultiScaleSkipDEQ,
    MultiScaleSkipRegDEQ,
    NeuralODE,
    SkipDEQ,
    SkipRegDEQ,
    jacobian_frobenius,
)

__version__ = "0.1.0"

__all__ = [
    # layers
    "DEQ", "SkipDEQ", "SkipRegDEQ", "NeuralODE", "DEQVectorField", "HomoODE", "AugmentedNeuralODE",
    "MultiScaleDEQ", "MultiScaleSkipDEQ", "MultiScaleSkipRegDEQ", "MultiScaleNeuralODE",
    # functional API and records
    "fixed_point", "odeint", "Solution", "Status", "BackwardStats", "ConvergenceError", "ConvergenceWarning",
    "NonFiniteError", "jacobian_frobenius",
    # per-sample norms for tolerances
    "rms_norm", "max_norm", "l2_norm",
    # root finders and steady state
    "AbstractRootFinder", "FixedPointIteration", "Anderson", "Broyden", "BroydenFactors", "NewtonKrylov", "SteadyState",
    "ResidualEuler", "SecantEuler", "Stagnation",
    # ODE integrators
    "AbstractODESolver", "Tsit5", "Dopri5", "BS3", "VCAB3", "Euler", "RK4", "PIController",
    "HeunEuler", "Fehlberg2", "Midpoint", "Heun2", "Heun3", "RK38", "Event", "CheckpointAdjoint",
    # adjoints and linear solvers
    "AbstractAdjoint", "ImplicitAdjoint", "BroydenReuseAdjoint", "JacobianFreeAdjoint", "PhantomAdjoint",
    "AbstractODEAdjoint", "DirectAdjoint", "BacksolveAdjoint", "InterpolatingAdjoint", "AbstractLinearSolver",
    "GMRES", "Neumann", "Direct",
    # modules
    "compat", "interop", "spec",
]


# old names kept for one release: old -> (new, why)
_RENAMED = {
    "UnrolledAdjoint": ("DirectAdjoint", "one adjoint now back-propagates through the solver for fixed-point and "
                                         "ODE solves alike"),
}


def __getattr__(name: str) -> object:
    if name in _RENAMED:
        import warnings

        new, why = _RENAMED[name]
        warnings.warn(f"pydeq.{name} is now pydeq.{new} ({why}); the old name goes in the next release.",
                      DeprecationWarning, stacklevel=2)
        return globals()[new]
    raise AttributeError(f"module 'pydeq' has no attribute {name!r}")
