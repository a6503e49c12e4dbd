"""Autograd across the language boundary: a ``torch.library.custom_op`` whose backward calls Julia's
implicit-adjoint vector-Jacobian product (``SteadyStateAdjoint``)."""

from __future__ import annotations

import json
import threading
import warnings
from typing import Any

import torch
from torch import Tensor

from .. import interop
from .._solution import Solution, Status
from . import load

__all__ = ["julia_fixed_point"]

if not hasattr(torch.library, "custom_op"):  # pragma: no cover
    raise ImportError(f"the Julia engine needs torch>=2.4 (torch.library.custom_op); this is torch {torch.__version__}")

_HANDLES: dict[str, int] = {}  # spec JSON -> handle; a handle holds no parameters, so equal specs share one
_HANDLES_LOCK = threading.Lock()


@torch.library.custom_op("pydeq::julia_fixed_point", mutates_args=())
def _fixed_point(x: Tensor, theta: Tensor, handle: int, z_shape: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    z, residual, nfe = load().forward(handle, x, theta, z_shape)
    return z, residual, torch.tensor(nfe, dtype=torch.int64)


@_fixed_point.register_fake
def _(x: Tensor, theta: Tensor, handle: int, z_shape: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    return x.new_empty(z_shape), x.new_empty(z_shape[0]), torch.empty((), dtype=torch.int64)


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, theta, handle, _ = inputs
    ctx.save_for_backward(x, theta, output[0])
    ctx.handle = handle


def _backward(ctx: Any, grad_z: Tensor, _grad_residual: Tensor, _grad_nfe: Tensor) -> tuple:
    x, theta, z = ctx.saved_tensors
    gx, gtheta = load().vjp(ctx.handle, x, theta, z, grad_z)
    return gx, gtheta, None, None


_fixed_point.register_autograd(_backward, setup_context=_setup_context)


def _handle(spec_json: str) -> int:
    with _HANDLES_LOCK:
        if spec_json not in _HANDLES:
            _HANDLES[spec_json] = load().build(spec_json)
        return _HANDLES[spec_json]


def julia_fixed_point(model: Any, x: Tensor) -> Solution:
    """Solve ``model`` (a :class:`pydeq.spec.SpecModel`) at ``x: (batch, *x_shape)`` in Julia.

    Returns a :class:`~pydeq.Solution` whose ``z`` carries the gradient to ``x`` and the parameters. A
    sample's status is SUCCESS when ``residual <= atol + rtol * ||z||`` (Julia stops on the batch's worst
    sample, so ``steps`` is the solve's nfe for every sample).
    """
    from ..spec import _julia_tree

    interop.check_exchangeable("x", x)
    tree, flats = _julia_tree(model)
    theta = torch.cat([t.reshape(-1) for t in flats])
    if theta.dtype != x.dtype or theta.device != x.device:
        raise TypeError(
            f"x is {x.dtype} on {x.device} but the parameters are {theta.dtype} on {theta.device}; "
            f"move one to match, e.g. model.to(x.dtype) or x.to(torch.float32)."
        )
    z_shape = [x.shape[0], *model.state_shape(tuple(x.shape[1:]))]
    z, residual, nfe = _fixed_point(x, theta, _handle(json.dumps(tree, sort_keys=True)), z_shape)
    tol = tree["abstol"] + tree["reltol"] * torch.linalg.vector_norm(z.detach().reshape(z.shape[0], -1), dim=1)
    ok = residual.detach() <= tol
    status = torch.where(ok, int(Status.SUCCESS), int(Status.MAX_STEPS)).to(torch.int64)
    if not bool(ok.all()):
        warnings.warn(f"Julia engine: {int((~ok).sum())} sample(s) did not converge: {Status.MAX_STEPS.message}",
                      RuntimeWarning, stacklevel=3)
    n = int(nfe)
    steps = torch.full((x.shape[0],), n, dtype=torch.int64, device=x.device)
    return Solution(z=z, residual=residual.detach(), status=status, nfe=n, steps=steps, extras={"backend": "julia"})
