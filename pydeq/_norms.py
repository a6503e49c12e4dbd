"""Per-sample norms that the stopping tests and the ODE error control take as an argument, and the stop test.

A norm maps ``(batch, *state) -> (batch,)``, one value per sample. Which one decides what a tolerance means:

============  ===================================  ======================================================
norm          value for a state of ``n`` entries    a tolerance ``tol`` means
============  ===================================  ======================================================
``rms_norm``  ``sqrt(mean_i v_i**2)``               the typical entry is within ``tol``, at any ``n``
``max_norm``  ``max_i |v_i|``                       every entry is within ``tol`` (grows ~ sqrt(2 log n))
``l2_norm``   ``sqrt(sum_i v_i**2)``                the whole vector is within ``tol`` (grows like sqrt(n))
============  ===================================  ======================================================

``rms_norm`` is pydeq's default everywhere (as the ODE error control of every adaptive Runge–Kutta code): an
absolute tolerance then means the same for a 16-entry and a 16,384-entry state. ``max_norm`` is
DeepEquilibriumNetworks.jl's default termination test; ``l2_norm`` is TorchDEQ's (relative) one and the only
one whose absolute tolerances depend on the state size. For a relative test (``atol = 0``) ``rms_norm`` and
``l2_norm`` give the same answer, since the factor ``sqrt(n)`` cancels.

Any callable with the same signature works (e.g. a weighted norm); it must return a non-negative
``(batch,)`` tensor and should be 0 only for a zero state.

:func:`converged` is the one stop test of a fixed-point solve, ``norm(f(z) - z) <= atol + rtol * norm(f(z))``,
shared by the root-finder driver and the DEQ layer's unrolled pretraining path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["rms_norm", "max_norm", "l2_norm", "Norm", "converged", "check_norm", "check_norm_output"]

Norm = Callable[[Tensor], Tensor]


def rms_norm(v: Tensor) -> Tensor:
    """Root mean square over each sample's state: ``(batch, *state) -> (batch,)``, ``sqrt(mean(v**2))``."""
    flat = v.reshape(v.shape[0], -1)
    return torch.linalg.vector_norm(flat, dim=1) / max(flat.shape[1], 1) ** 0.5


def max_norm(v: Tensor) -> Tensor:
    """Largest absolute entry of each sample's state: ``(batch, *state) -> (batch,)``, ``max |v_i|``."""
    flat = v.reshape(v.shape[0], -1)
    if flat.shape[1] == 0:
        return flat.new_zeros(flat.shape[0])
    return flat.abs().amax(dim=1)


def l2_norm(v: Tensor) -> Tensor:
    """Euclidean norm of each sample's whole state: ``(batch, *state) -> (batch,)``, ``sqrt(sum(v**2))``."""
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1)


def converged(residual: Tensor, fz_norm: Tensor, *, rtol: float, atol: float) -> Tensor:
    """The stop test of a fixed-point solve: ``residual <= atol + rtol * fz_norm``, per sample.

    Args:
        residual: ``(batch,)`` ``norm(f(z) - z)``.
        fz_norm: ``(batch,)`` ``norm(f(z))``, in the same norm; ``rtol = 0`` makes the test absolute, ``atol = 0``
            relative (DeepEquilibriumNetworks.jl's ``rel_norm``).
        rtol, atol: the solver's tolerances.

    Returns:
        ``(batch,)`` bool: which samples have converged (False where the residual is NaN).
    """
    return residual <= atol + rtol * fz_norm


def check_norm(where: str, norm: Any) -> None:
    """Reject anything that cannot be a per-sample norm (called by the solvers' ``__post_init__``)."""
    if not callable(norm):
        raise TypeError(
            f"{where}.norm must be a callable (batch, *state) -> (batch,), e.g. pydeq.rms_norm, pydeq.max_norm or "
            f"pydeq.l2_norm; got {type(norm).__name__} {norm!r}."
        )


def check_norm_output(where: str, value: Any, batch: int) -> None:
    """Check a norm's first answer: a real ``(batch,)`` tensor (called once per solve)."""
    if not isinstance(value, Tensor) or value.shape != (batch,) or value.is_complex():
        got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"{where}.norm must map (batch, *state) to a real (batch,) tensor, one value per sample; got {got} for "
            f"batch {batch}. Reduce over every dimension but the first, as pydeq.rms_norm does."
        )
