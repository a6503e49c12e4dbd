"""The functional entry point: integrate ``du/dt = fn(t, u)`` to an end point, at output times, or to an event."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from .._checks import check_finite, check_int, check_policy, check_tensor
from .._norms import check_norm_output
from .._solution import Solution, report_failures
from .adjoint import AbstractODEAdjoint, DirectAdjoint
from .events import Event, attach_event_gradient
from .interpolating import InterpolatingAdjoint, check_dense_output
from .problem import ODEProblem
from .solvers import METHODS, AbstractODESolver, Tsit5
from .times import TimeGrid, time_grid, with_output_times, with_start_time
from .vcab3 import VCAB3

__all__ = ["odeint", "find_params", "check_ode_solver", "check_odeint_args"]


def odeint(
    fn: Callable[[Tensor, Tensor], Tensor],
    u0: Tensor,
    t_span: Sequence[float] | Tensor,
    *,
    solver: AbstractODESolver | None = None,
    adjoint: AbstractODEAdjoint | None = None,
    event: Event | None = None,
    max_steps: int = 10_000,
    params: Sequence[Tensor] | None = None,
    on_failure: str = "warn",
) -> Solution:
    """Solve ``du/dt = fn(t, u)``, ``u(t0) = u0``, per sample: at ``t1``, at output times, or to an event.

    Every sample has its own time, step size and accept/reject decision, so its answer does not depend
    on the batch it is in. Output times are reached by the method's dense output (Tsit5/Dopri5: order 4,
    from the stages of the accepted step, no extra evaluation); fixed-step methods land on each output time.

    Args:
        fn: vector field ``fn(t, u)``; ``t: (batch,)`` holds each sample's time (broadcast it yourself,
            e.g. ``t[:, None]``), ``u: (batch, *state)``; returns ``(batch, *state)`` in ``u``'s dtype.
        u0: ``(batch, *state)`` initial state, floating point and finite.
        t_span: ``(t0, t1)`` with ``t1 > t0`` for the end point only; or a tensor of output times in ``u0``'s
            dtype and device, ``(n_times,)`` for every sample or ``(batch, n_times)`` per sample, each row
            strictly increasing or strictly decreasing (integrating backward), its first entry the start.
            With ``event``: ``(t0, t_max)`` (``t_max`` may be ``math.inf``), or a 2-entry tensor.
        solver: an ODE method (``Tsit5``, ``Dopri5``, ``BS3``, ``HeunEuler``, ``Fehlberg2`` adaptive; ``Euler``,
            ``Midpoint``, ``Heun2``, ``Heun3``, ``RK4``, ``RK38`` fixed-step; the multistep ``VCAB3``, which lands
            on every output time, with ``DirectAdjoint`` or ``InterpolatingAdjoint`` and no event); default
            ``Tsit5()``.
        adjoint: ``DirectAdjoint()`` (default: back-propagate through the solver), ``CheckpointAdjoint()``
            (the same gradient in O(√steps) memory), ``BacksolveAdjoint()`` (continuous adjoint, ``u`` solved
            backward) or ``InterpolatingAdjoint()`` (continuous adjoint on the forward's dense output).
        event: an :class:`~pydeq.Event`; each sample stops where its event function crosses zero.
        max_steps: attempted steps per sample before status ``MAX_STEPS``.
        params: tensors the checkpoint and continuous adjoints differentiate besides ``u0``; default
            :func:`find_params`. ``DirectAdjoint`` ignores it (autograd finds everything).
        on_failure: ``"warn"`` (default), ``"raise"`` or ``"return"`` when a sample does not reach the end.

    Returns:
        A :class:`~pydeq.Solution`: ``z = u(t1)`` ``(batch, *state)`` for an end point (or the state at the event),
        else ``(batch, n_times, *state)`` with ``z[:, 0] = u0``; ``residual`` the time left per sample (0 on
        success); ``steps`` attempted steps per sample; ``nfe`` batched calls of ``fn``; ``extras["t"]`` the time
        reached, ``extras["accepted"]``/``["rejected"]`` step counts; with an event ``extras["t_event"]``,
        ``["event"]`` and ``["event_calls"]``. Gradients reach ``u0``, the parameters and, for output times that
        require grad, the times (``dL/dt_j = <dL/dy_j, F(t_j, y_j)>`` and ``dL/dt_0 = -<dL/du0, F(t_0, u0)>``).
    """
    solver = Tsit5() if solver is None else solver
    adjoint = DirectAdjoint() if adjoint is None else adjoint
    grid = check_odeint_args(fn, u0, t_span, solver, adjoint, max_steps, on_failure, event)
    found = find_params(fn) if params is None else _as_params(params)
    problem = ODEProblem(fn=fn, solver=solver, grid=grid, max_steps=max_steps, params=found, event=event)
    solution = adjoint.solve(problem, with_start_time(fn, grid, u0))
    if event is not None:
        attach_event_gradient(problem, solution)
    elif not grid.endpoint_only:
        solution.z, calls = with_output_times(fn, grid, solution.z, u0)
        solution.nfe += calls
    report_failures(solution, on_failure, what="ODE solve")
    return solution


def check_ode_solver(solver: Any, where: str = "solver", methods: str = METHODS) -> None:
    """Reject anything that is not an ODE method, pointing root finders to the right place."""
    if isinstance(solver, AbstractODESolver):
        return
    from .._root import AbstractRootFinder

    if isinstance(solver, AbstractRootFinder):
        raise TypeError(
            f"{where} must be an ODE method ({methods}); got {type(solver).__name__}, "
            "a root finder. Root finders solve z = f(z, x): use pydeq.DEQ / pydeq.fixed_point for that, or "
            "SteadyState(Tsit5()) there for a continuous DEQ."
        )
    raise TypeError(f"{where} must be an ODE method ({methods}); got {type(solver).__name__}.")


def check_odeint_args(fn: Any, u0: Any, t_span: Any, solver: Any, adjoint: Any, max_steps: Any, on_failure: str,
                      event: Any = None) -> TimeGrid:
    """Validate :func:`odeint`'s arguments; returns the per-sample time grid."""
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(t, u); got {type(fn).__name__}.")
    check_ode_solver(solver)
    if isinstance(adjoint, InterpolatingAdjoint):  # ahead of VCAB3's check: say what this adjoint needs
        check_dense_output(solver)
    if isinstance(solver, VCAB3):
        _check_multistep(adjoint, event)
    elif getattr(solver, "tableau", None) is None:
        raise TypeError(f"{type(solver).__name__} is not a Runge–Kutta method with a tableau, so odeint cannot "
                        f"integrate with it; use one of {METHODS}.")
    if not isinstance(adjoint, AbstractODEAdjoint):
        raise TypeError(
            "adjoint must be DirectAdjoint(), CheckpointAdjoint(), BacksolveAdjoint() or InterpolatingAdjoint() for "
            f"an ODE solve; got {type(adjoint).__name__}. The fixed-point adjoints (ImplicitAdjoint, ...) "
            "differentiate an equilibrium, not a finite horizon."
        )
    if event is not None and not isinstance(event, Event):
        raise TypeError(f"event must be a pydeq.Event(fn=...) or None; got {type(event).__name__}.")
    check_tensor("u0", u0)
    if u0.dim() < 1 or u0.shape[0] == 0:
        raise ValueError(f"u0 must be batched, shape (batch, *state) with batch >= 1; got {tuple(u0.shape)}. "
                         "Use u0[None] for a single sample.")
    check_finite("u0", u0)
    check_int("max_steps", max_steps)
    check_policy(on_failure)
    grid = time_grid(t_span, u0, open_end=event is not None)
    if event is not None and grid.n != 2:
        raise ValueError(f"an event solve runs from t0 until the event (or t_max): give t_span = (t0, t_max), "
                         f"or a 2-entry tensor; got {grid.n} times.")
    if event is not None:  # the answer is the state at the event, not a trajectory
        grid = dataclasses.replace(grid, endpoint_only=True)
    if solver.adaptive:
        check_norm_output(type(solver).__name__, solver.norm(u0), u0.shape[0])
    return grid


def _check_multistep(adjoint: Any, event: Any) -> None:
    """VCAB3 runs its own loop (:mod:`~pydeq._ode.adams`): back-propagation through it, or the interpolating
    adjoint on its dense output; no events."""
    if type(adjoint) not in (DirectAdjoint, InterpolatingAdjoint):
        raise TypeError(f"VCAB3 (a multistep method) is differentiated by DirectAdjoint() or InterpolatingAdjoint() "
                        f"only; got {type(adjoint).__name__}. Use one of those, or a Runge–Kutta method (Tsit5, ...) "
                        "for CheckpointAdjoint/BacksolveAdjoint.")
    if event is not None:
        raise TypeError("VCAB3 (a multistep method) has no event location; use a Runge–Kutta method (Tsit5, ...) "
                        "for an event solve.")


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
