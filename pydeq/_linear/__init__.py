from ._base import AbstractLinearSolver, LinearSolution
from .direct import Direct
from .gmres import GMRES
from .neumann import Neumann

__all__ = ["AbstractLinearSolver", "LinearSolution", "Direct", "GMRES", "Neumann"]
