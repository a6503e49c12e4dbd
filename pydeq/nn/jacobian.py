"""Hutchinson estimate of the Jacobian's squared Frobenius norm (Bai, Koltun & Kolter 2021)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._checks import check_int

__all__ = ["jacobian_frobenius"]


def jacobian_frobenius(fn: Callable[[Tensor], Tensor], z: Tensor, *, probes: int = 1,
                       create_graph: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Unbiased per-sample estimate of ``||df/dz||_F^2`` at ``z``.

    Uses ``||J||_F^2 = E_v ||v^T J||^2`` for ``v ~ N(0, I)`` (Hutchinson 1989), averaging ``probes``
    draws; each probe costs one vector-Jacobian product. With ``create_graph=True`` the estimate is
    differentiable in f's parameters, so it can be added to a loss as a regulariser. Assumes samples
    are independent (no batch-coupling layers in f).

    Args:
        fn: ``z -> f(z, x)``, ``(batch, *state) -> (batch, *state)``.
        z: point of evaluation, ``(batch, *state)`` (detached internally).
        probes: number of Gaussian probe vectors.

    Returns:
        ``(batch,)`` estimates of ``||J_f(z)||_F^2``.
    """
    check_int("probes", probes)
    z_in = z.detach().requires_grad_()
    with torch.enable_grad():
        out = fn(z_in)
        total = out.new_zeros(out.shape[0])
        for i in range(probes):
            v = torch.randn(out.shape, dtype=out.dtype, device=out.device, generator=generator)
            (vjp,) = torch.autograd.grad(out, z_in, v, create_graph=create_graph, retain_graph=i < probes - 1 or
                                         create_graph)
            total = total + vjp.reshape(vjp.shape[0], -1).pow(2).sum(1)
    return total / probes
