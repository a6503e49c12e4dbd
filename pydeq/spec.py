"""Declarative model specs: one description builds a torch module and the identical Lux model.

A spec is a small tree of building blocks (:class:`Dense`, :class:`Conv2d`, :class:`GroupNorm`, activations,
:class:`Chain`, :class:`Injection`, :class:`Residual`) inside a model (:class:`DEQ`, :class:`SkipDEQ`,
:class:`SkipRegDEQ`; a continuous DEQ is ``DEQ(f, solver=SteadyState(Tsit5()))``). :func:`build` turns it into a
:class:`SpecModel`, an ``nn.Module`` that owns the parameters (``state_dict`` and pickling never need Julia) and
runs on the native engine or, with ``backend="julia"``, on DeepEquilibriumNetworks.jl.

Weight layout (torch row-major -> Julia column-major). A row-major buffer read column-major has its
dimensions reversed, so inputs and states cross as they are: torch ``(batch, features)`` is Lux
``(features, batch)``, torch NCHW is Lux WHCN. Parameters are re-laid out once per call, differentiably:

* ``nn.Linear.weight`` ``(out, in)``: Lux ``Dense`` wants ``(out, in)`` column-major, i.e. the row-major
  buffer of ``weight.T``: **transpose** (:func:`dense_weight_to_julia`).
* ``nn.Conv2d.weight`` ``(out, in, kh, kw)``: reversed it is ``(kw, kh, in, out)``, already Lux's kernel
  layout; torch cross-correlates while Lux ``Conv`` (default ``cross_correlation=false``) convolves, so the
  kernel is **flipped** in both spatial dimensions (:func:`conv_weight_to_julia`); kernel size, stride and
  padding are written as ``(w, h)``.
* biases are vectors in both; so are ``nn.GroupNorm``'s ``weight`` and ``bias`` (Lux ``GroupNorm``'s ``scale`` and
  ``bias``), and both normalise each sample over contiguous groups of channels and all spatial positions.

The flat parameter vector is every block's arrays in spec order (f before init, layers in order, ``z``
before ``x`` in an injection, weight before bias), each column-major; the JSON records each array's
offset and Julia size, and the Julia side checks them against the Lux model.
"""

from __future__ import annotations

import abc
import json
import os
from dataclasses import KW_ONLY, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import check_policy

__all__ = [
    "AbstractBlock", "Dense", "Conv2d", "GroupNorm", "Tanh", "ReLU", "Sigmoid", "Softplus", "Identity", "Chain",
    "Injection", "Residual",
    "DEQ", "SkipDEQ", "SkipRegDEQ", "SpecModel", "build", "dense_weight_to_julia", "conv_weight_to_julia",
    "julia_spec", "julia_parameters", "BACKENDS", "BACKEND_ENV",
]

BACKENDS = ("torch", "julia")
BACKEND_ENV = "PYDEQ_BACKEND"
FORMAT = 1


def dense_weight_to_julia(weight: Tensor) -> tuple[Tensor, list[int]]:
    """Flat column-major buffer and Julia size of an ``nn.Linear`` weight ``(out, in)``: the transpose."""
    out_features, in_features = weight.shape
    return weight.t().reshape(-1), [out_features, in_features]


def conv_weight_to_julia(weight: Tensor) -> tuple[Tensor, list[int]]:
    """Flat column-major buffer and Julia size ``(kw, kh, in, out)`` of an ``nn.Conv2d`` weight
    ``(out, in, kh, kw)``: the kernel flipped in both spatial dimensions (convolution vs correlation)."""
    out_ch, in_ch, kh, kw = weight.shape
    return weight.flip((-2, -1)).reshape(-1), [kw, kh, in_ch, out_ch]


class AbstractBlock(abc.ABC):
    """A building block: makes its torch module, knows its output shape and its Lux translation."""

    @abc.abstractmethod
    def module(self) -> nn.Module:
        """A fresh torch module with PyTorch's default initialisation."""

    @abc.abstractmethod
    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample output shape for per-sample input ``shape`` (torch order)."""

    @abc.abstractmethod
    def julia(self, module: nn.Module, offset: int) -> tuple[dict, list[Tensor]]:
        """The block's JSON node and its parameters as flat column-major tensors, starting at ``offset``."""


def _params(pairs: list[tuple[str, Tensor, list[int]]], offset: int) -> tuple[list[dict], list[Tensor]]:
    slots, flats = [], []
    for name, flat, dims in pairs:
        slots.append({"name": name, "offset": offset, "dims": dims})
        flats.append(flat)
        offset += flat.numel()
    return slots, flats


@dataclass(frozen=True)
class Dense(AbstractBlock):
    """Affine map ``W v + b`` (``nn.Linear`` / Lux ``Dense``) on ``(batch, in_features)``."""

    in_features: int
    out_features: int
    _: KW_ONLY
    bias: bool = True

    def module(self) -> nn.Module:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if tuple(shape) != (self.in_features,):
            raise ValueError(
                f"Dense({self.in_features}, ...) needs per-sample shape ({self.in_features},); got {shape}"
            )
        return (self.out_features,)

    def julia(self, module: nn.Module, offset: int) -> tuple[dict, list[Tensor]]:
        pairs = [("weight", *dense_weight_to_julia(module.weight))]
        if self.bias:
            pairs.append(("bias", module.bias, [self.out_features]))
        slots, flats = _params(pairs, offset)
        node = {"type": "Dense", "in": self.in_features, "out": self.out_features, "bias": self.bias, "params": slots}
        return node, flats


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class Conv2d(AbstractBlock):
    """2-D convolution (``nn.Conv2d`` / Lux ``Conv``) on ``(batch, channels, height, width)``."""

    in_channels: int
    out_channels: int
    kernel_size: int | tuple[int, int]
    _: KW_ONLY
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] = 0
    bias: bool = True

    def module(self) -> nn.Module:
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                         padding=self.padding, bias=self.bias)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) != 3 or shape[0] != self.in_channels:
            raise ValueError(f"Conv2d({self.in_channels}, ...) needs per-sample shape ({self.in_channels}, H, W); "
                             f"got {shape}")
        (kh, kw), (sh, sw), (ph, pw) = _pair(self.kernel_size), _pair(self.stride), _pair(self.padding)
        return (self.out_channels, (shape[1] + 2 * ph - kh) // sh + 1, (shape[2] + 2 * pw - kw) // sw + 1)

    def julia(self, module: nn.Module, offset: int) -> tuple[dict, list[Tensor]]:
        pairs = [("weight", *conv_weight_to_julia(module.weight))]
        if self.bias:
            pairs.append(("bias", module.bias, [self.out_channels]))
        slots, flats = _params(pairs, offset)
        (kh, kw), (sh, sw), (ph, pw) = _pair(self.kernel_size), _pair(self.stride), _pair(self.padding)
        node = {"type": "Conv", "in": self.in_channels, "out": self.out_channels, "kernel": [kw, kh],
                "stride": [sw, sh], "pad": [pw, ph], "bias": self.bias, "params": slots}
        return node, flats


@dataclass(frozen=True)
class GroupNorm(AbstractBlock):
    """Group normalisation with a per-channel scale and shift (``nn.GroupNorm`` / Lux ``GroupNorm``) on
    ``(batch, channels, ...)``: each sample is normalised over ``channels // groups`` contiguous channels and
    every position, with ``eps`` added to the variance."""

    groups: int
    channels: int
    _: KW_ONLY
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.groups < 1 or self.channels % self.groups:
            raise ValueError(f"GroupNorm needs groups >= 1 dividing channels; got groups={self.groups}, "
                             f"channels={self.channels}. Pick groups among the divisors of {self.channels}.")

    def module(self) -> nn.Module:
        return nn.GroupNorm(self.groups, self.channels, eps=self.eps)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) < 2 or shape[0] != self.channels:
            raise ValueError(f"GroupNorm({self.groups}, {self.channels}) needs per-sample shape ({self.channels}, "
                             f"H, ...); got {shape}")
        return tuple(shape)

    def julia(self, module: nn.Module, offset: int) -> tuple[dict, list[Tensor]]:
        # Lux's parameter order: scale, then bias
        slots, flats = _params([("scale", module.weight, [self.channels]), ("bias", module.bias, [self.channels])],
                               offset)
        node = {"type": "GroupNorm", "channels": self.channels, "groups": self.groups, "epsilon": self.eps,
                "params": slots}
        return node, flats


class _Activation(AbstractBlock):
    julia_name: str
    torch_cls: type[nn.Module]

    def module(self) -> nn.Module:
        return self.torch_cls()

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def julia(self, module: nn.Module, offset: int) -> tuple[dict, list[Tensor]]:
        return {"type": "Activation", "function": self.julia_name}, []

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Tanh(_Activation):
    """Elementwise ``tanh``."""

    julia_name, torch_cls = "tanh", nn.Tanh


class ReLU(_Activation):
    """Elementwise ``max(v, 0)``."""

    julia_name, torch_cls = "relu", nn.ReLU


class Sigmoid(_Activation):
    """Elementwise logistic function."""

    julia_name, torch_cls = "sigmoid", nn.Sigmoid


class Softplus(_Activation):
    """Elementwise ``log(1 + exp(v))``."""

    julia_name, torch_cls = "softplus", nn.Softplus


class Identity(_Activation):
    """No-op (a linear DEQ: ``f(z, x) = W z + U x + b``)."""

    julia_name, torch_cls = "identity", nn.Identity


class _ChainModule(nn.Module):
    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(modules)

    def forward(self, *args: Tensor) -> Tensor:
        out = self.layers[0](*args)
        for layer in self.layers[1:]:
            out = layer(out)
        return out


@dataclass(frozen=True, init=False)
class Chain(AbstractBlock):
    """Blocks applied in order (nested chains are flattened). The first may take ``(z, x)``."""

    layers: tuple[AbstractBlock, ...]

    def __init__(self, *layers: AbstractBlock):
        flat: list[AbstractBlock] = []
        for layer in layers:
            if not isinstance(layer, AbstractBlock):
                raise TypeError(f"Chain takes spec blocks (Dense, Conv2d, Tanh, ...); got {type(layer).__name__}")
            flat.extend(layer.layers if isinstance(layer, Chain) else [layer])
        if not flat:
            raise ValueError("Chain needs at least one block")
        object.__setattr__(self, "layers", tuple(flat))

    def module(self) -> nn.Module:
        return _ChainModule([layer.module() for layer in self.layers])

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        for layer in self.layers:
            shape = layer.out_shape(shape)
        return shape

    def julia(self, module: nn.Module, offset: int) -> tuple[dict, list[Tensor]]:
        nodes, flats = [], []
        for layer, mod in zip(self.layers, module.layers, strict=True):
            node, fl = layer.julia(mod, offset)
            nodes.append(node)
            flats += fl
            offset += sum(t.numel() for t in fl)
        return {"type": "Chain", "layers": nodes}, flats


class _InjectionModule(nn.Module):
    def __init__(self, z: nn.Module, x: nn.Module):
        super().__init__()
        self.z, self.x = z, x

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return self.z(z) + self.x(x)


@dataclass(frozen=True)
class Injection(AbstractBlock):
    """``f(z, x) = z_block(z) + x_block(x)``: the input injection of a DEQ (Lux ``Parallel(+, ...)``)."""

    z: AbstractBlock
    x: AbstractBlock

    def module(self) -> nn.Module:
        return _InjectionModule(self.z.module(), self.x.module())

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.x.out_shape(shape)  # the state's shape is set by the injected input

    def julia(self, module: nn.Module, offset: int) -> tuple[dict, list[Tensor]]:
        znode, zf = self.z.julia(module.z, offset)
        xnode, xf = self.x.julia(module.x, offset + sum(t.numel() for t in zf))
        return {"type": "Injection", "z": znode, "x": xnode}, zf + xf


class _ResidualModule(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return self.block(z, x) + z


@dataclass(frozen=True)
class Residual(AbstractBlock):
    """``f(z, x) = block(z, x) + z``: a residual connection around a block that takes ``(z, x)`` (one that starts
    with an :class:`Injection`); Lux ``SkipConnection(block, (out, (z, x)) -> out + z)``. It must come first in f."""

    block: AbstractBlock

    def __post_init__(self) -> None:
        _check_f(self.block, what="Residual's block")

    def module(self) -> nn.Module:
        return _ResidualModule(self.block.module())

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.block.out_shape(shape)

    def julia(self, module: nn.Module, offset: int) -> tuple[dict, list[Tensor]]:
        node, flats = self.block.julia(module.block, offset)
        return {"type": "Residual", "block": node}, flats  # Lux's SkipConnection has its block's parameters


def _check_f(f: Any, what: str = "f") -> None:
    first = f.layers[0] if isinstance(f, Chain) else f
    if not isinstance(first, Injection | Residual):
        raise TypeError(
            f"{what} must be an Injection, a Residual or a Chain that starts with one, so that it takes (z, x); "
            f"got {f!r}. Example: Chain(Injection(z=Dense(8, 8), x=Dense(4, 8)), Tanh())."
        )


@dataclass(frozen=True)
class DEQ:
    """``z* = f(z*, x)`` started from zeros. ``solver=SteadyState(Tsit5())`` makes it a continuous DEQ.

    Args:
        f: an :class:`Injection` or a :class:`Chain` starting with one.
        solver: a pydeq solver (``Broyden``, ``NewtonKrylov``, ``SteadyState(Tsit5()/Dopri5())`` have Julia
            counterparts); ``None`` uses pydeq's default natively and ``Broyden()``'s tolerances in Julia.
        adjoint: ``ImplicitAdjoint`` (its linear solver's ``rtol``/``atol`` set Julia's adjoint solve);
            ``None`` is pydeq's default.
    """

    f: AbstractBlock
    _: KW_ONLY
    solver: Any = None
    adjoint: Any = None

    def __post_init__(self) -> None:
        _check_f(self.f)


@dataclass(frozen=True)
class SkipDEQ(DEQ):
    """Skip DEQ (Pal et al. 2022): an explicit network ``init`` predicts the start ``z0 = init(x)``."""

    init: AbstractBlock | None = None

    def __post_init__(self) -> None:
        _check_f(self.f)
        if not isinstance(self.init, AbstractBlock):
            raise TypeError(f"SkipDEQ needs init=<spec block> mapping x to the state; got {self.init!r}")


@dataclass(frozen=True)
class SkipRegDEQ(DEQ):
    """Skip Reg DEQ (Pal et al. 2022): no extra network, the start is ``z0 = f(0, x)``."""


_KINDS = {DEQ: "DEQ", SkipDEQ: "SkipDEQ", SkipRegDEQ: "SkipRegDEQ"}

# Julia counterparts of pydeq's solvers (NonlinearSolve.jl / OrdinaryDiffEq.jl names).
_JULIA_ROOT = {"Broyden": "Broyden", "NewtonKrylov": "NewtonKrylov"}
_JULIA_ODE = {"Tsit5": "Tsit5", "Dopri5": "DP5", "BS3": "BS3"}
# used when a spec leaves solver/adjoint as None (the Julia defaults of this engine)
JULIA_DEFAULT_TOLERANCES = {"rtol": 1e-4, "atol": 1e-6, "max_steps": 50}
JULIA_DEFAULT_ADJOINT = {"rtol": 1e-6, "atol": 1e-8, "max_steps": 100}


def _julia_norm(norm: Any) -> str:
    """The Julia name of a solver's per-sample norm; Julia's termination test takes its maximum over the batch."""
    from ._norms import l2_norm, max_norm, rms_norm

    names = {rms_norm: "rms", max_norm: "max", l2_norm: "l2"}
    if norm not in names:
        raise ValueError(f"the Julia engine knows the norms pydeq.rms_norm, pydeq.max_norm and pydeq.l2_norm; got "
                         f"{norm!r}. Use one of them, or backend='torch' for a custom norm.")
    return names[norm]


def _julia_solver(solver: Any) -> dict:
    if solver is None:
        tol = JULIA_DEFAULT_TOLERANCES
        return {"name": "Broyden", "reltol": tol["rtol"], "abstol": tol["atol"], "maxiters": tol["max_steps"],
                "norm": "rms"}
    kind = type(solver).__name__
    if kind == "SteadyState":
        method = type(solver.method).__name__
        if method not in _JULIA_ODE:
            raise ValueError(f"the Julia engine has no counterpart of SteadyState({method}()); use one of "
                             f"{sorted(_JULIA_ODE)}")
        if getattr(solver.method, "dt", None) is not None:
            raise ValueError(f"the Julia engine integrates adaptively; SteadyState({method}(dt={solver.method.dt})) "
                             f"has a fixed step. Drop dt, or use backend='torch'.")
        name = _JULIA_ODE[method]
    elif kind in _JULIA_ROOT:
        name = _JULIA_ROOT[kind]
    else:
        raise ValueError(f"the Julia engine has no counterpart of {kind}; use Broyden(...), NewtonKrylov(...) or "
                         "SteadyState(Tsit5() / Dopri5() / BS3()), or backend='torch'")
    return {"name": name, "reltol": float(solver.rtol), "abstol": float(solver.atol), "maxiters": int(solver.max_steps),
            "norm": _julia_norm(solver.norm)}


def _julia_integration(solver: Any) -> dict | None:
    """A continuous DEQ's integration tolerances (its method's own ``rtol``/``atol``, as natively); ``None`` for
    root finders. Julia's ``DynamicSS`` takes them as ``odesolve_kwargs``."""
    method = getattr(solver, "method", None)
    if type(solver).__name__ != "SteadyState" or method is None:
        return None
    return {"reltol": float(method.rtol), "abstol": float(method.atol)}


def _julia_adjoint(adjoint: Any) -> dict:
    linear = getattr(adjoint, "linear_solver", None)
    tol = JULIA_DEFAULT_ADJOINT
    return {
        "reltol": float(getattr(linear, "rtol", tol["rtol"])),
        "abstol": float(getattr(linear, "atol", tol["atol"])),
        "maxiters": int(getattr(linear, "max_steps", tol["max_steps"])),
    }


class SpecModel(nn.Module):
    """The ``nn.Module`` a spec builds: owns the parameters of ``f`` (and ``init``), solves natively or in Julia.

    ``forward(x) -> z*`` with ``x: (batch, *x_shape)`` and ``z*: (batch, *state_shape)``;
    ``return_solution=True`` returns the :class:`~pydeq.Solution` instead. The backend can be switched at any
    time (``model.backend = "julia"``); parameters and ``state_dict`` keys are the same for both.

    ``on_failure`` (``"warn"``, ``"raise"`` or ``"return"``) is applied alike on both engines, as
    :func:`pydeq.fixed_point` applies it. Which samples fail differs: the native solvers judge each sample
    on its own, while a Julia solve stops batch-wide (on the worst sample) and reports that one verdict for
    every sample (see :func:`pydeq.julia._op.julia_status`).
    """

    def __init__(self, spec: DEQ, *, backend: str | None = None, on_failure: str = "warn"):
        super().__init__()
        if type(spec) not in _KINDS:
            raise TypeError(f"spec must be spec.DEQ, spec.SkipDEQ or spec.SkipRegDEQ; got {type(spec).__name__}")
        check_policy(on_failure)
        self.spec = spec
        self.f = spec.f.module()
        self.init = spec.init.module() if isinstance(spec, SkipDEQ) else None
        self.backend = backend
        self.on_failure = on_failure

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str | None) -> None:
        value = value if value is not None else os.environ.get(BACKEND_ENV, "torch")
        value = "torch" if value == "native" else value  # `pydeq bench --backend native` spelling
        if value not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {value!r} (from the argument or ${BACKEND_ENV})")
        self._backend = value

    def state_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample state shape for per-sample input shape ``x_shape``."""
        if isinstance(self.spec, SkipDEQ):
            return self.spec.init.out_shape(tuple(x_shape))
        return self.spec.f.out_shape(tuple(x_shape))

    def initial_state(self, x: Tensor) -> Tensor:
        """``z0``: zeros (DEQ), ``init(x)`` (Skip DEQ) or ``f(0, x)`` (Skip Reg DEQ)."""
        if isinstance(self.spec, SkipDEQ):
            return self.init(x)
        zeros = x.new_zeros((x.shape[0], *self.state_shape(tuple(x.shape[1:]))))
        return self.f(zeros, x) if isinstance(self.spec, SkipRegDEQ) else zeros

    def forward(self, x: Tensor, return_solution: bool = False) -> Any:
        if self.backend == "julia":
            from .fixed_point import report_failures
            from .julia._op import julia_fixed_point

            solution = julia_fixed_point(self, x)
            what = f"Julia solve (stops batch-wide; retcode {solution.extras['julia_retcode']})"
            report_failures(solution, self.on_failure, what=what)
        else:
            from .fixed_point import fixed_point

            solution = fixed_point(self.f, x, self.initial_state(x), solver=self.spec.solver,
                                   adjoint=self.spec.adjoint, on_failure=self.on_failure)
        return solution if return_solution else solution.z


def build(spec: DEQ, *, backend: str | None = None, on_failure: str = "warn") -> SpecModel:
    """Build the torch module for ``spec``; ``backend`` ``"torch"`` (default, or ``$PYDEQ_BACKEND``) or ``"julia"``;
    ``on_failure`` as for :func:`pydeq.fixed_point`, on either engine."""
    return SpecModel(spec, backend=backend, on_failure=on_failure)


def _julia_tree(model: SpecModel) -> tuple[dict, list[Tensor]]:
    spec = model.spec
    f_node, flats = spec.f.julia(model.f, 0)
    init_node = None
    if isinstance(spec, SkipDEQ):
        init_node, init_flats = spec.init.julia(model.init, sum(t.numel() for t in flats))
        flats = flats + init_flats
    solver = _julia_solver(spec.solver)
    tree = {"format": FORMAT, "kind": _KINDS[type(spec)], "f": f_node, "init": init_node,
            "solver": {"name": solver["name"]}, "num_parameters": sum(t.numel() for t in flats)}
    tree.update(abstol=solver["abstol"], reltol=solver["reltol"], maxiters=solver["maxiters"], norm=solver["norm"],
                integration=_julia_integration(spec.solver), adjoint=_julia_adjoint(spec.adjoint))
    return tree, flats


def julia_spec(model: SpecModel) -> str:
    """The JSON text the Julia engine builds the identical Lux model from (``PyDEQ.build``)."""
    return json.dumps(_julia_tree(model)[0], sort_keys=True)


def julia_parameters(model: SpecModel) -> Tensor:
    """All parameters as one flat column-major vector in the spec's layout; differentiable, so gradients
    with respect to it flow back to the torch parameters through the transposes and flips."""
    flats = _julia_tree(model)[1]
    if not flats:
        raise ValueError("the model has no parameters")
    return torch.cat([t.reshape(-1) for t in flats])
