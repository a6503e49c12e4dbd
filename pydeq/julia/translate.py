"""The Lux translation of a spec: the JSON tree the Julia side builds the identical model from, and the weights.

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

import functools
import json
from typing import Any

import torch
from torch import Tensor, nn

from .._norms import l2_norm, max_norm, rms_norm
from ..spec.blocks import (
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
    as_pair,
)
from ..spec.models import KINDS, SkipDEQSpec, SpecModel

__all__ = ["dense_weight_to_julia", "conv_weight_to_julia", "lux_node", "julia_tree", "julia_spec",
           "julia_parameters", "FORMAT", "JULIA_DEFAULT_TOLERANCES", "JULIA_DEFAULT_ADJOINT"]

FORMAT = 1
# Julia counterparts of pydeq's solvers (NonlinearSolve.jl / OrdinaryDiffEq.jl names).
_JULIA_ROOT = {"Broyden": "Broyden", "NewtonKrylov": "NewtonKrylov"}
_JULIA_ODE = {"Tsit5": "Tsit5", "Dopri5": "DP5", "BS3": "BS3"}
_JULIA_ACTIVATIONS = {Tanh: "tanh", ReLU: "relu", Sigmoid: "sigmoid", Softplus: "softplus", Identity: "identity"}
# used when a spec leaves solver/adjoint as None (the Julia defaults of this engine)
JULIA_DEFAULT_TOLERANCES = {"rtol": 1e-4, "atol": 1e-6, "max_steps": 50}
JULIA_DEFAULT_ADJOINT = {"rtol": 1e-6, "atol": 1e-8, "max_steps": 100}


def dense_weight_to_julia(weight: Tensor) -> tuple[Tensor, list[int]]:
    """Flat column-major buffer and Julia size of an ``nn.Linear`` weight ``(out, in)``: the transpose."""
    out_features, in_features = weight.shape
    return weight.t().reshape(-1), [out_features, in_features]


def conv_weight_to_julia(weight: Tensor) -> tuple[Tensor, list[int]]:
    """Flat column-major buffer and Julia size ``(kw, kh, in, out)`` of an ``nn.Conv2d`` weight
    ``(out, in, kh, kw)``: the kernel flipped in both spatial dimensions (convolution vs correlation)."""
    out_ch, in_ch, kh, kw = weight.shape
    return weight.flip((-2, -1)).reshape(-1), [kw, kh, in_ch, out_ch]


def _params(pairs: list[tuple[str, Tensor, list[int]]], offset: int) -> tuple[list[dict], list[Tensor]]:
    slots, flats = [], []
    for name, flat, dims in pairs:
        slots.append({"name": name, "offset": offset, "dims": dims})
        flats.append(flat)
        offset += flat.numel()
    return slots, flats


@functools.singledispatch
def lux_node(block: AbstractBlock, module: nn.Module, offset: int) -> tuple[dict, list[Tensor]]:
    """The block's JSON node and its parameters as flat column-major tensors, starting at ``offset``."""
    if type(block) in _JULIA_ACTIVATIONS:
        return {"type": "Activation", "function": _JULIA_ACTIVATIONS[type(block)]}, []
    raise TypeError(f"the Julia engine has no Lux counterpart of {type(block).__name__}; use backend='native'.")


@lux_node.register
def _(block: Dense, module: nn.Module, offset: int) -> tuple[dict, list[Tensor]]:
    pairs = [("weight", *dense_weight_to_julia(module.weight))]
    if block.bias:
        pairs.append(("bias", module.bias, [block.out_features]))
    slots, flats = _params(pairs, offset)
    return {"type": "Dense", "in": block.in_features, "out": block.out_features, "bias": block.bias,
            "params": slots}, flats


@lux_node.register
def _(block: Conv2d, module: nn.Module, offset: int) -> tuple[dict, list[Tensor]]:
    pairs = [("weight", *conv_weight_to_julia(module.weight))]
    if block.bias:
        pairs.append(("bias", module.bias, [block.out_channels]))
    slots, flats = _params(pairs, offset)
    (kh, kw), (sh, sw), (ph, pw) = as_pair(block.kernel_size), as_pair(block.stride), as_pair(block.padding)
    return {"type": "Conv", "in": block.in_channels, "out": block.out_channels, "kernel": [kw, kh],
            "stride": [sw, sh], "pad": [pw, ph], "bias": block.bias, "params": slots}, flats


@lux_node.register
def _(block: GroupNorm, module: nn.Module, offset: int) -> tuple[dict, list[Tensor]]:
    # Lux's parameter order: scale, then bias
    slots, flats = _params([("scale", module.weight, [block.channels]), ("bias", module.bias, [block.channels])],
                           offset)
    return {"type": "GroupNorm", "channels": block.channels, "groups": block.groups, "epsilon": block.eps,
            "params": slots}, flats


@lux_node.register
def _(block: Chain, module: nn.Module, offset: int) -> tuple[dict, list[Tensor]]:
    nodes, flats = [], []
    for layer, mod in zip(block.layers, module.layers, strict=True):
        node, fl = lux_node(layer, mod, offset)
        nodes.append(node)
        flats += fl
        offset += sum(t.numel() for t in fl)
    return {"type": "Chain", "layers": nodes}, flats


@lux_node.register
def _(block: Injection, module: nn.Module, offset: int) -> tuple[dict, list[Tensor]]:
    znode, zf = lux_node(block.z, module.z, offset)
    xnode, xf = lux_node(block.x, module.x, offset + sum(t.numel() for t in zf))
    return {"type": "Injection", "z": znode, "x": xnode}, zf + xf


@lux_node.register
def _(block: Residual, module: nn.Module, offset: int) -> tuple[dict, list[Tensor]]:
    node, flats = lux_node(block.block, module.block, offset)
    return {"type": "Residual", "block": node}, flats  # Lux's SkipConnection has its block's parameters


def _julia_norm(norm: Any) -> str:
    """The Julia name of a solver's per-sample norm; Julia's termination test takes its maximum over the batch."""
    names = {rms_norm: "rms", max_norm: "max", l2_norm: "l2"}
    if norm not in names:
        raise ValueError(f"the Julia engine knows the norms pydeq.rms_norm, pydeq.max_norm and pydeq.l2_norm; got "
                         f"{norm!r}. Use one of them, or backend='native' for a custom norm.")
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
                             f"has a fixed step. Drop dt, or use backend='native'.")
        name = _JULIA_ODE[method]
    elif kind in _JULIA_ROOT:
        name = _JULIA_ROOT[kind]
    else:
        raise ValueError(f"the Julia engine has no counterpart of {kind}; use Broyden(...), NewtonKrylov(...) or "
                         "SteadyState(Tsit5() / Dopri5() / BS3()), or backend='native'")
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


def julia_tree(model: SpecModel) -> tuple[dict, list[Tensor]]:
    """The spec's JSON tree (model kind, Lux nodes, solver and adjoint settings) and its flat parameters."""
    spec = model.spec
    f_node, flats = lux_node(spec.f, model.f, 0)
    init_node = None
    if isinstance(spec, SkipDEQSpec):
        init_node, init_flats = lux_node(spec.init, model.init, sum(t.numel() for t in flats))
        flats = flats + init_flats
    solver = _julia_solver(spec.solver)
    tree = {"format": FORMAT, "kind": KINDS[type(spec)], "f": f_node, "init": init_node,
            "solver": {"name": solver["name"]}, "num_parameters": sum(t.numel() for t in flats)}
    tree.update(abstol=solver["abstol"], reltol=solver["reltol"], maxiters=solver["maxiters"], norm=solver["norm"],
                integration=_julia_integration(spec.solver), adjoint=_julia_adjoint(spec.adjoint))
    return tree, flats


def julia_spec(model: SpecModel) -> str:
    """The JSON text the Julia engine builds the identical Lux model from (``PyDEQ.build``)."""
    return json.dumps(julia_tree(model)[0], sort_keys=True)


def julia_parameters(model: SpecModel) -> Tensor:
    """All parameters as one flat column-major vector in the spec's layout; differentiable, so gradients
    with respect to it flow back to the torch parameters through the transposes and flips."""
    flats = julia_tree(model)[1]
    if not flats:
        raise ValueError("the model has no parameters")
    return torch.cat([t.reshape(-1) for t in flats])
