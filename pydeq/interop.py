"""Zero-copy tensor exchange between torch and numpy.

The Julia exchange helpers that used to live here (``to_julia``, ``from_julia``, ``flat_for_julia``, ...) are
Julia plumbing and moved to :mod:`pydeq.julia.exchange`; the old names still work here for one release, with a
``DeprecationWarning``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["to_numpy", "from_numpy", "shares_memory"]

_MOVED = ("EXCHANGE_DTYPES", "EXCHANGE_DEVICES", "check_exchangeable", "flat_for_julia", "julia_shape",
          "device_index", "to_julia", "from_julia", "sync_device")


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


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(f"pydeq.interop.{name} moved to pydeq.julia.exchange.{name}; the old name goes in the next "
                      "release.", DeprecationWarning, stacklevel=2)
        from .julia import exchange

        return getattr(exchange, name)
    raise AttributeError(f"module 'pydeq.interop' has no attribute {name!r}")
