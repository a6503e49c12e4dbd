"""Per-sample tensor helpers shared by the solvers, the linear solvers and the adjoints."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["batch_norm", "freeze"]


def batch_norm(v: Tensor) -> Tensor:
    """Per-sample Euclidean norm: ``(batch, *state) -> (batch,)``."""
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1)


def freeze(active: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """Take ``new`` where the sample is active, ``old`` elsewhere (broadcast over state dims)."""
    mask = active.reshape(active.shape + (1,) * (new.dim() - 1))
    return torch.where(mask, new, old)
