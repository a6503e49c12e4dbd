"""Zero-copy tensor exchange between torch and Julia.

Memory layout: torch and numpy (C order) are row-major, Julia is column-major. The same buffer read
by Julia therefore has its dimensions reversed: a torch ``(batch, features)`` tensor is a Julia
``(features, batch)`` array, exactly Lux's layout, so data crosses without a transpose. Tensors cross
as detached flat vectors plus their torch shape (DLPack.jl's layout detection is fragile for
non-contiguous tensors and leading size-1 dimensions); Julia reshapes with the reversed shape. Only
float32/float64 tensors on cpu or cuda cross.

When memory is shared and when it is copied:

* a contiguous tensor (``t.is_contiguous()``) crosses as a view of its own buffer: Julia reads and
  writes ``t``'s memory, and the Julia array keeps that buffer alive for as long as it lives;
* a non-contiguous tensor (a transpose, a strided slice) has no flat view, so it is copied first
  (``.contiguous()``): Julia then works on that private copy and its writes never reach ``t``.
  :func:`to_julia` takes ``copy=False`` to refuse instead, and ``copy=True`` to always copy;
* a Julia array reaches torch through :func:`from_julia` without a copy; the tensor keeps it alive.

:func:`to_julia` and :func:`from_julia` start the Julia engine; the other helpers never do.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import load

__all__ = ["EXCHANGE_DTYPES", "EXCHANGE_DEVICES", "check_exchangeable", "flat_for_julia", "julia_shape",
           "device_index", "to_julia", "from_julia", "sync_device"]

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


def flat_for_julia(name: str, t: Tensor, *, copy: bool | None = None) -> tuple[Tensor, tuple[int, ...]]:
    """``(flat, shape)``: ``t`` detached as a 1-D tensor, and its torch shape. Julia wraps ``flat`` by DLPack
    and reshapes it to ``julia_shape(shape)``.

    ``flat`` is a view of ``t``'s buffer when ``t`` is contiguous and ``copy`` is not ``True``; a copy when
    ``copy=True``, or when ``t`` is not contiguous and ``copy`` is ``None``. ``copy=False`` raises
    ``ValueError`` for a non-contiguous ``t`` instead of copying it.
    """
    check_exchangeable(name, t)
    if copy not in (None, True, False):
        raise TypeError(f"copy must be None, True or False; got {copy!r}.")
    t = t.detach()
    if copy is True:
        return t.clone(memory_format=torch.contiguous_format).view(-1), tuple(t.shape)
    if not t.is_contiguous():
        if copy is False:
            raise ValueError(
                f"{name} is not contiguous (shape {tuple(t.shape)}, strides {t.stride()}), so Julia cannot share "
                f"its memory; pass {name}.contiguous() (a copy you keep) or copy=None to let pydeq copy it."
            )
        t = t.contiguous()
    return t.view(-1), tuple(t.shape)


def device_index(**tensors: Tensor) -> int:
    """The torch index of the one CUDA device all ``tensors`` live on, or ``-1`` when they are on the CPU.

    Julia selects that device around the call (DLPack.jl would otherwise read the memory in CUDA.jl's
    current context). Tensors on different devices raise ``TypeError``.
    """
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        where = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise TypeError(f"the tensors crossing to Julia must share one device; got {where}. Move them with .to(...).")
    return next(iter(tensors.values())).get_device() if tensors else -1


def julia_shape(shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    """The size Julia sees for a row-major buffer of torch shape ``shape``: the dimensions reversed."""
    return tuple(reversed(tuple(shape)))


def sync_device(*tensors: Tensor) -> None:
    """Wait for torch's current CUDA stream on the devices of ``tensors`` (no-op on cpu), so Julia, which
    runs on its own stream, reads finished data."""
    for device in {t.device for t in tensors if t.device.type == "cuda"}:
        torch.cuda.current_stream(device).synchronize()


def to_julia(t: Tensor, *, copy: bool | None = None) -> Any:
    """``t`` as a Julia array of the reversed shape. Starts the Julia engine.

    A contiguous ``t`` is shared, not copied: Julia's writes show in ``t``, and the Julia array keeps the
    buffer alive for as long as it lives, whether or not ``t`` is kept. A non-contiguous ``t`` is copied
    first (the Julia array then aliases that copy and its writes do not reach ``t``); ``copy=False`` raises
    ``ValueError`` instead, ``copy=True`` always copies. See :func:`flat_for_julia`.
    """
    return load().to_julia(t, copy=copy)


def from_julia(a: Any) -> Tensor:
    """A Julia array as a tensor of the reversed shape, sharing its memory (no copy); the tensor keeps ``a``
    alive. Starts the Julia engine. Dense CPU arrays always cross; a ``CuArray`` crosses under CUDA.jl 5, while
    under CUDA.jl 6 Julia raises (DLPack.jl 0.3 cannot describe its memory there): copy it to the CPU first."""
    return load().from_julia(a)
