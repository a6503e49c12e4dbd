"""Native engine vs the Julia engine on one spec and one set of weights (a claim of ``pydeq bench engine``).

Model: the engine claim's tanh-MLP DEQ ``z* = tanh(W z + U x + b)`` (batch 128, input 784, state 128, ``W`` at
spectral norm 0.9, float32) written as a :mod:`pydeq.spec` model, so that one :class:`~pydeq.spec.SpecModel` runs
natively (``backend="native"``) and in Julia (``backend="julia"``) on the same parameters. Forward: Broyden (the
engine claim's Anderson has no Julia counterpart) to a relative residual of 1e-4 in ``pydeq.rms_norm``, at most 60
steps; backward: implicit, GMRES to a relative 1e-5, at most 40 iterations. The native solver stops each sample
on its own test, the Julia solve stops the batch together on its worst sample, so NFE and residuals differ even
when both meet the tolerance. Gradients are compared with each other and with a float64 native reference
(Broyden to 1e-11, GMRES to 1e-11).

The claim runs wherever the Julia engine starts: with ``--backend julia`` (the command line starts it) or when
juliacall is installed and a Julia is at hand (``julia`` on ``PATH`` or ``PYTHON_JULIACALL_EXE``). Elsewhere it is
skipped with the reason.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
import shutil
import time
from typing import Any

import torch

import pydeq
from pydeq import spec
from pydeq.bench.claim import BenchContext, ClaimResult, Row, SkipClaim, claim
from pydeq.bench.routing import JULIA, NATIVE, note_engine
from pydeq.bench.timing import Timing, synchronize

__all__ = ["engine_native_vs_julia", "julia_unavailable"]

FWD_RTOL, BWD_RTOL, MAX_STEPS, BWD_STEPS = 1e-4, 1e-5, 60, 40
BATCH, INPUT, STATE, RHO = 128, 784, 128, 0.9
AGREEMENT = 1e-3  # relative gradient difference the two engines must stay within (both solve to ~1e-4/1e-5)


def julia_unavailable(ctx: BenchContext) -> str | None:
    """Why the Julia engine cannot run here, or ``None`` once it has started."""
    import pydeq.julia as pj

    if pj.is_loaded():
        return None
    if ctx.backend != JULIA:
        if importlib.util.find_spec("juliacall") is None:
            return "juliacall is not installed (pip install 'pydeq[julia]', then python -m pydeq.julia setup)"
        if not (shutil.which("julia") or os.environ.get("PYTHON_JULIACALL_EXE")):
            return ("no Julia at hand: put julia on PATH or set PYTHON_JULIACALL_EXE, or run with --backend julia to "
                    "let juliapkg install one")
    try:
        pj.load()
    except pj.JuliaUnavailableError as err:
        return str(err)
    return None


def _model(ctx: BenchContext) -> spec.SpecModel:
    f = spec.Chain(spec.Injection(z=spec.Dense(STATE, STATE, bias=False), x=spec.Dense(INPUT, STATE)), spec.Tanh())
    solver = pydeq.Broyden(rtol=FWD_RTOL, atol=0.0, max_steps=MAX_STEPS)
    adjoint = pydeq.ImplicitAdjoint(linear_solver=pydeq.GMRES(rtol=BWD_RTOL, atol=0.0, max_steps=BWD_STEPS))
    model = spec.build(spec.DEQSpec(f, solver=solver, adjoint=adjoint), on_failure="return")
    gen = torch.Generator().manual_seed(ctx.seed + STATE)
    with torch.no_grad():
        injection = model.f.layers[0]
        V = torch.randn(STATE, STATE, generator=gen)
        injection.z.weight.copy_(RHO * V / torch.linalg.matrix_norm(V, 2))
        injection.x.weight.copy_(torch.randn(STATE, INPUT, generator=gen) / INPUT**0.5)
        injection.x.bias.zero_()
    return model.to(ctx.device)


def _step(model: spec.SpecModel, backend: str, x: torch.Tensor, c: torch.Tensor) -> dict[str, Any]:
    """One forward and backward on ``backend``, timed apart, with the statistics the rows report."""
    model.backend = backend
    model.zero_grad(set_to_none=True)
    synchronize(x.device)
    t0 = time.perf_counter()
    sol = model(x, return_solution=True)
    synchronize(x.device)
    t1 = time.perf_counter()
    (sol.z * c).sum().backward()
    synchronize(x.device)
    t2 = time.perf_counter()
    z = sol.z.detach()
    return {"fwd": t1 - t0, "bwd": t2 - t1, "nfe": float(sol.nfe),
            "residual": float((sol.residual / pydeq.rms_norm(z)).max()),
            "converged": float(sol.converged.float().mean()),
            "grad": torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()}


def _reference(model: spec.SpecModel, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Parameter gradient of ``sum(c * z*)`` from a tight float64 native solve of the same model."""
    ref = copy.deepcopy(model).double()
    tight = pydeq.Broyden(rtol=1e-11, atol=0.0, max_steps=300)
    linear = pydeq.GMRES(rtol=1e-11, atol=0.0, max_steps=300)
    ref.spec = dataclasses.replace(ref.spec, solver=tight, adjoint=pydeq.ImplicitAdjoint(linear_solver=linear))
    ref.backend = "native"
    (ref(x.double()) * c.double()).sum().backward()
    return torch.cat([p.grad.reshape(-1) for p in ref.parameters()])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@claim("engine-julia", title="Native engine vs Julia engine on one spec and one set of weights: time, NFE, "
       "residual, gradient agreement", paper="pydeq's two engines must give the same gradient to the solver "
       "tolerances", suites=("engine",))
def engine_native_vs_julia(ctx: BenchContext) -> ClaimResult:
    why = julia_unavailable(ctx)
    if why is not None:
        raise SkipClaim(f"the Julia engine is not available here: {why}")
    note_engine(ctx, "julia", JULIA)
    note_engine(ctx, "native", NATIVE, "the reference side of this comparison")
    model = _model(ctx)
    gen = torch.Generator().manual_seed(ctx.seed)
    x = torch.randn(BATCH, INPUT, generator=gen).to(ctx.device)
    c = torch.randn(BATCH, STATE, generator=gen).to(ctx.device)
    ref = _reference(model, x, c)
    runs: dict[str, list[dict[str, Any]]] = {"julia": [], "native": []}
    backends = {"julia": "julia", "native": "native"}
    for name in runs:  # warm-up: the first Julia call compiles
        _step(model, backends[name], x, c)
    for _ in ctx.bar(range(max(ctx.repeats, 3)), desc="engine: native vs Julia"):
        for name in runs:  # interleaved so that machine drift hits both alike
            runs[name].append(_step(model, backends[name], x, c))
    stats = {}
    for name, rs in runs.items():
        last = rs[-1]
        stats[name] = {"forward_ms_median": 1e3 * Timing(tuple(r["fwd"] for r in rs)).median,
                       "backward_ms_median": 1e3 * Timing(tuple(r["bwd"] for r in rs)).median,
                       "nfe_forward": last["nfe"], "final_rel_residual": last["residual"],
                       "converged_fraction": last["converged"], "grad_rel_error": _rel(last["grad"], ref)}
    agreement = _rel(runs["julia"][-1]["grad"], runs["native"][-1]["grad"])
    metrics = {**{f"julia_{k}": v for k, v in stats["julia"].items()},
               **{f"native_{k}": v for k, v in stats["native"].items()}, "grad_rel_difference": agreement}
    steps = {k: Timing(tuple(r["fwd"] + r["bwd"] for r in rs)) for k, rs in runs.items()}
    text = (f"NFE {stats['julia']['nfe_forward']:.0f} (Julia, batch-wide stop) vs "
            f"{stats['native']['nfe_forward']:.0f} (native, per sample); residual "
            f"{stats['julia']['final_rel_residual']:.1e} vs {stats['native']['final_rel_residual']:.1e}; "
            f"gradient error vs float64 {stats['julia']['grad_rel_error']:.1e} vs "
            f"{stats['native']['grad_rel_error']:.1e}")
    timing = Row.speedup("julia", "native", steps["julia"], steps["native"], quantity="train step speed-up "
                         "(native time / Julia time), same spec and weights", paper_figure="(engine comparison, "
                         "no claim)", at_least=1.0)
    rows = [dataclasses.replace(timing, held=None, target=None, metrics={**timing.metrics, **metrics}, why=text),
            Row(method="julia", peer="native", quantity="gradient agreement (relative difference)", ratio=agreement,
                target=AGREEMENT, metrics=metrics, paper_figure=f"<= {AGREEMENT:g}",
                measured_figure=f"{agreement:.1e}", held=agreement <= AGREEMENT, why=text)]
    return ClaimResult(rows=rows, series={"backward_time": {k: [r["bwd"] for r in rs] for k, rs in runs.items()}},
                       setup={"batch": BATCH, "input": INPUT, "state": STATE, "spectral_norm": RHO,
                              "forward": f"Broyden rtol {FWD_RTOL:g}, {MAX_STEPS} steps",
                              "backward": f"GMRES rtol {BWD_RTOL:g}, {BWD_STEPS} iterations",
                              "dtype": "float32", "stats": stats},
                       summary=f"native vs Julia on one spec: gradients agree to {agreement:.1e}; {text}.")
