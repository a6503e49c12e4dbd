"""Variational dropout: one mask per forward pass, the same at every solver iteration (Gal & Ghahramani 2016).

Ordinary dropout draws a new mask at each call, so inside a DEQ the map f changes at every solver step and the
solve chases a moving target (and the implicit gradient is that of yet another map). ``VariationalDropout`` draws
its mask at the first call after :meth:`VariationalDropout.reset` and reuses it until the next reset;
:func:`resample_each_call` resets every such mask when the DEQ layer is entered, i.e. once per training step.

    f = nn.Sequential(...)  # containing VariationalDropout(0.1)
    deq = resample_each_call(pydeq.DEQ(Cell()))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["VariationalDropout", "reset_dropout", "resample_each_call"]


class VariationalDropout(nn.Module):
    """Dropout whose mask stays fixed until :meth:`reset`; identity in ``eval()`` mode or with ``p = 0``.

    Args:
        p: probability of zeroing an entry, in [0, 1); kept entries are scaled by ``1 / (1 - p)``.
        shared_dims: per-sample dimensions (counted from 1, after the batch) along which one mask entry is
            shared, e.g. ``(2, 3)`` drops whole channels of an image state ``(batch, C, H, W)``.

    Input: ``(batch, *state)``; each sample gets its own mask.
    """

    def __init__(self, p: float = 0.1, *, shared_dims: Sequence[int] = ()):
        super().__init__()
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p < 1:
            raise ValueError(f"p must be in [0, 1); got {p!r}. p is the probability of dropping an entry.")
        if any(not isinstance(d, int) or d < 1 for d in shared_dims):
            raise ValueError(f"shared_dims counts per-sample dimensions from 1 (0 is the batch); got {shared_dims!r}.")
        self.p, self.shared_dims = float(p), tuple(shared_dims)
        self.mask: Tensor | None = None

    def reset(self) -> None:
        """Forget the mask; the next call draws a new one."""
        self.mask = None

    def forward(self, z: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return z
        shape = tuple(1 if d in self.shared_dims else s for d, s in enumerate(z.shape))
        if self.mask is None:
            keep = torch.empty(shape, dtype=z.dtype, device=z.device).bernoulli_(1 - self.p)
            self.mask = keep / (1 - self.p)
        elif self.mask.shape != shape or self.mask.device != z.device:
            raise ValueError(
                f"VariationalDropout holds a mask of shape {tuple(self.mask.shape)} but got input {tuple(z.shape)}: "
                "the mask was not reset since the last step. Wrap the DEQ with resample_each_call(deq) or call "
                "reset_dropout(model) at the start of every step."
            )
        return z * self.mask.to(z.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}, shared_dims={self.shared_dims}"

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state["mask"] = None  # a per-step draw, not part of the model
        return state


def reset_dropout(module: nn.Module) -> None:
    """Reset the mask of every :class:`VariationalDropout` inside ``module``."""
    for sub in module.modules():
        if isinstance(sub, VariationalDropout):
            sub.reset()


class _Resample:
    def __call__(self, module: nn.Module, args: Any) -> None:
        reset_dropout(module)


def resample_each_call(module: nn.Module) -> nn.Module:
    """Draw fresh variational-dropout masks each time ``module`` (the DEQ layer) is called; returns ``module``."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"resample_each_call needs an nn.Module; got {type(module).__name__}.")
    if not any(isinstance(h, _Resample) for h in module._forward_pre_hooks.values()):
        module.register_forward_pre_hook(_Resample())
    return module
