"""Work-precision on the DETEST non-stiff classes: pydeq's methods, torchdiffeq 0.2.5 and scipy's ``solve_ivp``.

    python -m pydeq.bench.detest --out detest-results            # every problem, ~10 minutes on 2 cores
    python -m pydeq.bench.detest --quick --only A3 B1            # a smoke run

Every method solves every problem (``pydeq.bench.detest.problems``) at tolerances ``rtol = atol = 1e-3 … 1e-10``
(the third-order methods down to 1e-7), side by side in one run, float64, one thread. The error is the largest
``|y - y_ref| / max(1, |y_ref|)`` over 10 output times and every component, ``y_ref`` scipy's DOP853 at 1e-13.
NFE counts every call of the field (pydeq ``Solution.nfe``; torchdiffeq through a counting wrapper; scipy
``nfev``); wall time is the fastest of ``--repeats`` solves (default 2; ``2 * repeats + 1`` for the batched runs).
*At matched error* means interpolated, in log–log, on each method's own work-precision curve at the errors 1e-4,
1e-6 and 1e-8 (batched: 1e-5, which every method reaches within the tolerances).

Batched: one problem per class (A3, B1, C3, D3, E2) with ``--batch`` (256) initial states spread ±5% around the
DETEST one. pydeq gives every sample its own clock; torchdiffeq and scipy solve the batch as one system (their
error norm then averages over samples, so the worst sample's error is what is matched).

Writes ``results.json``, ``detest.md`` (the tables) and ``detest_<class>.png`` (error vs NFE, log–log) into ``--out``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import pydeq
from pydeq.bench.timing import Timing, side_by_side, stopwatch

from .problems import CLASSES, PROBLEMS, Problem

__all__ = ["METHODS", "PEER", "TARGETS", "BATCH_TARGET", "BATCH_METHODS", "CLASSES", "at_error", "run"]

D = torch.float64
TOLS = [10.0**-k for k in range(3, 11)]
LOW_ORDER_TOLS = [10.0**-k for k in range(3, 8)]
TARGETS = (1e-4, 1e-6, 1e-8)
BATCH_TARGET = 1e-5
BATCHED = ("A3", "B1", "C3", "D3", "E2")
Runner = Callable[[Problem, Any, np.ndarray, float], tuple[np.ndarray, int]]


def _pydeq(cls: type) -> Runner:
    def run(p: Problem, y0: torch.Tensor, t: np.ndarray, tol: float) -> tuple[np.ndarray, int]:
        sol = pydeq.odeint(p.field, y0, torch.as_tensor(t), solver=cls(rtol=tol, atol=tol), max_steps=10**6,
                           on_failure="raise")
        return sol.z.numpy(), sol.nfe

    return run


def _torchdiffeq(method: str) -> Runner:
    def run(p: Problem, y0: torch.Tensor, t: np.ndarray, tol: float) -> tuple[np.ndarray, int]:
        import torchdiffeq

        calls = [0]

        def field(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            return p.field(s, y)

        ys = torchdiffeq.odeint(field, y0, torch.as_tensor(t), method=method, rtol=tol, atol=tol)
        return ys.transpose(0, 1).numpy(), calls[0]

    return run


def _scipy(method: str) -> Runner:
    def run(p: Problem, y0: torch.Tensor, t: np.ndarray, tol: float) -> tuple[np.ndarray, int]:
        from scipy.integrate import solve_ivp

        shape = tuple(y0.shape)

        def field(s: float, y: np.ndarray) -> np.ndarray:
            return p.field(torch.tensor(s, dtype=D), torch.from_numpy(y).reshape(shape)).reshape(-1).numpy()

        sol = solve_ivp(field, (t[0], t[-1]), y0.reshape(-1).numpy(), method=method, t_eval=t, rtol=tol, atol=tol)
        if not sol.success:
            raise RuntimeError(f"scipy {method} failed on {p.name} at tol {tol}: {sol.message}")
        return sol.y.T.reshape(len(t), *shape).transpose(1, 0, 2), sol.nfev

    return run


METHODS: dict[str, tuple[Runner, list[float]]] = {
    "pydeq Tsit5": (_pydeq(pydeq.Tsit5), TOLS),
    "pydeq Dopri5": (_pydeq(pydeq.Dopri5), TOLS),
    "pydeq BS3": (_pydeq(pydeq.BS3), LOW_ORDER_TOLS),
    "torchdiffeq dopri5": (_torchdiffeq("dopri5"), TOLS),
    "torchdiffeq bosh3": (_torchdiffeq("bosh3"), LOW_ORDER_TOLS),
    "scipy RK45": (_scipy("RK45"), TOLS),
    "scipy DOP853": (_scipy("DOP853"), TOLS),
    "scipy RK23": (_scipy("RK23"), LOW_ORDER_TOLS),
}
PEER = "torchdiffeq dopri5"
BATCH_METHODS = ("pydeq Tsit5", "pydeq Dopri5", "torchdiffeq dopri5", "scipy RK45")


def _initial(p: Problem, batch: int, seed: int) -> torch.Tensor:
    y0 = torch.tensor(p.y0, dtype=D)
    if batch == 1:
        return y0[None]
    g = torch.Generator().manual_seed(seed)
    spread = 0.05 * (2 * torch.rand(batch, len(p.y0), generator=g, dtype=D) - 1)
    return y0 * (1 + spread) + 0.05 * spread * (y0 == 0)


def _reference(p: Problem, y0: torch.Tensor, t: np.ndarray) -> np.ndarray:
    return _scipy("DOP853")(p, y0, t, 1e-13)[0]


def _error(ys: np.ndarray, ref: np.ndarray) -> float:
    return float((np.abs(ys - ref) / np.maximum(1.0, np.abs(ref)))[:, 1:].max())


def _timed_solve(name: str, p: Problem, y0: torch.Tensor, t: np.ndarray, tol: float) -> tuple[tuple, float]:
    """Method ``name``'s ``(answer, nfe)`` on ``p`` at ``tol``, and the seconds it took."""
    with stopwatch() as sw:
        answer = METHODS[name][0](p, y0, t, tol)
    return answer, sw.seconds


def _measure(p: Problem, names: tuple[str, ...], y0: torch.Tensor, t: np.ndarray, ref: np.ndarray, repeats: int,
             quick: bool = False, tols: list[float] | None = None) -> dict[str, list[dict[str, float]]]:
    """Every method on ``p`` at its tolerances, timed side by side: at each tolerance the methods take turns
    (A B C A B C …), so drift in the machine's speed hits them alike."""
    by_tol: dict[float, list[str]] = {}
    for name in names:
        for tol in (tols or METHODS[name][1])[:: 3 if quick else 1]:
            by_tol.setdefault(tol, []).append(name)
    best: dict[tuple[str, float], float] = {}
    answers: dict[tuple[str, float], tuple[np.ndarray, int]] = {}
    for tol, group in by_tol.items():
        runs = side_by_side({name: functools.partial(_timed_solve, name, p, y0, t, tol) for name in group},
                            repeats=repeats, warmup=0)
        for name, rs in runs.items():
            answers[name, tol] = rs[-1][0]
            best[name, tol] = Timing(tuple(seconds for _, seconds in rs)).min
    return {name: [{"tol": tol, "error": _error(answers[name, tol][0], ref), "nfe": answers[name, tol][1],
                    "seconds": best[name, tol]} for tol in by_tol if (name, tol) in best] for name in names}


def at_error(points: list[dict[str, float]], key: str, target: float) -> float | None:
    """``key`` (nfe or seconds) needed for ``target`` error: log–log interpolation on the work-precision curve,
    made monotone (a looser tolerance never costs more); ``None`` outside the measured range."""
    pts = sorted(points, key=lambda q: -q["error"])
    errs = np.log([max(q["error"], 1e-300) for q in pts])
    cost = np.log(np.maximum.accumulate([q[key] for q in pts]))
    if not errs[-1] <= math.log(target) <= errs[0]:
        return None
    return float(np.exp(np.interp(-math.log(target), -errs, cost)))


def run(*, only: list[str] | None = None, quick: bool = False, batch: int = 256, repeats: int = 2,
        seed: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every (problem, method, tolerance); returns the JSON record."""
    torch.set_num_threads(1)
    problems = [p for p in PROBLEMS if only is None or p.name in only]
    t_of = {p.name: np.linspace(0.0, p.t1, 11) for p in problems}
    record: dict[str, Any] = {"single": {}, "batched": {}, "batch": batch, "repeats": repeats, "quick": quick}
    for p in problems:
        y0, t = _initial(p, 1, seed), t_of[p.name]
        record["single"][p.name] = _measure(p, tuple(METHODS), y0, t, _reference(p, y0, t), 1 if quick else repeats,
                                            quick)
        log(f"{p.name}: done")
    for p in (q for q in problems if q.name in BATCHED and not quick):
        y0, t = _initial(p, batch, seed), t_of[p.name]
        record["batched"][p.name] = _measure(p, BATCH_METHODS, y0, t, _reference(p, y0, t), 2 * repeats + 1,
                                             tols=TOLS)
        log(f"{p.name} batch {batch}: done")
    return record
