"""Engine routing for ``pydeq bench --backend julia``: each method runs on the Julia engine when the spec language
can describe its model, and every row says which engine produced it.

A claim hands its methods to :func:`route` (the continuous-DEQ claims do, through
``pydeq.bench.claims._julia.route_methods``). With ``ctx.backend == "julia"`` every pydeq DEQ core whose cell,
initial-state network and solver have Julia counterparts is replaced by a :class:`JuliaCore` on the *same* modules
(one set of weights for the optimiser), and each method's engine goes into ``ctx.engines``. After the claim the
runner calls :func:`label_rows`: each row's method and peer get their engine in brackets (``cdeq [julia]``,
``node [native]``, ``torchdiffeq [torchdiffeq]``), the notes say what the Julia engine could not run and why, and
``setup["engines"]`` keeps the record. Claims whose models the Julia engine cannot run at all (:data:`NOT_ON_JULIA`)
run natively and are labelled the same way. With ``--backend native`` nothing changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pydeq.bench.claim import BenchContext, ClaimResult

__all__ = ["JULIA", "NATIVE", "NOT_ON_JULIA", "PEER_LIBRARIES", "EngineChoice", "JuliaCore", "TranslatedCell",
           "engine_of", "label_rows", "note_engine", "route", "standard_block"]

JULIA, NATIVE = "julia", "native"
PEER_LIBRARIES = ("torchdeq", "torchdiffeq")

NOT_ON_JULIA = {
    "efficient-broyden-reuse": "Broyden re-use and Jacobian-free adjoints have no Julia counterpart (the Julia engine "
                               "differentiates by SciMLSensitivity's SteadyStateAdjoint), and the cell normalises its "
                               "weight spectrally inside each forward pass",
    "homoode": "HomoODE and neural ODEs are not in the spec language, and the DEQ row solves with Anderson, which has "
               "no Julia counterpart",
    "engine": "Anderson has no Julia counterpart (the Julia engine has Broyden, Newton-Krylov and continuous DEQs); "
              "the engine-julia claim compares the two engines on one spec",
    "selftest": "plain MLPs, no equilibrium model",
    "steady-state-grid": "a solver study on fixed-point maps called through pydeq.fixed_point, not spec models; "
                         "SecantEuler, ResidualEuler, VCAB3, Anderson and FixedPointIteration have no Julia "
                         "counterpart",
    "cdeq-table1": "three of its six rows train with Jacobian regularisation and every row reports per-sample "
                   "solver depth; the Julia solve stops batch-wide and has no Jacobian penalty",
    "cdeq-table1-depth": "it measures each sample's solver depth and trains with Jacobian regularisation; the "
                         "Julia solve stops batch-wide and has no Jacobian penalty",
}
"""Claims that do not route their methods, and why the Julia engine cannot run them."""


@dataclass(frozen=True)
class EngineChoice:
    """Which engine ran a method (``"julia"``, ``"native"`` or a peer library) and, when not Julia, why."""

    engine: str
    reason: str = ""


def note_engine(ctx: BenchContext, method: str, engine: str, reason: str = "") -> None:
    """Record that ``method`` ran on ``engine`` (with the reason when the Julia engine could not run it)."""
    ctx.engines[method] = EngineChoice(engine, reason)


def engine_of(ctx: BenchContext, claim_name: str, method: str) -> EngineChoice:
    """The engine of a row's method or peer, matched on the whole name and then on its first word
    (``"pydeq-matched d=128"`` is ``"pydeq-matched"``); unrecorded names are peers by their library prefix, else
    native with the claim's reason (:data:`NOT_ON_JULIA`)."""
    base = method.split(" ")[0]
    for key in (method, base):
        if key in ctx.engines:
            return ctx.engines[key]
    for library in PEER_LIBRARIES:
        if base.startswith(library):
            return EngineChoice(library)
    return EngineChoice(NATIVE, NOT_ON_JULIA.get(claim_name, "this claim does not route its methods to Julia"))


def label_rows(claim_name: str, result: ClaimResult, ctx: BenchContext) -> ClaimResult:
    """``result`` with every row's method and peer labelled by engine, the engines in ``setup["engines"]`` and the
    methods the Julia engine could not run, with the reasons, in the notes (for ``--backend julia``)."""
    seen: dict[str, EngineChoice] = {}

    def label(name: str | None) -> str | None:
        if name is None:
            return None
        choice = seen.setdefault(name, engine_of(ctx, claim_name, name))
        return f"{name} [{choice.engine}]"

    rows = [dataclasses.replace(r, method=label(r.method), peer=label(r.peer)) for r in result.rows]
    native = {n: c.reason for n, c in seen.items() if c.engine == NATIVE}
    lines = [f"Engines (--backend julia): {', '.join(f'{n} [{c.engine}]' for n, c in seen.items())}."]
    lines += [f"Not run by the Julia engine: {n}: {reason}." for n, reason in native.items()]
    notes = "\n".join([result.notes, *lines]) if result.notes else "\n".join(lines)
    setup = {**result.setup, "engines": {n: dataclasses.asdict(c) for n, c in seen.items()}}
    return dataclasses.replace(result, rows=rows, notes=notes, setup=setup)


class JuliaCore(nn.Module):
    """A DEQ core solved by the Julia engine, in place of a native :class:`pydeq.DEQ` on the same weights.

    ``model`` is a :class:`pydeq.spec.SpecModel` with ``backend="julia"`` whose leaf modules are the native core's
    own, so optimisers and ``state_dict`` see one set of weights. ``last_solution`` and :meth:`skip_loss` mirror
    :class:`pydeq.DEQ` (the Skip loss's ``z0`` is recomputed in torch, where its gradient lives); ``on_nfe``
    receives each solve's NFE, since f runs inside Julia where no torch hook sees it. Julia does not report its
    adjoint's VJP count, so ``last_solution.backward.nfe`` stays 0.
    """

    def __init__(self, model: nn.Module, on_nfe: Callable[[int], None] | None = None):
        super().__init__()
        self.model = model
        self.on_nfe = on_nfe
        self.last_solution: Any = None
        self._last_x: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        solution = self.model(x, return_solution=True)
        self.last_solution, self._last_x = solution, x
        if self.on_nfe is not None:
            self.on_nfe(solution.nfe)
        return solution.z

    def skip_loss(self) -> Tensor:
        """Mean absolute gap ``mean |z0 - z*|`` of the last call, as :meth:`pydeq.DEQ.skip_loss`."""
        if self.last_solution is None:
            raise RuntimeError("no solution yet: call the core on an input first.")
        return (self.model.initial_state(self._last_x) - self.last_solution.z).abs().mean()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)  # the last solution holds graph-attached tensors (deepcopy refuses them)
        state["last_solution"], state["_last_x"] = None, None
        return state


@dataclass(frozen=True)
class TranslatedCell:
    """A torch module described as a spec block: ``leaves`` are the module's own leaf modules in the depth-first
    order of the leaves of the block's torch module (``block.module()``), put in their places by :func:`_tie`;
    ``None`` keeps the built one (a parameter-free leaf such as an activation)."""

    block: Any
    leaves: tuple[nn.Module | None, ...]


def standard_block(module: nn.Module) -> TranslatedCell | str:
    """The spec block of a plain torch network (``nn.Sequential`` of Linear, Conv2d, GroupNorm and activations), or
    the reason there is none."""
    from pydeq import spec

    leaves = list(_leaves(module))
    blocks = []
    for leaf in leaves:
        block = _leaf_block(spec, leaf)
        if isinstance(block, str):
            return block
        blocks.append(block)
    return TranslatedCell(spec.Chain(*blocks), tuple(leaves))


def _leaves(module: nn.Module) -> Any:
    if isinstance(module, nn.Sequential):
        for child in module:
            yield from _leaves(child)
    else:
        yield module


def _leaf_block(spec: Any, m: nn.Module) -> Any:
    activations = {nn.Tanh: spec.Tanh, nn.ReLU: spec.ReLU, nn.Sigmoid: spec.Sigmoid, nn.Identity: spec.Identity}
    if type(m) in activations:
        return activations[type(m)]()
    if type(m) is nn.Softplus and m.beta == 1:
        return spec.Softplus()
    if type(m) is nn.Linear:
        return spec.Dense(m.in_features, m.out_features, bias=m.bias is not None)
    if type(m) is nn.Conv2d and m.dilation == (1, 1) and m.groups == 1 and m.padding_mode == "zeros" \
            and not isinstance(m.padding, str):
        return spec.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                           bias=m.bias is not None)
    if type(m) is nn.GroupNorm and m.affine:
        return spec.GroupNorm(m.num_groups, m.num_channels, eps=m.eps)
    return f"{type(m).__name__} has no spec block"


def _leaf_slots(module: nn.Module) -> Any:
    """``(parent, name)`` of every leaf module under ``module``, depth first."""
    for name, child in module.named_children():
        if next(child.children(), None) is None:
            yield module, name
        else:
            yield from _leaf_slots(child)


def _tie(built: nn.Module, leaves: tuple[nn.Module | None, ...]) -> None:
    """Put ``leaves`` in the places of the leaf modules of a module built from a spec block, in order."""
    slots = list(_leaf_slots(built))
    if len(slots) != len(leaves):
        raise RuntimeError(f"spec translation built {len(slots)} leaf modules for {len(leaves)} of the original")
    for (parent, name), leaf in zip(slots, leaves, strict=True):
        if leaf is not None:
            setattr(parent, name, leaf)


def _kind(core: nn.Module) -> str | None:
    import pydeq

    if isinstance(core, pydeq.SkipRegDEQ):
        return "SkipRegDEQ"
    if isinstance(core, pydeq.SkipDEQ):
        return "SkipDEQ"
    return "DEQ" if type(core) is pydeq.DEQ else None


def julia_core(core: nn.Module, translate: Callable[[nn.Module], TranslatedCell | str],
               on_nfe: Callable[[int], None] | None = None) -> JuliaCore | str:
    """A :class:`JuliaCore` doing what the native ``core`` (a :class:`pydeq.DEQ`, :class:`pydeq.SkipDEQ` or
    :class:`pydeq.SkipRegDEQ`) does, on its modules, or the reason the Julia engine cannot.

    ``translate`` describes the core's cell ``f(z, x)``; the initial-state network of a Skip DEQ must be a plain
    network (:func:`standard_block`). The translation is checked on a probe: f and the initial state must agree
    with the native core's exactly (the state's shape is also the input's, as in the bench's models).
    """
    from pydeq import spec
    from pydeq.julia.translate import julia_spec

    kind = _kind(core)
    if kind is None:
        return f"{type(core).__name__} is not a DEQ: the Julia engine runs DEQs, Skip DEQs and Skip Reg DEQs only"
    if core.state_shape is None:
        return "the DEQ's state shape is not declared (state_shape=...)"
    if core.solver is None or core.eval_solver is not None:
        return "the native default solver (Anderson) and eval_solver have no Julia counterpart"
    cell = translate(core.f)
    if isinstance(cell, str):
        return cell
    init = standard_block(core.init) if kind == "SkipDEQ" else None
    if isinstance(init, str):
        return f"the Skip DEQ's initial-state network: {init}"
    kinds = {"DEQ": spec.DEQSpec, "SkipDEQ": spec.SkipDEQSpec, "SkipRegDEQ": spec.SkipRegDEQSpec}
    extra = {"init": init.block} if init is not None else {}
    try:
        model_spec = kinds[kind](cell.block, solver=core.solver, adjoint=core.adjoint, **extra)
        model = spec.build(model_spec, backend="julia", on_failure=core.on_failure)
        _tie(model.f, cell.leaves)
        if init is not None:
            _tie(model.init, init.leaves)
        julia_spec(model)  # the solver, adjoint and norm must have Julia counterparts
    except (TypeError, ValueError) as err:
        return str(err)
    _check_probe(core, model)
    return JuliaCore(model, on_nfe)


def _check_probe(core: nn.Module, model: nn.Module) -> None:
    ref = next(core.f.parameters())
    probe = torch.randn((2, *core.state_shape), generator=torch.Generator().manual_seed(0)).to(ref)
    with torch.no_grad():
        torch.testing.assert_close(model.f(probe, probe), core.f(probe, probe), msg="spec translation of f differs")
        torch.testing.assert_close(model.initial_state(probe), core.initial_state(probe),
                                   msg="spec translation of the initial state differs")


def route(ctx: BenchContext, nets: dict[str, Any], translate: Callable[[nn.Module], TranslatedCell | str]) -> dict:
    """With ``--backend julia``, run each net's DEQ core on the Julia engine where it can (see :func:`julia_core`)
    and record every method's engine in ``ctx.engines``; with ``--backend native``, return ``nets`` untouched.

    ``nets`` maps method names to models whose ``core`` is solved and whose ``calls`` counts f evaluations.
    """
    if ctx.backend != JULIA:
        return nets
    for name, net in nets.items():
        library = next((lib for lib in PEER_LIBRARIES if name.startswith(lib)), None)
        if library is not None:
            note_engine(ctx, name, library)
            continue

        def count(n: int, net: Any = net) -> None:
            net.calls += n

        core = julia_core(net.core, translate, on_nfe=count)
        if isinstance(core, str):
            note_engine(ctx, name, NATIVE, core)
        else:
            net.core = core
            note_engine(ctx, name, JULIA)
    return nets
