"""Claim: continuous DEQs converge at the paper's tolerances at any state size, for fewer f calls than a neural ODE.

On maps ``f(z, x) = tanh(W z + x)`` with ``||W||_2`` in {0.5, 0.9, 1.5} (the Jacobian's spectral radius grows
with it), ``x = 0.5 N(0, 1)``, batch 32, widths 16 / 128 / 1024 and relative tolerances 5e-3 (Pal et al.'s MNIST
setting) and 1e-4, measured side by side: the fraction of samples whose independent relative residual
``||f(z) − z||₂ / ||f(z)||₂`` (computed here, outside the solver) meets the tolerance, and the forward f calls of

- ``SteadyState(rtol=tol, atol=0)`` with its default method (``ResidualEuler``), with ``Tsit5`` and with
  ``VCAB3`` (both at ``rtol = atol = tol`` for the local error, as the paper), default ``max_steps``;
- the neural ODE ``du/dt = f(u, x) − u`` over [0, 1] from ``u = 0`` with ``Tsit5`` at the same tolerance;
- ``Anderson(rtol=tol, atol=0)`` with its default ``max_steps`` and plain ``FixedPointIteration`` (reference).

Every solve is relative (``atol = 0``, DeepEquilibriumNetworks.jl's ``rel_norm``), so the independent check and
the solver's test agree up to the norm (rms and Euclidean give the same relative residual). A second family
repeats one 16-entry map block-diagonally to 128 and 1024 entries: the spectrum is then the same at every width,
which separates the stopping test's dependence on the state size (none with the rms norm) from the map's (a
random 16×16 W of spectral norm 1.5 has spectral radius ~0.9, a 1024×1024 one ~0.76).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

import pydeq
from pydeq.bench.claim import BenchContext, ClaimResult, Row, claim

__all__ = ["GridMap", "grid_maps", "measure_map", "grid_rows", "markdown_table", "steady_state_grid"]

PAPER = "Pal, Edelman & Rackauckas (2022), arXiv 2201.12240"
WIDTHS, NORMS, TOLS, BATCH = (16, 128, 1024), (0.5, 0.9, 1.5), (5e-3, 1e-4), 32
METHODS = ("default", "tsit5", "vcab3", "node-tsit5", "anderson", "fixed-point")


@dataclass(frozen=True)
class GridMap:
    """One map of the grid: ``f(z, x) = tanh(W z + x)`` and its input batch."""

    family: str
    width: int
    snorm: float
    W: torch.Tensor
    x: torch.Tensor

    def f(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.W.T + x)

    @property
    def radius(self) -> float:
        """Spectral radius of ``W`` (the Jacobian's is at most this)."""
        return float(torch.linalg.eigvals(self.W.double()).abs().max())


def grid_maps(seed: int = 0, widths: Iterable[int] = WIDTHS, snorms: Iterable[float] = NORMS) -> list[GridMap]:
    """The issue's random maps (``family="random"``) and the repeated 16-entry maps (``family="repeated"``)."""
    out = []
    for snorm in snorms:
        for width in widths:
            g = torch.Generator().manual_seed(seed)
            W = torch.randn(width, width, generator=g)
            out.append(GridMap("random", width, snorm, W * (snorm / torch.linalg.matrix_norm(W, 2)),
                               0.5 * torch.randn(BATCH, width, generator=g)))
        base = next(m for m in out if m.family == "random" and m.snorm == snorm and m.width == min(widths))
        for width in widths:
            copies = width // base.width
            out.append(GridMap("repeated", width, snorm, torch.block_diag(*[base.W] * copies),
                               0.5 * torch.randn(BATCH, width, generator=torch.Generator().manual_seed(seed + 1))))
    return out


def _solvers(tol: float) -> dict[str, pydeq.AbstractRootFinder]:
    return {
        "default": pydeq.SteadyState(rtol=tol, atol=0.0),
        "tsit5": pydeq.SteadyState(pydeq.Tsit5(rtol=tol, atol=tol), rtol=tol, atol=0.0),
        "vcab3": pydeq.SteadyState(pydeq.VCAB3(rtol=tol, atol=tol), rtol=tol, atol=0.0),
        "anderson": pydeq.Anderson(rtol=tol, atol=0.0),
        "fixed-point": pydeq.FixedPointIteration(rtol=tol, atol=0.0),
    }


def _converged(m: GridMap, z: torch.Tensor, tol: float) -> float:
    fz = m.f(z, m.x)
    rel = torch.linalg.vector_norm(fz - z, dim=1) / torch.linalg.vector_norm(fz, dim=1)
    return float((rel <= tol * (1 + 1e-6)).float().mean())


@torch.no_grad()
def measure_map(m: GridMap, tol: float) -> dict[str, tuple[int, float]]:
    """``{method: (forward f calls, fraction converged by the independent check)}`` on one map."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pydeq.ConvergenceWarning)
        for name, solver in _solvers(tol).items():
            sol = pydeq.fixed_point(m.f, m.x, torch.zeros_like(m.x), solver=solver, on_failure="return")
            out[name] = (sol.nfe, _converged(m, sol.z, tol))
        node = pydeq.odeint(lambda t, u: m.f(u, m.x) - u, torch.zeros_like(m.x), (0.0, 1.0),
                            solver=pydeq.Tsit5(rtol=tol, atol=tol), on_failure="return")
        out["node-tsit5"] = (node.nfe, _converged(m, node.z, tol))
    return out


def measure_grid(maps: list[GridMap], tols: Iterable[float] = TOLS,
                 bar: Callable[[Iterable], Iterable] = iter) -> list[dict]:
    """One record per (map, tolerance): the map's description and :func:`measure_map`'s numbers."""
    records = []
    for tol in tols:
        for m in bar(maps):
            records.append({"family": m.family, "width": m.width, "snorm": m.snorm, "radius": m.radius, "tol": tol,
                            **{k: {"nfe": v[0], "converged": v[1]} for k, v in measure_map(m, tol).items()}})
    return records


def _worst(records: list[dict], value: Callable[[dict], float]) -> tuple[float, dict]:
    worst = max(records, key=value)
    return value(worst), worst


def _where(r: dict) -> str:
    return f"{r['family']} width {r['width']}, ||W|| {r['snorm']}, tol {r['tol']:g}"


def _convergence_row(records: list[dict], method: str) -> Row:
    hard = [r for r in records if r["anderson"]["converged"] >= 0.99]
    frac = min((r[method]["converged"] for r in hard), default=1.0)
    bad = [_where(r) for r in hard if r[method]["converged"] < 0.99]
    return Row(method=method, quantity="fraction of samples converged (independent check), worst map where "
               "Anderson converges", ratio=frac, target=0.99, paper_figure="≥ 99% (issue target)",
               measured_figure=f"{100 * frac:.1f}%", held=frac >= 0.99,
               why="every such map" if not bad else "below 99% on " + "; ".join(bad))


def _width_row(records: list[dict], method: str, family: str) -> Row:
    spreads = []
    for snorm in {r["snorm"] for r in records}:
        for tol in {r["tol"] for r in records}:
            group = [r for r in records if r["family"] == family and r["snorm"] == snorm and r["tol"] == tol]
            if group:
                nfe = [r[method]["nfe"] for r in group]
                radii = [r["radius"] for r in group]
                spreads.append((max(nfe) / min(nfe), snorm, tol, min(radii), max(radii)))
    spread, snorm, tol, r_lo, r_hi = max(spreads)
    why = (f"worst at ||W|| {snorm}, tol {tol:g}; spectral radius of W across the widths {r_lo:.2f}-{r_hi:.2f}"
           + (": the map changes with the width, not the stopping test" if r_hi - r_lo > 0.05 and spread > 1.5
              else ""))
    return Row(method=method, quantity=f"forward NFE, widest / narrowest of 16-1024 ({family} maps)", ratio=spread,
               target=1.5, paper_figure="≤ 1.5× (issue target)", measured_figure=f"{spread:.2f}×",
               held=spread <= 1.5, why=why)


def _cost_row(records: list[dict], method: str, limit: float, paper_figure: str) -> Row:
    ratio, worst = _worst(records, lambda r: r[method]["nfe"] / r["node-tsit5"]["nfe"])
    tols = sorted({r["tol"] for r in records}, reverse=True)
    why = f"worst: {_where(worst)} ({worst[method]['nfe']} vs {worst['node-tsit5']['nfe']} calls)"
    if method == "tsit5" and ratio > limit:
        why += ("; an explicit method is stability-limited: at the ||W|| = 1.5 maps the flow's modes decay at rates "
                "~0.25-1.75, so Tsit5's steps stay ≲ 2 time units while the slowest mode needs t ≈ ln(1/tol) / 0.25")
    return Row(method=method, peer="node-tsit5", quantity="forward NFE / neural ODE over [0, 1] (Tsit5), worst map "
               f"at tol {', '.join(f'{t:g}' for t in tols)}",
               ratio=ratio, target=limit, paper_figure=paper_figure, measured_figure=f"{ratio:.2f}×",
               held=ratio <= limit, why=why)


def grid_rows(records: list[dict]) -> list[Row]:
    """The claim's rows from :func:`measure_grid`'s records (random maps unless the row says otherwise)."""
    random = [r for r in records if r["family"] == "random"]
    rows = [_convergence_row(records, m) for m in ("default", "tsit5", "vcab3")]
    rows += [_width_row(records, m, fam) for fam in ("random", "repeated") for m in ("default", "tsit5", "vcab3")]
    for tol in sorted({r["tol"] for r in random}, reverse=True):
        at = [r for r in random if r["tol"] == tol]
        rows += [_cost_row(at, "tsit5", 2.0, "≤ 2× (issue target for the paper's MNIST method)"),
                 _cost_row(at, "default", 1.0, "≤ 1× (issue target; Table 2 has the continuous DEQ's prediction "
                                               "at 0.66× the neural ODE's)")]
    return rows


def markdown_table(records: list[dict]) -> str:
    """The grid as a markdown table: forward NFE / percent converged per method (a neural ODE over [0, 1] is not
    meant to reach the equilibrium: its percentage says how far it is)."""
    head = "| family | width | ‖W‖₂ | ρ(W) | tol | " + " | ".join(METHODS) + " |"
    lines = [head, "|" + "---|" * (5 + len(METHODS))]
    for r in records:
        cells = [f"{r[m]['nfe']} / {100 * r[m]['converged']:.0f}%" for m in METHODS]
        lines.append(f"| {r['family']} | {r['width']} | {r['snorm']} | {r['radius']:.2f} | {r['tol']:g} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


@claim("steady-state-grid", title="Continuous DEQs converge at the paper's tolerances at any state size, for fewer "
       "f calls than a neural ODE", paper=PAPER)
def steady_state_grid(ctx: BenchContext) -> ClaimResult:
    torch.manual_seed(ctx.seed)
    records = measure_grid(grid_maps(ctx.seed), bar=lambda it: ctx.bar(it, desc="steady-state grid", total=18))
    return ClaimResult(
        rows=grid_rows(records), notes="Forward NFE / % of samples converged:\n\n" + markdown_table(records),
        setup={"maps": "tanh(W z + x), x = 0.5 N(0, 1)", "batch": BATCH, "widths": list(WIDTHS),
               "spectral_norms": list(NORMS), "tolerances": list(TOLS), "termination": "relative (atol = 0)"},
        summary="SteadyState's default (ResidualEuler) against Tsit5, VCAB3, the neural ODE and Anderson, NFE only.",
    )


if __name__ == "__main__":  # python -m pydeq.bench.claims.steady_state: the table for the README
    torch.set_num_threads(1)
    recs = measure_grid(grid_maps())
    print(markdown_table(recs))
    for row in grid_rows(recs):
        print(f"- {row.method}: {row.quantity}: {row.measured_figure} (target {row.paper_figure}) "
              f"{'held' if row.held else 'NOT held'}; {row.why}")
