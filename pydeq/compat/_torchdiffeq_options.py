"""torchdiffeq's ``method``/``options`` strings mapped onto pydeq's method objects; anything else is an error."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from .._ode.controller import PIController
from .._ode.solvers import (
    BS3,
    RK38,
    AbstractODESolver,
    Dopri5,
    Euler,
    Fehlberg2,
    Heun2,
    Heun3,
    HeunEuler,
    Midpoint,
    Tsit5,
)

__all__ = ["ADAPTIVE", "FIXED", "solver_for", "max_steps_of", "as_time"]

ADAPTIVE: dict[str, type[AbstractODESolver]] = {"dopri5": Dopri5, "tsit5": Tsit5, "bosh3": BS3,
                                                "adaptive_heun": HeunEuler, "fehlberg2": Fehlberg2}
FIXED: dict[str, type[AbstractODESolver]] = {"euler": Euler, "midpoint": Midpoint, "heun2": Heun2, "heun3": Heun3,
                                             "rk4": RK38}  # torchdiffeq's rk4 is Kutta's 3/8 rule
ADAPTIVE_OPTIONS = ("first_step", "min_step", "max_step", "safety", "ifactor", "dfactor", "max_num_steps", "norm")
FIXED_OPTIONS = ("step_size",)
_WHY_NOT = {
    "step_t": "pydeq's steps do not stop at given times (output times come from dense output)",
    "jump_t": "pydeq does not restart at discontinuities; split the solve at the jump instead",
    "dtype": "pydeq runs every sample's clock in y0's dtype",
    "grid_constructor": "pydeq's fixed-step grid is t0 + k * step_size with every output time added",
    "interp": "pydeq's fixed-step methods land on every output time, so nothing is interpolated",
    "perturb": "pydeq evaluates the field at the step's own times",
}


def _names() -> str:
    return ", ".join(sorted([*ADAPTIVE, *FIXED]))


def solver_for(method: str | None, options: Mapping[str, Any] | None, rtol: Any, atol: Any, t: Tensor,
               norm_of: Callable[[Callable[[Any], Tensor]], Callable[[Tensor], Tensor]]) -> AbstractODESolver:
    """The pydeq method for torchdiffeq's ``method`` and ``options``; ``norm_of`` adapts a norm of ``y``."""
    method = "dopri5" if method is None else method
    options = dict(options or {})
    if method in ADAPTIVE:
        _only(method, options, ADAPTIVE_OPTIONS)
        return ADAPTIVE[method](rtol=_tol("rtol", rtol), atol=_tol("atol", atol), **_adaptive(options, norm_of))
    if method in FIXED:
        _only(method, options, FIXED_OPTIONS + ("max_num_steps",))
        step = options.get("step_size")
        if step is None:  # torchdiffeq's grid is then t itself: one step per output interval
            gaps = (t[1:] - t[:-1]).abs()
            step = float(gaps.max()) if gaps.numel() else 1.0
        return FIXED[method](dt=float(step))
    raise ValueError(f"method {method!r} is not supported by pydeq.compat.torchdiffeq; supported: {_names()}. "
                     "(dopri8 and the Adams methods are not implemented; for scipy_solver call scipy directly.)")


def max_steps_of(options: Mapping[str, Any] | None) -> int:
    """torchdiffeq's ``max_num_steps`` (default 2**31 - 1) as pydeq's ``max_steps``."""
    value = (options or {}).get("max_num_steps", 2**31 - 1)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"options['max_num_steps'] must be an int >= 1; got {value!r}.")
    return value


def _only(method: str, options: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in options:
        if key in allowed:
            continue
        why = _WHY_NOT.get(key)
        kind = "adaptive" if method in ADAPTIVE else "fixed-step"
        raise ValueError(f"option {key!r} is not supported for {kind} method {method!r}"
                         + (f": {why}" if why else "") + f". Supported options: {', '.join(allowed)}.")


def _tol(name: str, value: Any) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number; got a tensor of shape {tuple(value.shape)}. pydeq's tolerances "
                             "are scalars (scale the state instead of giving per-entry tolerances).")
        value = float(value)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number; got {type(value).__name__} {value!r}.")
    return float(value)


def _adaptive(options: dict[str, Any], norm_of: Callable[[Callable[[Any], Tensor]], Callable[[Tensor], Tensor]]
              ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if options.get("first_step") is not None:
        out["dt0"] = float(options["first_step"])
    if options.get("min_step") is not None:
        out["dtmin"] = float(options["min_step"])
    if options.get("max_step") is not None:
        out["dtmax"] = float(options["max_step"])
    if "norm" in options:
        norm = options["norm"]
        if not callable(norm):
            raise ValueError(f"options['norm'] must be a callable of y (or of the tuple y); got {norm!r}.")
        out["norm"] = norm_of(norm)
    factors = {k: float(options[k]) for k in ("safety", "ifactor", "dfactor") if k in options}
    if factors:
        out["controller"] = PIController(safety=factors.get("safety", 0.9),
                                         factor_max=factors.get("ifactor", 10.0),
                                         factor_min=factors.get("dfactor", 0.2))
    return out


def as_time(t: Any, like: Tensor) -> Tensor:
    """torchdiffeq's ``t``: a floating 1-D tensor, converted to ``y0``'s dtype; on ``y0``'s device."""
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be a torch.Tensor of times; got {type(t).__name__}. Use torch.tensor([...]).")
    if not t.is_floating_point():
        raise TypeError(f"t must be a floating point Tensor; got dtype={t.dtype}. Use t.to({like.dtype}).")
    if t.dim() != 1:
        raise ValueError(f"t must be one-dimensional, (n_times,); got shape {tuple(t.shape)}.")
    if t.device != like.device:
        raise ValueError(f"t must be on y0's device {like.device}; got {t.device}. Use t.to(y0.device) (torchdiffeq "
                         "moves it with a warning).")
    return t.to(like.dtype)
