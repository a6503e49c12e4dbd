"""A drop-in for torchdiffeq 0.2.5's ``odeint``, ``odeint_adjoint`` and ``odeint_event`` on pydeq's engine.

Change one import::

    from pydeq.compat.torchdiffeq import odeint, odeint_adjoint   # was: from torchdiffeq import ...

    ys = odeint(func, y0, t, rtol=1e-7, atol=1e-9, method="dopri5")   # (len(t), *y0.shape)

The arguments and return values are torchdiffeq's: ``func(t, y)`` with a scalar tensor ``t`` and ``y`` shaped
like ``y0`` (a tensor, or a tuple of tensors), ``t`` a 1-D tensor of output times (increasing or decreasing, the
first the start), the answer ``(len(t), *y0.shape)`` (a tuple for a tuple ``y0``). As in torchdiffeq the whole
``y0`` is one system with one clock and one error norm; for a batch with a clock per sample, call
:func:`pydeq.odeint` itself.

Methods: ``dopri5`` (default), ``tsit5`` (pydeq's addition: fewer steps at equal error), ``bosh3``,
``adaptive_heun``, ``fehlberg2``, ``euler``, ``midpoint``, ``heun2``, ``heun3``, ``rk4`` (Kutta's 3/8 rule, as
torchdiffeq). Options: adaptive ``first_step``, ``min_step``, ``max_step``, ``safety``, ``ifactor``, ``dfactor``,
``max_num_steps``, ``norm``; fixed-step ``step_size``. Anything else is an error naming what is supported,
never silently ignored.

Differences from torchdiffeq:

* Step control is pydeq's PI controller (``safety``, ``ifactor``, ``dfactor`` set its safety factor and step-change
  limits) rather than an integral controller, so the step sequence differs; both hold the local error to
  ``atol + rtol * |y|`` in the RMS norm, and pydeq typically needs fewer evaluations for the same error.
* Output times between steps come from each method's own free interpolant (dopri5: Hairer's order-4 dense
  output) rather than a quartic fit; fixed-step methods land on every output time instead of interpolating
  linearly between grid points (more accurate outputs, a few more steps when ``step_size`` is given).
* ``t`` is converted to ``y0``'s dtype (the clock runs in it) and must be on ``y0``'s device (an error, not a
  warning and a copy). A ``func`` whose answer has another shape or dtype than ``y`` is an error (torchdiffeq
  broadcasts or promotes).
* Failures raise: ``max_num_steps`` reached is a :class:`~pydeq.ConvergenceError` (torchdiffeq: AssertionError), a
  non-finite state a :class:`~pydeq.NonFiniteError`; ``min_step`` reached with the error test failing stops the
  solve with an error (torchdiffeq keeps retrying until ``max_num_steps``).
* With ``event_fn``, the event time returned by ``odeint`` is already differentiable (torchdiffeq: only through
  ``odeint_event``).
* ``odeint_adjoint`` always uses a seminorm (the parameter adjoint is left out of the error norm, torchdiffeq's
  ``adjoint_options=dict(norm="seminorm")``; that option is accepted); a callable adjoint norm is not supported.
* Not supported (an error): ``dopri8``, ``explicit_adams``, ``implicit_adams``, ``fixed_adams``, ``scipy_solver``;
  options ``step_t``, ``jump_t``, ``dtype``, ``grid_constructor``, ``interp``, ``perturb``; per-entry tolerance
  tensors; ``func.callback_*`` hooks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._ode.adjoint import BacksolveAdjoint, DirectAdjoint
from .._ode.events import Event
from .._ode.integrate import check_field_output
from .._ode.odeint import odeint as _odeint
from ._torchdiffeq_options import ADAPTIVE, as_time, max_steps_of, solver_for

__all__ = ["odeint", "odeint_adjoint", "odeint_event", "SUPPORTED_METHODS"]

SUPPORTED_METHODS = (*ADAPTIVE, "euler", "midpoint", "heun2", "heun3", "rk4")
_CALLBACKS = ("callback_step", "callback_accept_step", "callback_reject_step")


def odeint(func: Callable[[Tensor, Any], Any], y0: Tensor | tuple[Tensor, ...], t: Tensor, *, rtol: float = 1e-7,
           atol: float = 1e-9, method: str | None = None, options: dict[str, Any] | None = None,
           event_fn: Callable[[Tensor, Any], Tensor] | None = None) -> Any:
    """torchdiffeq's ``odeint``: ``y`` at each time of ``t``, ``(len(t), *y0.shape)``, differentiated by
    back-propagating through the solver; with ``event_fn``, ``(event_t, stack([y0, y(event_t)]))``."""
    return _solve(func, y0, t, rtol, atol, method, options, event_fn, adjoint=None)


def odeint_adjoint(func: Callable[[Tensor, Any], Any], y0: Tensor | tuple[Tensor, ...], t: Tensor, *,
                   rtol: float = 1e-7, atol: float = 1e-9, method: str | None = None,
                   options: dict[str, Any] | None = None, event_fn: Callable[[Tensor, Any], Tensor] | None = None,
                   adjoint_rtol: float | None = None, adjoint_atol: float | None = None,
                   adjoint_method: str | None = None, adjoint_options: dict[str, Any] | None = None,
                   adjoint_params: Sequence[Tensor] | None = None) -> Any:
    """torchdiffeq's ``odeint_adjoint``: as :func:`odeint`, differentiated by the continuous adjoint solved backward
    (:class:`~pydeq.BacksolveAdjoint`) with respect to ``y0``, ``adjoint_params`` (default ``func.parameters()``,
    ``func`` an ``nn.Module``) and ``t``."""
    if adjoint_params is None and not isinstance(func, nn.Module):
        raise ValueError("func must be an instance of nn.Module to specify the adjoint parameters; alternatively pass "
                         "them explicitly as adjoint_params=(...) (adjoint_params=() when there are none).")
    params = tuple(func.parameters()) if adjoint_params is None else tuple(adjoint_params)
    if adjoint_method is not None and adjoint_method != method and options is not None and adjoint_options is None:
        raise ValueError("adjoint_method differs from method, so adjoint_options cannot be inferred from options: "
                         "pass adjoint_options as well.")
    inherited = {k: v for k, v in (options or {}).items() if k != "norm"}
    back_options = dict(inherited if adjoint_options is None else adjoint_options)
    if back_options.get("norm") == "seminorm":  # pydeq's backsolve always leaves the parameter adjoint out
        back_options.pop("norm")
    elif "norm" in back_options:
        raise ValueError("adjoint_options['norm'] is not supported: pydeq's backsolve holds [y, adjoint] to the "
                         "tolerance in the RMS norm and leaves the parameter adjoint out (a seminorm); drop it.")
    box = _Box(rtol=rtol if adjoint_rtol is None else adjoint_rtol, atol=atol if adjoint_atol is None else adjoint_atol,
               method=method if adjoint_method is None else adjoint_method, options=back_options, params=params)
    return _solve(func, y0, t, rtol, atol, method, options, event_fn, adjoint=box)


def odeint_event(func: Callable[[Tensor, Any], Any], y0: Tensor | tuple[Tensor, ...], t0: Tensor, *,
                 event_fn: Callable[[Tensor, Any], Tensor], reverse_time: bool = False,
                 odeint_interface: Callable[..., Any] = odeint, **kwargs: Any) -> tuple[Tensor, Any]:
    """torchdiffeq's ``odeint_event``: integrate from ``t0`` until ``event_fn(t, y)`` crosses zero; returns
    ``(event_t, stack([y0, y(event_t)]))`` with the event time and state differentiable."""
    t0 = torch.as_tensor(t0).reshape(-1)
    t = torch.cat([t0, t0.detach() + (-1.0 if reverse_time else 1.0)])
    return odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)


@dataclass(frozen=True)
class _Box:
    """The backward solve's settings for :func:`odeint_adjoint`."""

    rtol: Any
    atol: Any
    method: str | None
    options: dict[str, Any]
    params: tuple[Tensor, ...]


class _Layout:
    """A tensor or a tuple of tensors as one flat ``(1, n)`` state, and back."""

    def __init__(self, y0: Any):
        if isinstance(y0, Tensor):
            self.shapes: tuple[torch.Size, ...] | None = None
            self.flat0 = y0.reshape(1, -1)
            self.like = (y0,)
            return
        if not (isinstance(y0, tuple) and y0 and all(isinstance(y, Tensor) for y in y0)):
            raise TypeError(f"y0 must be a tensor or a tuple of tensors; got {type(y0).__name__}.")
        if len({y.dtype for y in y0}) > 1 or len({y.device for y in y0}) > 1:
            raise TypeError(f"the tensors of a tuple y0 must share one dtype and device; got "
                            f"{[(y.dtype, str(y.device)) for y in y0]}.")
        self.shapes, self.like = tuple(y.shape for y in y0), y0
        self.flat0 = torch.cat([y.reshape(-1) for y in y0])[None]

    def split(self, flat: Tensor, lead: tuple[int, ...] = ()) -> Any:
        if self.shapes is None:
            return flat.reshape((*lead, *self.like[0].shape))
        sizes = [math.prod(s) for s in self.shapes]
        return tuple(p.reshape((*lead, *s)) for p, s in zip(flat.split(sizes, dim=-1), self.shapes, strict=True))

    def join(self, ys: Any) -> Tensor:
        """``func``'s answer as a ``(1, n)`` row, after checking it has ``y``'s shapes and dtype."""
        parts = (ys,) if self.shapes is None else ys
        if self.shapes is not None and not (isinstance(ys, tuple) and len(ys) == len(self.shapes)):
            raise ValueError(f"func(t, y) must return a tuple of {len(self.shapes)} tensors like y; got "
                             f"{type(ys).__name__}.")
        for out, like in zip(parts, self.like, strict=True):
            check_field_output(out, like, name="func(t, y)")
        return torch.cat([p.reshape(-1) for p in parts])[None]


def _solve(func: Any, y0: Any, t: Any, rtol: Any, atol: Any, method: str | None, options: dict[str, Any] | None,
           event_fn: Any, adjoint: _Box | None) -> Any:
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y); got {type(func).__name__}.")
    for name in _CALLBACKS:
        if callable(getattr(func, name, None)):
            raise ValueError(f"func.{name} is a torchdiffeq callback, which pydeq.compat.torchdiffeq does not call; "
                             "remove it (or record what you need inside func).")
    layout = _Layout(y0)
    u0 = layout.flat0
    t = as_time(t, u0)
    solver = solver_for(method, options, rtol, atol, t, lambda norm: _wrap_norm(norm, layout))
    field = _field(func, layout)
    kw: dict[str, Any] = {"solver": solver, "max_steps": max_steps_of(options), "on_failure": "raise"}
    if adjoint is not None:
        back = solver_for(adjoint.method, adjoint.options, adjoint.rtol, adjoint.atol, t, lambda norm: norm)
        kw.update(adjoint=BacksolveAdjoint(solver=back, max_steps=max_steps_of(adjoint.options)),
                  params=[q for q in adjoint.params if q.requires_grad])
    else:
        kw["adjoint"] = DirectAdjoint()
    if event_fn is not None:
        return _until_event(field, layout, u0, t, event_fn, kw)
    sol = _odeint(field, u0, t, **kw)
    return layout.split(sol.z[0], (t.shape[0],))


def _field(func: Any, layout: _Layout) -> Callable[[Tensor, Tensor], Tensor]:
    def field(t: Tensor, u: Tensor) -> Tensor:
        return layout.join(func(t[0], layout.split(u[0])))

    return field


def _wrap_norm(norm: Callable[[Any], Tensor], layout: _Layout) -> Callable[[Tensor], Tensor]:
    """torchdiffeq's norm of ``y`` (a tensor or tuple) as pydeq's per-sample norm of the flat ``(1, n)`` state."""
    def per_sample(v: Tensor) -> Tensor:
        return torch.as_tensor(norm(layout.split(v[0])), dtype=v.dtype, device=v.device).reshape(1)

    return per_sample


def _until_event(field: Any, layout: _Layout, u0: Tensor, t: Tensor, event_fn: Any, kw: dict[str, Any]) -> Any:
    if t.shape[0] != 2:
        raise ValueError(f"with event_fn, t must hold 2 times, the start and any later (or earlier) time giving the "
                         f"direction; got {t.shape[0]}.")
    with torch.no_grad():  # torchdiffeq's convention: every condition starts positive, the event is the first zero
        signs = torch.sign(torch.as_tensor(event_fn(t[0], layout.split(u0[0])))).reshape(-1)

    def combined(s: Tensor, u: Tensor) -> Tensor:
        return (torch.as_tensor(event_fn(s[0], layout.split(u[0]))).reshape(-1) * signs).min().reshape(1)

    end = math.inf if bool(t[1] >= t[0]) else -math.inf
    sol = _odeint(field, u0, torch.stack([t[0], t.new_tensor(end)]), event=Event(fn=combined), **kw)
    ys = torch.cat([u0, sol.z], dim=0)
    return sol.extras["t_event"][0], layout.split(ys, (2,))
