"""The functional entry point: solve ``z* = f(z*, x)`` and make the answer differentiable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._adjoint import AbstractAdjoint, ImplicitAdjoint
from ._checks import check_finite, check_policy, check_tensor
from ._root import AbstractRootFinder, Anderson, solve
from ._solution import Solution, report_failures

__all__ = ["fixed_point", "report_failures"]


def fixed_point(
    f: Callable[[Tensor, Any], Tensor],
    x: Any,
    z0: Tensor | None = None,
    *,
    solver: AbstractRootFinder | None = None,
    adjoint: AbstractAdjoint | None = None,
    on_failure: str = "warn",
    trace: bool = False,
) -> Solution:
    """Solve ``z* = f(z*, x)`` per sample and return it with a gradient defined by ``adjoint``.

    Args:
        f: called as ``f(z, x)``; maps ``(batch, *state)`` to the same shape. Gradients reach x and every
            tensor f uses (an ``nn.Module``'s parameters or tensors captured by a closure).
        x: the input injected at every call, usually ``(batch, ...)``; passed to f untouched.
        z0: ``(batch, *state)`` initial guess; defaults to ``zeros_like(x)``.
        solver: root finder or steady-state ODE solver; default ``Anderson()``.
        adjoint: how gradients are computed; default ``ImplicitAdjoint()`` (exact, GMRES); ``DirectAdjoint()``
            back-propagates through the solver's iterations.
        on_failure: ``"warn"`` (default), ``"raise"`` or ``"return"`` when a sample does not converge.
            NaN/Inf iterates raise :class:`NonFiniteError` unless ``"return"``.
        trace: keep the per-step residual norms in ``Solution.trace``.

    Returns:
        A :class:`Solution`; ``solution.z`` carries the gradient (when grad mode is on).
    """
    solver = Anderson() if solver is None else solver
    adjoint = ImplicitAdjoint() if adjoint is None else adjoint
    _check_args(f, x, z0, solver, adjoint, on_failure)
    if z0 is None:
        if not isinstance(x, Tensor):
            raise ValueError("z0 is required when x is not a tensor: pass z0 with shape (batch, *state).")
        z0 = torch.zeros_like(x)
    _check_state(z0)
    fn = _ShapeChecked(f, x, z0)
    grad = torch.is_grad_enabled()
    # under autocast, only f runs in low precision: the solver's own arithmetic stays in the state's dtype
    with torch.set_grad_enabled(grad and adjoint.unrolled), torch.autocast(z0.device.type, enabled=False):
        solution = solve(solver, fn, z0 if adjoint.unrolled else z0.detach(), trace=trace)
    adjoint.check_solution(solution)
    report_failures(solution, on_failure)
    if grad:
        solution.z = adjoint.attach(fn, solution)
    return solution


def _check_state(z0: Tensor) -> None:
    if z0.dtype in (torch.float16, torch.bfloat16):
        raise TypeError(
            f"the state must be float32 or float64; got dtype={z0.dtype}. Solvers accumulate residuals and small "
            "linear solves that half precision cannot resolve. Keep x and z0 in float32 and wrap the call in "
            "torch.autocast(...): pydeq then runs f in low precision and the solver in float32."
        )


def _check_not_vmapped(t: Any) -> None:
    if not isinstance(t, Tensor) or torch.compiler.is_compiling():
        return
    if torch._C._functorch.is_functorch_wrapped_tensor(t):
        raise NotImplementedError(
            "pydeq layers are batched already and their solvers stop per sample with data-dependent control flow, "
            "which torch.func.vmap cannot trace. Call the layer on the whole batch instead of vmapping over samples."
        )


def _check_args(f: Any, x: Any, z0: Any, solver: Any, adjoint: Any, on_failure: str) -> None:
    _check_not_vmapped(x)
    _check_not_vmapped(z0)
    if not callable(f):
        raise TypeError(f"f must be callable as f(z, x); got {type(f).__name__}.")
    if isinstance(x, Tensor):
        check_tensor("x", x)
        check_finite("x", x)
    if z0 is not None:
        check_tensor("z0", z0)
        check_finite("z0", z0)
        if z0.dim() < 1:
            raise ValueError(f"z0 must be batched, shape (batch, *state); got shape {tuple(z0.shape)}.")
        if isinstance(x, Tensor) and x.dim() >= 1 and x.shape[0] != z0.shape[0]:
            raise ValueError(
                f"x and z0 must have the same batch size; got x.shape={tuple(x.shape)}, z0.shape={tuple(z0.shape)}."
            )
    if not isinstance(solver, AbstractRootFinder):
        raise TypeError(
            f"solver must be a root finder (FixedPointIteration, Anderson, Broyden, NewtonKrylov) or "
            f"SteadyState(...); got {type(solver).__name__}. ODE integrators belong to NeuralODE or inside SteadyState."
        )
    if not isinstance(adjoint, AbstractAdjoint):
        raise TypeError(
            "adjoint must be one of ImplicitAdjoint, BroydenReuseAdjoint, JacobianFreeAdjoint, PhantomAdjoint, "
            f"DirectAdjoint; got {type(adjoint).__name__}."
        )
    check_policy(on_failure)


class _ShapeChecked:
    """``fn(z) = f(z, x)`` that checks the first output's shape and dtype against the state."""

    def __init__(self, f: Callable, x: Any, z0: Tensor):
        self.f, self.x, self.checked = f, x, False
        self.shape, self.dtype = z0.shape, z0.dtype
        device = z0.device.type
        self.amp = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        self.device = device

    def __call__(self, z: Tensor) -> Tensor:
        if self.amp is not None:  # f in the caller's autocast precision, answer cast back to the state's dtype
            with torch.autocast(self.device, dtype=self.amp):
                out = self.f(z, self.x)
            out = out.to(self.dtype) if isinstance(out, Tensor) else out
        else:
            out = self.f(z, self.x)
        if not self.checked:
            if not isinstance(out, Tensor):
                raise TypeError(f"f(z, x) must return a tensor; got {type(out).__name__}.")
            if out.shape != self.shape:
                raise ValueError(
                    f"f(z, x) must return the shape of z; got {tuple(out.shape)} for z of shape {tuple(self.shape)}. "
                    "A DEQ's state must map to itself: pass z0 (or state_shape) matching f's output."
                )
            if out.dtype != self.dtype:
                raise TypeError(f"f(z, x) returned dtype {out.dtype} for z of dtype {self.dtype}; make them match.")
            self.checked = True
        return out
