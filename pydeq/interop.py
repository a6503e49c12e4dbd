"""Zero-copy tensor exchange between torch, numpy and Julia.

Memory layout: torch and numpy (C order) are row-major, Julia is column-major. The same buffer read
by Julia therefore has its dimensions reversed: a torch ``(batch, features)`` tensor is a Julia
``(features, batch)`` array, exactly Lux's layout, so data crosses without a transpose. Tensors cross
as ``.detach().contiguous()`` flat vectors plus their torch shape (DLPack.jl's layout detection is
fragile for non-contiguous tensors and leading size-1 dimensions); Julia reshapes with the reversed
shape. Only float32/float64 tensors on cpu or cuda cross.

The torch <-> numpy helpers work everywhere; :func:`to_julia` and :func:`from_julia` start the Julia
engine (see :mod:`pydeq.julia`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "EXCHANGE_DTYPES", "EXCHANGE_DEVICES", "check_exchangeable", "flat_for_julia", "julia_shape",
    "to_numpy", "from_numpy", "to_julia", "from_julia", "shares_memory", "sync_device",
]

EXCHANGE_DTYPES = (torch.float32, torch.float64)
EXCHANGE_DEVICES = ("cpu", "cuda")


def check_exchangeable(name: str, t: Any) -> None:
    """Raise ``TypeError`` unless ``t`` is a float32/float64 tensor on cpu or cuda."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}. Wrap it with torch.as_tensor(...).")
    if t.dtype not in EXCHANGE_DTYPES:
        raise TypeError(
            f"{name} must be float32 or float64 to cross to Julia; got dtype={t.dtype}. "
            f"Try {name}.float() or {name}.double()."
        )
    if t.device.type not in EXCHANGE_DEVICES:
        raise TypeError(
            f"{name} must live on cpu or cuda to cross to Julia; got device={t.device}. Try {name}.cpu()."
        )


def flat_for_julia(name: str, t: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """``(flat, shape)``: a detached, contiguous 1-D view of ``t`` (no copy when ``t`` is contiguous) and
    its torch shape. Julia wraps ``flat`` by DLPack and reshapes it to ``julia_shape(shape)``."""
    check_exchangeable(name, t)
    return t.detach().contiguous().reshape(-1), tuple(t.shape)


def julia_shape(shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    """The size Julia sees for a row-major buffer of torch shape ``shape``: the dimensions reversed."""
    return tuple(reversed(tuple(shape)))


def to_numpy(t: Tensor) -> np.ndarray:
    """Share a cpu tensor's memory as a numpy array (no copy; gradients are not tracked)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be a torch.Tensor; got {type(t).__name__}.")
    if t.device.type != "cpu":
        raise TypeError(f"only cpu tensors share memory with numpy; got device={t.device}. Try t.cpu() (a copy).")
    return t.detach().numpy()


def from_numpy(a: np.ndarray) -> Tensor:
    """Share a numpy array's memory as a torch tensor (no copy)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"a must be a numpy.ndarray; got {type(a).__name__}. Try numpy.asarray(a).")
    return torch.from_numpy(a)


def shares_memory(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> bool:
    """Whether two cpu tensors/arrays start at the same address (the zero-copy check used in tests)."""

    def address(v: Tensor | np.ndarray) -> int:
        return v.data_ptr() if isinstance(v, Tensor) else v.__array_interface__["data"][0]

    return address(a) == address(b)


def sync_device(*tensors: Tensor) -> None:
    """Wait for torch's current CUDA stream on the devices of ``tensors`` (no-op on cpu), so Julia, which
    runs on its own stream, reads finished data."""
    for device in {t.device for t in tensors if t.device.type == "cuda"}:
        torch.cuda.current_stream(device).synchronize()


def to_julia(t: Tensor) -> Any:
    """Wrap a tensor as a Julia array without copying (dimensions reversed). Starts the Julia engine.

    The Julia array aliases ``t``'s memory: keep ``t`` alive while Julia uses it.
    """
    from .julia import load

    return load().to_julia(t)


def from_julia(a: Any) -> Tensor:
    """Wrap a Julia array as a tensor without copying (dimensions reversed). Starts the Julia engine."""
    from .julia import load

    return load().from_julia(a)
