from ._base import AbstractAdjoint
from .approximate import JacobianFreeAdjoint, PhantomAdjoint
from .broyden_reuse import BroydenReuseAdjoint
from .implicit import ImplicitAdjoint
from .unrolled import UnrolledAdjoint

__all__ = ["AbstractAdjoint", "BroydenReuseAdjoint", "ImplicitAdjoint", "JacobianFreeAdjoint", "PhantomAdjoint",
           "UnrolledAdjoint"]
