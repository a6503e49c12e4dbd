from ._base import AbstractRootFinder, Stagnation, solve
from .anderson import Anderson
from .broyden import Broyden, BroydenFactors
from .fixed_point_iteration import FixedPointIteration
from .newton_krylov import NewtonKrylov

__all__ = ["AbstractRootFinder", "Stagnation", "solve", "Anderson", "Broyden", "BroydenFactors", "FixedPointIteration",
           "NewtonKrylov"]
