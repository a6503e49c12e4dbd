"""Model specs (``DEQSpec``, ``SkipDEQSpec``, ``SkipRegDEQSpec``) and the ``nn.Module`` they build, on any engine.

:func:`build` turns a spec into a :class:`SpecModel`, an ``nn.Module`` that owns the parameters (``state_dict``
and pickling never need Julia) and solves with the native engine or another registered one. Engines register
themselves with :func:`register_engine`: the Julia bridge does so when ``pydeq.julia`` is imported, so this
module never imports it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any

from torch import Tensor, nn

from .._checks import check_policy
from .._solution import Solution
from ..fixed_point import fixed_point, report_failures
from .blocks import AbstractBlock, check_f

__all__ = ["DEQSpec", "SkipDEQSpec", "SkipRegDEQSpec", "KINDS", "SpecModel", "build", "register_engine", "BACKENDS",
           "BACKEND_ENV"]

BACKENDS = ("native", "julia")
BACKEND_ENV = "PYDEQ_BACKEND"


@dataclass(frozen=True)
class DEQSpec:
    """``z* = f(z*, x)`` started from zeros. ``solver=SteadyState(Tsit5())`` makes it a continuous DEQ.

    Args:
        f: an :class:`Injection` or a :class:`Chain` starting with one.
        solver: a pydeq solver (``Broyden``, ``NewtonKrylov``, ``SteadyState(Tsit5()/Dopri5()/BS3())`` have Julia
            counterparts); ``None`` uses pydeq's default natively and ``Broyden()``'s tolerances in Julia.
        adjoint: ``ImplicitAdjoint`` (its linear solver's ``rtol``/``atol`` set Julia's adjoint solve);
            ``None`` is pydeq's default.
    """

    f: AbstractBlock
    _: KW_ONLY
    solver: Any = None
    adjoint: Any = None

    def __post_init__(self) -> None:
        check_f(self.f)


@dataclass(frozen=True)
class SkipDEQSpec(DEQSpec):
    """Skip DEQ (Pal et al. 2022): an explicit network ``init`` predicts the start ``z0 = init(x)``."""

    init: AbstractBlock | None = None

    def __post_init__(self) -> None:
        check_f(self.f)
        if not isinstance(self.init, AbstractBlock):
            raise TypeError(f"SkipDEQ needs init=<spec block> mapping x to the state; got {self.init!r}")


@dataclass(frozen=True)
class SkipRegDEQSpec(DEQSpec):
    """Skip Reg DEQ (Pal et al. 2022): no extra network, the start is ``z0 = f(0, x)``."""


KINDS = {DEQSpec: "DEQ", SkipDEQSpec: "SkipDEQ", SkipRegDEQSpec: "SkipRegDEQ"}
"""The model kinds by spec class, as the Julia side names them."""

Engine = Callable[["SpecModel", Tensor], Solution]
_ENGINES: dict[str, Engine] = {}
_UNREGISTERED = {"julia": "import pydeq.julia first (pip install 'pydeq[julia]'; see docs/julia.md)"}


def register_engine(name: str, solve: Engine) -> None:
    """Make ``backend=name`` run ``solve(model, x) -> Solution`` (gradients attached, no failure policy applied:
    :class:`SpecModel` applies ``on_failure``). The Julia bridge registers ``"julia"`` when imported."""
    if name not in BACKENDS or name == "native":
        raise ValueError(f"register_engine takes one of {BACKENDS[1:]}; got {name!r}")
    _ENGINES[name] = solve


class SpecModel(nn.Module):
    """The ``nn.Module`` a spec builds: owns the parameters of ``f`` (and ``init``), solves natively or in Julia.

    ``forward(x) -> z*`` with ``x: (batch, *x_shape)`` and ``z*: (batch, *state_shape)``;
    ``return_solution=True`` returns the :class:`~pydeq.Solution` instead. The backend can be switched at any
    time (``model.backend = "julia"``); parameters and ``state_dict`` keys are the same for both.

    ``on_failure`` (``"warn"``, ``"raise"`` or ``"return"``) is applied alike on both engines, as
    :func:`pydeq.fixed_point` applies it. Which samples fail differs: the native solvers judge each sample
    on its own, while a Julia solve stops batch-wide (on the worst sample) and reports that one verdict for
    every sample (docs/julia.md).
    """

    def __init__(self, spec: DEQSpec, *, backend: str | None = None, on_failure: str = "warn"):
        super().__init__()
        if type(spec) not in KINDS:
            raise TypeError(f"spec must be spec.DEQSpec, spec.SkipDEQSpec or spec.SkipRegDEQSpec; got "
                            f"{type(spec).__name__}")
        check_policy(on_failure)
        self.spec = spec
        self.f = spec.f.module()
        self.init = spec.init.module() if isinstance(spec, SkipDEQSpec) else None
        self.backend = backend
        self.on_failure = on_failure

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str | None) -> None:
        value = value if value is not None else os.environ.get(BACKEND_ENV, "native")
        if value == "torch":  # the old name of the native engine
            warnings.warn("backend='torch' is now spelled backend='native' (as in `pydeq bench --backend`); 'torch' "
                          "goes in the next release.", DeprecationWarning, stacklevel=3)
            value = "native"
        if value not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {value!r} (from the argument or ${BACKEND_ENV})")
        self._backend = value

    def state_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample state shape for per-sample input shape ``x_shape``."""
        if isinstance(self.spec, SkipDEQSpec):
            return self.spec.init.out_shape(tuple(x_shape))
        return self.spec.f.out_shape(tuple(x_shape))

    def initial_state(self, x: Tensor) -> Tensor:
        """``z0``: zeros (DEQ), ``init(x)`` (Skip DEQ) or ``f(0, x)`` (Skip Reg DEQ)."""
        if isinstance(self.spec, SkipDEQSpec):
            return self.init(x)
        zeros = x.new_zeros((x.shape[0], *self.state_shape(tuple(x.shape[1:]))))
        return self.f(zeros, x) if isinstance(self.spec, SkipRegDEQSpec) else zeros

    def forward(self, x: Tensor, return_solution: bool = False) -> Any:
        if self.backend == "native":
            solution = fixed_point(self.f, x, self.initial_state(x), solver=self.spec.solver,
                                   adjoint=self.spec.adjoint, on_failure=self.on_failure)
        else:
            if self.backend not in _ENGINES:
                raise RuntimeError(f"backend={self.backend!r} has no engine registered: "
                                   f"{_UNREGISTERED[self.backend]}.")
            solution = _ENGINES[self.backend](self, x)
            retcode = solution.extras.get("julia_retcode", "?")
            report_failures(solution, self.on_failure, what=f"Julia solve (stops batch-wide; retcode {retcode})")
        return solution if return_solution else solution.z


def build(spec: DEQSpec, *, backend: str | None = None, on_failure: str = "warn") -> SpecModel:
    """Build the torch module for ``spec``; ``backend`` ``"native"`` (default, or ``$PYDEQ_BACKEND``) or ``"julia"``;
    ``on_failure`` as for :func:`pydeq.fixed_point`, on either engine."""
    return SpecModel(spec, backend=backend, on_failure=on_failure)
