from ._base import AbstractRootFinder, Stagnation, check_stop_fields, solve
from .anderson import Anderson
from .broyden import Broyden, BroydenFactors
from .fixed_point_iteration import FixedPointIteration
from .newton_krylov import NewtonKrylov

__all__ = ["AbstractRootFinder", "Stagnation", "check_stop_fields", "solve", "Anderson", "Broyden", "BroydenFactors",
           "FixedPointIteration", "NewtonKrylov"]
