"""Declarative model specs: one description builds a torch module and the identical Lux model.

* :mod:`pydeq.spec.blocks`: the block language (``Dense``, ``Conv2d``, ``GroupNorm``, activations, ``Chain``,
  ``Injection``, ``Residual``);
* :mod:`pydeq.spec.models`: the model specs (``DEQ``, ``SkipDEQ``, ``SkipRegDEQ``; a continuous DEQ is
  ``DEQ(f, solver=SteadyState(Tsit5()))``), :func:`build` and the :class:`SpecModel` it returns;
* the Lux translation and the weight layout live with the Julia bridge, :mod:`pydeq.julia.translate`.
"""

from .blocks import (
    AbstractBlock,
    Chain,
    Conv2d,
    Dense,
    GroupNorm,
    Identity,
    Injection,
    ReLU,
    Residual,
    Sigmoid,
    Softplus,
    Tanh,
)
from .models import BACKEND_ENV, BACKENDS, DEQ, SkipDEQ, SkipRegDEQ, SpecModel, build, register_engine

__all__ = [
    "AbstractBlock", "Dense", "Conv2d", "GroupNorm", "Tanh", "ReLU", "Sigmoid", "Softplus", "Identity", "Chain",
    "Injection", "Residual", "DEQ", "SkipDEQ", "SkipRegDEQ", "SpecModel", "build", "register_engine", "BACKENDS",
    "BACKEND_ENV",
]
