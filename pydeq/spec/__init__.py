"""Declarative model specs: one description builds a torch module and the identical Lux model.

* :mod:`pydeq.spec.blocks`: the block language (``Dense``, ``Conv2d``, ``GroupNorm``, activations, ``Chain``,
  ``Injection``, ``Residual``);
* :mod:`pydeq.spec.models`: the model specs (``DEQSpec``, ``SkipDEQSpec``, ``SkipRegDEQSpec``; a continuous DEQ is
  ``DEQSpec(f, solver=SteadyState(Tsit5()))``; the old names ``DEQ``/``SkipDEQ``/``SkipRegDEQ``, which read like
  the layers ``pydeq.DEQ`` etc., are deprecated aliases for one release), :func:`build` and the
  :class:`SpecModel` it returns;
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
from .models import (
    BACKEND_ENV,
    BACKENDS,
    DEQSpec,
    SkipDEQSpec,
    SkipRegDEQSpec,
    SpecModel,
    build,
    register_engine,
)

__all__ = [
    "AbstractBlock", "Dense", "Conv2d", "GroupNorm", "Tanh", "ReLU", "Sigmoid", "Softplus", "Identity", "Chain",
    "Injection", "Residual", "DEQSpec", "SkipDEQSpec", "SkipRegDEQSpec", "SpecModel", "build", "register_engine",
    "BACKENDS", "BACKEND_ENV",
]


_RENAMED = {"DEQ": "DEQSpec", "SkipDEQ": "SkipDEQSpec", "SkipRegDEQ": "SkipRegDEQSpec"}


def __getattr__(name: str) -> object:
    if name in _RENAMED:
        import warnings

        new = _RENAMED[name]
        warnings.warn(f"pydeq.spec.{name} is now pydeq.spec.{new} (pydeq.{name} is the layer, a different type); "
                      f"the old name goes in the next release.", DeprecationWarning, stacklevel=2)
        return globals()[new]
    raise AttributeError(f"module 'pydeq.spec' has no attribute {name!r}")
