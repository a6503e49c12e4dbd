"""pydeq: deep equilibrium models and infinite-time neural ODEs for PyTorch.

The native PyTorch engine is the default and runs everywhere; the Julia engine (``pydeq.julia``) is
optional and only imported when asked for.
"""

from ._adjoint import (
    AbstractAdjoint,
    BroydenReuseAdjoint,
    ImplicitAdjoint,
    JacobianFreeAdjoint,
    PhantomAdjoint,
    UnrolledAdjoint,
)
from ._linear import GMRES, AbstractLinearSolver, Direct, Neumann
from ._root import AbstractRootFinder, Anderson, Broyden, BroydenFactors, FixedPointIteration, NewtonKrylov
from ._solution import BackwardStats, ConvergenceError, ConvergenceWarning, NonFiniteError, Solution, Status
from .fixed_point import fixed_point
from .nn import DEQ, SkipDEQ, SkipRegDEQ, jacobian_frobenius

__version__ = "0.1.0"

__all__ = [
    "DEQ", "SkipDEQ", "SkipRegDEQ", "jacobian_frobenius",
    "AbstractAdjoint", "AbstractLinearSolver", "AbstractRootFinder", "Anderson", "BackwardStats", "Broyden",
    "BroydenFactors", "BroydenReuseAdjoint", "ConvergenceError", "ConvergenceWarning", "Direct",
    "FixedPointIteration", "GMRES", "ImplicitAdjoint", "JacobianFreeAdjoint", "Neumann", "NewtonKrylov",
    "NonFiniteError", "PhantomAdjoint", "Solution", "Status", "UnrolledAdjoint", "fixed_point",
]
