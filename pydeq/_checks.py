"""Input validation shared by solvers and layers: every message says what, what was received, and the fix."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["check_tensor", "check_positive", "check_int", "check_policy", "check_finite", "POLICIES"]

POLICIES = ("raise", "warn", "return")


def check_tensor(name: str, x: Any, *, allow_none: bool = False) -> None:
    """Require a floating-point tensor (float16/bfloat16/float32/float64)."""
    if x is None and allow_none:
        return
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}. Wrap it with torch.as_tensor(...).")
    if x.is_complex():
        raise TypeError(
            f"{name} must be real floating point; got complex dtype={x.dtype}. "
            "pydeq solves real fixed points: split real and imaginary parts into channels."
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point; got dtype={x.dtype}. Try {name}.float() or .double().")


def check_finite(name: str, x: Tensor) -> None:
    """Reject NaN/Inf up front: a solve cannot recover from them."""
    if x.numel() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{name} contains {bad} NaN/Inf value(s) out of {x.numel()}; clean the input "
            f"(e.g. torch.nan_to_num({name})) before solving."
        )


def check_positive(name: str, value: Any, *, allow_zero: bool = False,
                   hint: str = "Typical values are 1e-6 to 1e-2.") -> None:
    """Require a finite positive real (tolerances, damping, step sizes); ``hint`` ends the error message."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        need = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{name} must be {need}; got {value!r}. {hint}")


def check_int(name: str, value: Any, *, minimum: int = 1) -> None:
    """Require an int >= minimum (step counts, history sizes)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}.")


def check_fraction(name: str, value: Any) -> None:
    """Require a number in (0, 1] (damping factors)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1]; got {value!r}. 1 means no damping.")


def check_policy(value: Any) -> None:
    if value not in POLICIES:
        raise ValueError(f"on_failure must be one of {POLICIES}; got {value!r}.")


def check_tolerances(obj: Any) -> None:
    """Validate the rtol/atol/max_steps fields every solver carries."""
    check_positive(f"{type(obj).__name__}.rtol", obj.rtol, allow_zero=True)
    check_positive(f"{type(obj).__name__}.atol", obj.atol, allow_zero=True)
    if obj.rtol == 0 and obj.atol == 0:
        raise ValueError(
            f"{type(obj).__name__}: rtol and atol are both 0, so no iterate can ever be accepted; "
            "set at least one of them > 0."
        )
    check_int(f"{type(obj).__name__}.max_steps", obj.max_steps)
