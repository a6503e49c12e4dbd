from .deq import DEQ, SkipDEQ, SkipRegDEQ
from .dropout import VariationalDropout, resample_each_call, reset_dropout
from .homoode import AugmentedNeuralODE, HomoODE
from .jacobian import jacobian_frobenius
from .losses import correction_loss, deq_correction_loss, solver_states
from .multiscale import (
    BranchLayout,
    MultiScaleClassifier,
    MultiScaleDEQ,
    MultiScaleNeuralODE,
    MultiScaleSkipDEQ,
    MultiScaleSkipRegDEQ,
)
from .neural_ode import DEQVectorField, NeuralODE
from .norm import SpectralNorm, WeightNorm, apply_norm, norm_cached, remove_norm

__all__ = [
    "DEQ", "AugmentedNeuralODE", "BranchLayout", "DEQVectorField", "MultiScaleClassifier",
    "HomoODE", "MultiScaleDEQ", "MultiScaleNeuralODE",
    "MultiScaleSkipDEQ", "MultiScaleSkipRegDEQ", "NeuralODE", "SkipDEQ", "SkipRegDEQ", "SpectralNorm",
    "VariationalDropout", "WeightNorm", "apply_norm", "correction_loss", "deq_correction_loss", "jacobian_frobenius",
    "norm_cached", "remove_norm", "resample_each_call", "reset_dropout", "solver_states",
]
