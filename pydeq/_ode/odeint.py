"""The functional entry point for fixed-horizon ODEs: integrate ``du/dt = fn(t, u)`` from ``t0`` to ``t1``."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from .._checks import check_finite, check_int, check_policy, check_tensor
from .._solution import Solution
from .adjoint import AbstractODEAdjoint, DirectAdjoint, ODEProblem
from .solvers import AbstractODESolver, Tsit5

__all__ = ["odeint", "find_params", "check_ode_solver"]


def odeint(
    fn: Callable[[Tensor, Tensor], Tensor],
    u0: Tensor,
    t_span: Sequence[float],
    *,
    solver: AbstractODESolver | None = None,
    adjoint: AbstractODEAdjoint | None = None,
    max_steps: int = 10_000,
    params: Sequence[Tensor] | None = None,
    on_failure: str = "warn",
) -> Solution:
    """Solve ``du/dt = fn(t, u)``, ``u(t0) = u0``, and return ``u(t1)`` per sample.

    Every sample has its own time, step size and accept/reject decision, so its answer does not depend
    on the batch it is in.

    Args:
        fn: vector field ``fn(t, u)``; ``t: (batch,)`` holds each sample's time (broadcast it yourself,
            e.g. ``t[:, None]``), ``u: (batch, *state)``; returns ``(batch, *state)``.
        u0: ``(batch, *state)`` initial state, floating point and finite.
        t_span: ``(t0, t1)`` with ``t1 > t0``.
        solver: an ODE method (``Tsit5``, ``Dopri5``, ``BS3``, ``Euler``, ``RK4``); default ``Tsit5()``.
        adjoint: ``DirectAdjoint()`` (default: back-propagate through the solver) or ``BacksolveAdjoint()``.
        max_steps: attempted steps per sample before status ``MAX_STEPS``.
        params: tensors the backsolve adjoint differentiates besides ``u0``; default :func:`find_params`.
            ``DirectAdjoint`` ignores it (autograd finds everything).
        on_failure: ``"warn"`` (default), ``"raise"`` or ``"return"`` when a sample does not reach ``t1``.

    Returns:
        A :class:`~pydeq.Solution`: ``z = u(t1)`` ``(batch, *state)``; ``residual`` the time left per sample
        (0 on success); ``steps`` attempted steps per sample; ``nfe`` batched calls of ``fn``;
        ``extras["t"]`` the time reached, ``extras["accepted"]``/``["rejected"]`` step counts.
    """
    solver = Tsit5() if solver is None else solver
    adjoint = DirectAdjoint() if adjoint is None else adjoint
    t0, t1 = _check_args(fn, u0, t_span, solver, adjoint, max_steps, on_failure)
    found = find_params(fn) if params is None else _as_params(params)
    problem = ODEProblem(fn=fn, solver=solver, t0=t0, t1=t1, max_steps=max_steps, params=found)
    solution = adjoint.solve(problem, u0)
    from ..fixed_point import report_failures  # lazy: keeps pydeq._ode importable on its own

    report_failures(solution, on_failure, what="ODE solve")
    return solution


def check_ode_solver(solver: Any, where: str = "solver") -> None:
    """Reject anything that is not an ODE method, pointing root finders to the right place."""
    if isinstance(solver, AbstractODESolver):
        return
    from .._root._base import AbstractRootFinder

    if isinstance(solver, AbstractRootFinder):
        raise TypeError(
            f"{where} must be an ODE method (Tsit5, Dopri5, BS3, Euler, RK4); got {type(solver).__name__}, "
            "a root finder. Root finders solve z = f(z, x): use pydeq.DEQ / pydeq.fixed_point for that, or "
            "SteadyState(Tsit5()) there for a continuous DEQ."
        )
    raise TypeError(f"{where} must be an ODE method (Tsit5, Dopri5, BS3, Euler, RK4); got {type(solver).__name__}.")


def _check_args(fn: Any, u0: Any, t_span: Any, solver: Any, adjoint: Any, max_steps: Any,
                on_failure: str) -> tuple[float, float]:
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(t, u); got {type(fn).__name__}.")
    check_ode_solver(solver)
    if not isinstance(adjoint, AbstractODEAdjoint):
        raise TypeError(
            f"adjoint must be DirectAdjoint() or BacksolveAdjoint() for an ODE solve; got {type(adjoint).__name__}. "
            "The fixed-point adjoints (ImplicitAdjoint, ...) differentiate an equilibrium, not a finite horizon."
        )
    check_tensor("u0", u0)
    if u0.dim() < 1 or u0.shape[0] == 0:
        raise ValueError(f"u0 must be batched, shape (batch, *state) with batch >= 1; got {tuple(u0.shape)}. "
                         "Use u0[None] for a single sample.")
    check_finite("u0", u0)
    check_int("max_steps", max_steps)
    check_policy(on_failure)
    try:
        t0, t1 = (float(t) for t in t_span)
    except (TypeError, ValueError):
        raise ValueError(f"t_span must be a pair (t0, t1) of numbers; got {t_span!r}.") from None
    if not (math.isfinite(t0) and math.isfinite(t1)) or not t1 > t0:
        raise ValueError(f"t_span must be increasing and finite, t0 < t1; got ({t0}, {t1}). "
                         "To integrate backward, substitute s = -t and negate the vector field.")
    return t0, t1


def _as_params(params: Sequence[Tensor]) -> tuple[Tensor, ...]:
    out = []
    for q in params:
        if not isinstance(q, Tensor):
            raise TypeError(f"params must be tensors; got {type(q).__name__}.")
        if q.requires_grad and all(q is not r for r in out):
            out.append(q)
    return tuple(out)


def find_params(fn: Any, _depth: int = 0) -> tuple[Tensor, ...]:
    """Tensors requiring grad that ``fn`` can reach: an ``nn.Module``'s parameters, a bound method's module,
    a ``functools.partial``'s arguments, and modules/tensors in a closure or in the globals the function
    names. A heuristic: pass ``params=`` to :func:`odeint` when ``fn`` reaches tensors some other way.
    """
    found: list[Tensor] = []

    def visit(obj: Any) -> None:
        if isinstance(obj, nn.Module):
            found.extend(obj.parameters())
        elif isinstance(obj, Tensor):
            found.append(obj)
        elif callable(obj) and _depth < 3 and not isinstance(obj, type):
            found.extend(find_params(obj, _depth + 1))

    if isinstance(fn, nn.Module):
        visit(fn)
    elif isinstance(fn, functools.partial):
        for obj in (fn.func, *fn.args, *fn.keywords.values()):
            visit(obj)
    elif hasattr(fn, "__self__") and isinstance(fn.__self__, nn.Module):
        visit(fn.__self__)
    elif hasattr(fn, "__code__"):
        for cell in fn.__closure__ or ():
            try:
                visit(cell.cell_contents)
            except ValueError:  # empty cell
                continue
        for name in fn.__code__.co_names:
            if name in getattr(fn, "__globals__", {}):
                obj = fn.__globals__[name]
                if isinstance(obj, (nn.Module, Tensor)):
                    visit(obj)
    return _as_params(found)
