"""Engine benchmark: pydeq against TorchDEQ 0.1.0 on the same tanh-MLP DEQ, side by side in one process.

``pydeq bench engine`` (or ``python -m pydeq.bench engine``) runs it. The model is the issue's: batch 128,
input 784, state 128 and 256, recurrent weight scaled to spectral norm 0.9, float32, CPU;
``f(z, x) = tanh(W z + U x + b)`` with the injection ``U x + b`` computed once per forward, and the *same*
closure is handed to both engines. Forward: Anderson (history 6, regularisation 1e-4 — TorchDEQ's defaults)
to a per-sample relative residual of 1e-4 (TorchDEQ ``stop_mode='rel'``); backward: implicit (IFT) on both,
pydeq with GMRES and TorchDEQ with its default fixed-point backward solver and with Anderson, both at
relative tolerance 1e-5 (40 steps). pydeq stops each sample as soon as it meets the tolerance while
TorchDEQ iterates until the worst sample does, so at the same tolerance pydeq's samples sit closer to the
threshold; the row ``pydeq-matched`` (tolerance / 4) is the one held to "equal or better residual and
gradient error", and both are reported. ``pydeq-matched-neumann`` solves the same adjoint system by
fixed-point (Neumann) iteration, the method TorchDEQ's default backward uses; GMRES pays batched
Gram-Schmidt work per step that only wins when the adjoint system is ill-conditioned. Gradient error is
against a float64 closed form
``dL/dW = sum_b (w_b * s_b) z_b^T`` with ``s = 1 - z*^2`` and ``(I - W^T diag(s)) w = dL/dz*``.
The overhead ratio is ``solve wall time / (forward NFE x time of one f call)``: the solve is the engine's call
(``pydeq.fixed_point`` / TorchDEQ's ``deq(...)``), the injection ``U x + b`` being the model's work, and NFE counts
every f call of the forward pass, the engines' initial and backward-recording calls included, by wrapping f.
Each overhead row also gives the floor any Anderson implementation with the same history has on this machine:
f plus one read of the two history buffers (``_overhead_floor``), measured in the same run.
"""

from __future__ import annotations

from typing import Any

import torch

from pydeq.bench.claim import BenchContext, ClaimResult, Row, SkipClaim, claim
from pydeq.bench.timing import Timing, measure, side_by_side, stopwatch

__all__ = ["engine_vs_torchdeq"]

FWD_RTOL, BWD_RTOL, MAX_STEPS, BWD_STEPS, HISTORY = 1e-4, 1e-5, 60, 40, 6
BATCH, INPUT, SIZES, OVERHEAD_SIZES = 128, 784, (128, 256), (512, 1024)  # the problem sizes


class _TanhMLP(torch.nn.Module):
    def __init__(self, d_in: int, d: int, gen: torch.Generator):
        super().__init__()
        W = torch.randn(d, d, generator=gen)
        self.W = torch.nn.Parameter(0.9 * W / torch.linalg.matrix_norm(W, 2))
        self.U = torch.nn.Parameter(torch.randn(d, d_in, generator=gen) / d_in**0.5)
        self.b = torch.nn.Parameter(torch.zeros(d))

    def injection(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.U.T + self.b

    def cell(self, z: torch.Tensor, inj: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.W.T + inj)


def _reference_grad(model: _TanhMLP, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Exact dL/dW for L = sum(c * z*), in float64 (z* by Newton with a dense per-sample solve)."""
    W, inj = model.W.detach().double(), model.injection(x).detach().double()
    c = c.double()
    z = torch.zeros_like(inj)
    eye = torch.eye(W.shape[0], dtype=torch.float64)
    for _ in range(50):
        fz = torch.tanh(z @ W.T + inj)
        g = fz - z
        if float(g.norm(dim=1).max()) < 1e-13:
            break
        J = (1 - fz**2)[:, :, None] * W  # df/dz per sample
        z = z - torch.linalg.solve(J - eye, g[..., None])[..., 0]
    s = 1 - torch.tanh(z @ W.T + inj) ** 2
    A = eye - W.T[None] * s[:, None, :]  # (I - J^T) with J^T = W^T diag(s)
    w = torch.linalg.solve(A, c[..., None])[..., 0]
    return (w * s).T @ z


def _pydeq_step(model: _TanhMLP, x: torch.Tensor, c: torch.Tensor, rtol: float = FWD_RTOL,
                linear: str = "gmres", backward: bool = True) -> dict[str, Any]:
    import pydeq

    solver = pydeq.Anderson(history=HISTORY, regularisation=1e-4, rtol=rtol, atol=0.0, max_steps=MAX_STEPS)
    lin = (pydeq.GMRES(rtol=BWD_RTOL, atol=0.0, max_steps=BWD_STEPS) if linear == "gmres"
           else pydeq.Neumann(rtol=BWD_RTOL, atol=0.0, max_steps=BWD_STEPS))
    adjoint = pydeq.ImplicitAdjoint(linear_solver=lin)
    model.zero_grad(set_to_none=True)
    cell = _Counted(model.cell)
    with stopwatch(x.device) as fwd:
        inj = model.injection(x)
        with stopwatch(x.device) as solve:
            sol = pydeq.fixed_point(cell, inj, solver=solver, adjoint=adjoint, on_failure="return")
    times = {"fwd": fwd.seconds, "solve": solve.seconds, "nfe_f": cell.calls}
    if not backward:
        return times
    with stopwatch(x.device) as bwd:
        (sol.z * c).sum().backward()
    rel = (sol.residual / torch.linalg.vector_norm(sol.z.detach(), dim=1)).max()
    return {**times, "bwd": bwd.seconds, "nfe_b": sol.backward.nfe, "residual": float(rel),
            "grad": model.W.grad.detach().clone()}


def _torchdeq_step(model: _TanhMLP, x: torch.Tensor, c: torch.Tensor, b_solver: str,
                   backward: bool = True) -> dict[str, Any]:
    from torchdeq import get_deq

    deq = get_deq(f_solver="anderson", f_max_iter=MAX_STEPS, f_tol=FWD_RTOL, f_stop_mode="rel",
                  b_solver=b_solver, b_max_iter=BWD_STEPS, b_tol=BWD_RTOL, b_stop_mode="rel", ift=True, hook_ift=True)
    model.zero_grad(set_to_none=True)
    cell = _Counted(model.cell)
    with stopwatch(x.device) as fwd:
        inj = model.injection(x)
        with stopwatch(x.device) as solve:
            z0 = torch.zeros_like(inj)
            z_out, info = deq(lambda z: cell(z, inj), z0)
            z = z_out[-1]
    times = {"fwd": fwd.seconds, "solve": solve.seconds, "nfe_f": cell.calls}
    if not backward:
        return times
    with stopwatch(x.device) as bwd:
        (z * c).sum().backward()
    return {**times, "bwd": bwd.seconds, "nfe_b": float("nan"), "residual": float(info["rel_lowest"].max()),
            "grad": model.W.grad.detach().clone()}


class _Counted:
    """The cell both engines call, counting its calls: NFE is every f evaluation of the forward pass (the
    solver's, its initialisation's and the one recorded for the backward pass), counted the same way for both."""

    def __init__(self, cell: Any):
        self.cell, self.calls = cell, 0

    def __call__(self, z: torch.Tensor, inj: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.cell(z, inj)


def _f_call_time(model: _TanhMLP, x: torch.Tensor, repeats: int = 200) -> float:
    """Seconds per call of f, the mean over ``repeats`` back-to-back calls (each fed the last one's output)."""
    with torch.no_grad():
        inj = model.injection(x)
        z = [torch.zeros_like(inj)]

        def call() -> None:
            z[0] = model.cell(z[0], inj)

        return measure(call, repeats=1, number=repeats, device=x.device).min


def _overhead_floor(d: int, t_f: float, device: torch.device, repeats: int = 200) -> float:
    """Lowest overhead ratio any Anderson(m = HISTORY) implementation can reach here: ``(t_f + t_read) / t_f``.

    Every iteration must read the m stored residuals (the new Gram row) and the m stored f values (the mix);
    writing the new pair back costs about what the two oldest pairs' reads save with difference-based
    variants. ``t_read`` is one read of both ``(batch, m, n)`` buffers by a single reduction each, timed
    while they are cache-resident as in the solve: no dispatch, small solve or convergence test counted.
    """
    G = torch.randn(BATCH, HISTORY, d, device=device)
    F = torch.randn_like(G)
    t_read = measure(lambda: (G.sum(), F.sum()), repeats=1, number=repeats, device=device).min
    return 1 + t_read / t_f


def _methods(model: _TanhMLP, x: torch.Tensor, c: torch.Tensor) -> dict[str, Any]:
    return {"pydeq": lambda: _pydeq_step(model, x, c),
            "pydeq-matched": lambda: _pydeq_step(model, x, c, rtol=FWD_RTOL / 4),
            "pydeq-matched-neumann": lambda: _pydeq_step(model, x, c, rtol=FWD_RTOL / 4, linear="neumann"),
            "torchdeq": lambda: _torchdeq_step(model, x, c, "fixed_point_iter"),
            "torchdeq-anderson-bwd": lambda: _torchdeq_step(model, x, c, "anderson")}


def _timing(runs: list[dict[str, Any]], part: str) -> Timing:
    """The samples of one timed part (``fwd``, ``bwd``, ``solve`` or ``step``, forward plus backward) of ``runs``."""
    return Timing(tuple(r["fwd"] + r["bwd"] if part == "step" else r[part] for r in runs))


def _summarise(runs: list[dict[str, Any]], ref: torch.Tensor, t_f: float) -> dict[str, float]:
    fwd, step = _timing(runs, "fwd"), _timing(runs, "step")
    last = runs[-1]
    return {"forward_ms_median": 1e3 * fwd.median, "forward_ms_min": 1e3 * fwd.min,
            "backward_ms_median": 1e3 * _timing(runs, "bwd").median,
            "train_step_ms_median": 1e3 * step.median, "train_step_ms_min": 1e3 * step.min,
            "nfe_forward": float(last["nfe_f"]),
            "nfe_backward": None if last["nfe_b"] != last["nfe_b"] else float(last["nfe_b"]),  # TorchDEQ: not reported
            "final_rel_residual": last["residual"],
            "grad_rel_error": float((last["grad"].double() - ref).norm() / ref.norm()),
            "overhead_ratio": _timing(runs, "solve").median / (last["nfe_f"] * t_f)}


def _overhead_scaling(ctx: BenchContext, repeats: int, setup: dict[str, Any]) -> list[Row]:
    """Overhead ratio of the forward pass as f grows (state 512, 1024): the per-iteration bookkeeping is a
    fixed cost, so the ratio falls toward 1 as one f call gets more expensive. Forward only, no gradient check."""
    rows = []
    for d in ctx.bar(OVERHEAD_SIZES, desc="engine: overhead vs f size"):
        gen = torch.Generator().manual_seed(ctx.seed + d)
        model = _TanhMLP(INPUT, d, gen).to(ctx.device)
        x = torch.randn(BATCH, INPUT, generator=gen).to(ctx.device)
        c = torch.randn(BATCH, d, generator=gen).to(ctx.device)
        t_f = _f_call_time(model, x, repeats=50)
        floor = _overhead_floor(d, t_f, x.device, repeats=50)
        # grad mode on for both (TorchDEQ 0.1.0 registers its backward hook even under no_grad, and fails)
        methods = {"pydeq": lambda m=model, x=x, c=c: _pydeq_step(m, x, c, backward=False),
                   "torchdeq": lambda m=model, x=x, c=c: _torchdeq_step(m, x, c, "fixed_point_iter", backward=False)}
        runs = side_by_side(methods, repeats=repeats, warmup=1)
        ratio = {k: _timing(v, "solve").median / (v[-1]["nfe_f"] * t_f) for k, v in runs.items()}
        setup[f"overhead_d{d}"] = {"f_call_ms": 1e3 * t_f, "overhead_floor": floor,
                                   **{f"{k}_overhead": v for k, v in ratio.items()},
                                   **{f"{k}_nfe": float(v[-1]["nfe_f"]) for k, v in runs.items()}}
        rows.append(_overhead_row(d, ratio["pydeq"], ratio["torchdeq"], t_f, floor,
                                  f"forward only, f call {1e3 * t_f:.2f} ms; "))
    return rows


def _overhead_row(d: int, mine: float, theirs: float, t_f: float, floor: float, context: str = "") -> Row:
    """The overhead-ratio row for state ``d``: pydeq's ratio against the 1.15 target, TorchDEQ's and the floor."""
    return Row(method=f"pydeq d={d}", quantity="solver overhead ratio (wall / (NFE x f time))",
               metrics={"f_call_ms": 1e3 * t_f, "torchdeq_overhead": theirs, "overhead_floor": floor},
               ratio=mine, target=1.15, paper_figure="<= 1.15", measured_figure=f"{mine:.2f}", held=mine <= 1.15,
               why=f"{context}TorchDEQ's: {theirs:.2f}; floor for any Anderson(m={HISTORY}): {floor:.2f}")


@claim("engine", title="Native engine vs TorchDEQ 0.1.0: tanh-MLP DEQ train step, NFE, residual, gradient error",
       paper="pydeq targets: train step <= 0.7x TorchDEQ's; solver overhead ratio <= 1.15", suites=("engine",))
def engine_vs_torchdeq(ctx: BenchContext) -> ClaimResult:
    try:
        import torchdeq  # noqa: F401
    except ImportError as e:
        raise SkipClaim("TorchDEQ is not installed: pip install 'pydeq[bench]' (torchdeq==0.1.0)") from e
    rows, setup, series = [], {"batch": BATCH, "input": INPUT, "spectral_norm": 0.9, "dtype": "float32",
                               "forward_rtol": FWD_RTOL, "backward_rtol": BWD_RTOL}, {"backward_time": {}}
    repeats = max(ctx.repeats, 5)
    for d in ctx.bar(SIZES, desc="engine: state sizes"):
        gen = torch.Generator().manual_seed(ctx.seed + d)
        model = _TanhMLP(INPUT, d, gen).to(ctx.device)
        x = torch.randn(BATCH, INPUT, generator=gen).to(ctx.device)
        c = torch.randn(BATCH, d, generator=gen).to(ctx.device)
        ref = _reference_grad(model, x, c)
        t_f = _f_call_time(model, x)
        floor = _overhead_floor(d, t_f, x.device)
        # interleaved so machine drift hits all alike
        runs = side_by_side(_methods(model, x, c), repeats=repeats, warmup=2,
                            progress=lambda rounds, d=d: ctx.bar(rounds, desc=f"engine d={d}"))
        stats = {k: _summarise(v, ref, t_f) for k, v in runs.items()}
        for k, v in runs.items():
            series["backward_time"][f"{k} d={d}"] = [r["bwd"] for r in v]
        for mine_name, peer in [("pydeq", "torchdeq"), ("pydeq-matched", "torchdeq"),
                                ("pydeq-matched-neumann", "torchdeq"), ("pydeq-matched", "torchdeq-anderson-bwd")]:
            mine, theirs = stats[mine_name], stats[peer]
            ratio = mine["train_step_ms_median"] / theirs["train_step_ms_median"]
            ok = (ratio <= 0.7 and mine["final_rel_residual"] <= max(theirs["final_rel_residual"], FWD_RTOL)
                  and mine["grad_rel_error"] <= theirs["grad_rel_error"] * 1.05 + 1e-6)
            rows.append(Row(method=f"{mine_name} d={d}", peer=f"{peer} d={d}",
                            quantity="train step time ratio (pydeq/peer)",
                            metrics={**{f"pydeq_{k}": v for k, v in mine.items()},
                                     **{f"peer_{k}": v for k, v in theirs.items()}},
                            ratio=ratio, ratio_min=mine["train_step_ms_min"] / theirs["train_step_ms_min"],
                            target=0.7, paper_figure="<= 0.7x at equal or better residual and gradient error",
                            measured_figure=f"{ratio:.2f}x", held=ok,
                            why=(f"grad error {mine['grad_rel_error']:.1e} vs {theirs['grad_rel_error']:.1e}, "
                                 f"residual {mine['final_rel_residual']:.1e} vs {theirs['final_rel_residual']:.1e}")))
        rows.append(_overhead_row(d, stats["pydeq"]["overhead_ratio"], stats["torchdeq"]["overhead_ratio"], t_f, floor))
        setup[f"stats_d{d}"] = stats  # plain floats / None: JSON-safe
        setup[f"overhead_floor_d{d}"] = floor
    rows += _overhead_scaling(ctx, repeats, setup)
    return ClaimResult(rows=rows, series=series, setup=setup,
                       summary="pydeq vs TorchDEQ on the same closure, tolerances and data; see rows for NFE, "
                               "residual and gradient error.")
