"""Autograd across the language boundary: a ``torch.library.custom_op`` whose backward calls Julia's
implicit-adjoint vector-Jacobian product (``SteadyStateAdjoint``)."""

from __future__ import annotations

import json
import threading
from typing import Any

import torch
from torch import Tensor

from .._solution import Solution, Status
from . import load
from .exchange import check_exchangeable
from .translate import julia_tree

__all__ = ["julia_fixed_point", "julia_status"]

if not hasattr(torch.library, "custom_op"):  # pragma: no cover
    raise ImportError(f"the Julia engine needs torch>=2.4 (torch.library.custom_op); this is torch {torch.__version__}")

_HANDLES: dict[str, int] = {}  # spec JSON -> handle; a handle holds no parameters, so equal specs share one
_HANDLES_LOCK = threading.Lock()
# Julia's return codes travel through the custom op as indices into this process-local list
_RETCODES: list[str] = []
_RETCODES_LOCK = threading.Lock()
# retcodes (SciMLBase.ReturnCode) that mean the iteration stopped improving, not that it ran out of steps
_STAGNATION_RETCODES = frozenset({"Stalled", "ShrinkThresholdExceeded", "ConvergenceFailure"})


def _retcode_index(name: str) -> int:
    with _RETCODES_LOCK:
        if name not in _RETCODES:
            _RETCODES.append(name)
        return _RETCODES.index(name)


@torch.library.custom_op("pydeq::julia_fixed_point", mutates_args=())
def _fixed_point(x: Tensor, theta: Tensor, handle: int, z_shape: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    out = load().forward(handle, x, theta, z_shape)
    info = torch.tensor([out.nfe, int(out.success), _retcode_index(out.retcode)], dtype=torch.int64)
    return out.z, out.residual, info


@_fixed_point.register_fake
def _(x: Tensor, theta: Tensor, handle: int, z_shape: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    return x.new_empty(z_shape), x.new_empty(z_shape[0]), torch.empty(3, dtype=torch.int64)


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, theta, handle, _ = inputs
    ctx.save_for_backward(x, theta, output[0])
    ctx.handle = handle


def _backward(ctx: Any, grad_z: Tensor, _grad_residual: Tensor, _grad_info: Tensor) -> tuple:
    x, theta, z = ctx.saved_tensors
    gx, gtheta = load().vjp(ctx.handle, x, theta, z, grad_z)
    return gx, gtheta, None, None


_fixed_point.register_autograd(_backward, setup_context=_setup_context)


def _handle(spec_json: str) -> int:
    with _HANDLES_LOCK:
        if spec_json not in _HANDLES:
            _HANDLES[spec_json] = load().build(spec_json)
        return _HANDLES[spec_json]


def julia_status(success: bool, retcode: str, z: Tensor, residual: Tensor) -> Tensor:
    """``(batch,)`` :class:`~pydeq.Status` codes from Julia's verdict, which is one for the whole batch.

    Julia stops on the batch's worst sample (``max_b ||r_b|| <= abstol`` or
    ``max_b ||r_b|| <= reltol * max_b ||r_b + z_b||``), so every sample gets that verdict: SUCCESS when Julia
    accepted the solve, otherwise STAGNATED for the stalling return codes and MAX_STEPS for the others. A sample
    whose answer or residual is not finite is NONFINITE either way.
    """
    if success:
        verdict = Status.SUCCESS
    else:
        verdict = Status.STAGNATED if retcode in _STAGNATION_RETCODES else Status.MAX_STEPS
    finite = torch.isfinite(z.reshape(z.shape[0], -1)).all(dim=1) & torch.isfinite(residual)
    return torch.where(finite, int(verdict), int(Status.NONFINITE)).to(torch.int64)


def julia_fixed_point(model: Any, x: Tensor) -> Solution:
    """Solve ``model`` (a :class:`pydeq.spec.SpecModel`) at ``x: (batch, *x_shape)`` in Julia.

    Returns a :class:`~pydeq.Solution` whose ``z`` carries the gradient to ``x`` and the parameters, whose
    ``status`` is Julia's own batch-wide verdict (:func:`julia_status`) and whose ``extras`` hold the backend and
    Julia's return code (``"julia_retcode"``); ``steps`` is the solve's nfe for every sample, since the batch
    stops together. The ``on_failure`` policy is applied by the caller, as for the native engine.
    """
    check_exchangeable("x", x)
    tree, flats = julia_tree(model)
    theta = torch.cat([t.reshape(-1) for t in flats])
    if theta.dtype != x.dtype or theta.device != x.device:
        raise TypeError(
            f"x is {x.dtype} on {x.device} but the parameters are {theta.dtype} on {theta.device}; "
            f"move one to match, e.g. model.to(x.dtype) or x.to(torch.float32)."
        )
    z_shape = [x.shape[0], *model.state_shape(tuple(x.shape[1:]))]
    z, residual, info = _fixed_point(x, theta, _handle(json.dumps(tree, sort_keys=True)), z_shape)
    nfe, success, code = (int(v) for v in info.tolist())
    retcode = _RETCODES[code]
    residual = residual.detach()
    status = julia_status(bool(success), retcode, z.detach(), residual)
    steps = torch.full((x.shape[0],), nfe, dtype=torch.int64, device=x.device)
    return Solution(z=z, residual=residual, status=status.to(x.device), nfe=nfe, steps=steps,
                    extras={"backend": "julia", "julia_retcode": retcode})
