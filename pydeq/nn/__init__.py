from .deq import DEQ, SkipDEQ, SkipRegDEQ
from .homoode import AugmentedNeuralODE, HomoODE
from .jacobian import jacobian_frobenius
from .neural_ode import DEQVectorField, NeuralODE

__all__ = ["DEQ", "AugmentedNeuralODE", "DEQVectorField", "HomoODE", "NeuralODE", "SkipDEQ", "SkipRegDEQ",
           "jacobian_frobenius"]
