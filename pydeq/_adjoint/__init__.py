from ._base import AbstractAdjoint
from .approximate import JacobianFreeAdjoint, PhantomAdjoint
from .broyden_reuse import BroydenReuseAdjoint
from .implicit import ImplicitAdjoint

# back-propagation through the solver, DirectAdjoint, serves ODE solves too and lives with them (pydeq._ode.adjoint)
__all__ = ["AbstractAdjoint", "BroydenReuseAdjoint", "ImplicitAdjoint", "JacobianFreeAdjoint", "PhantomAdjoint"]
