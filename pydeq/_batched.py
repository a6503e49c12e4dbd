"""Per-sample tensor helpers shared by the solvers, the linear solvers and the adjoints."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["freeze", "combine", "project", "write_slot"]


def freeze(active: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """Take ``new`` where the sample is active, ``old`` elsewhere (broadcast over state dims)."""
    mask = active.reshape(active.shape + (1,) * (new.dim() - 1))
    return torch.where(mask, new, old)


def combine(weights: Tensor, rows: Tensor) -> Tensor:
    """``sum_i weights[:, i] * rows[:, i]``: ``(batch, k), (batch, k, n) -> (batch, n)``."""
    if weights.shape[1] < 4:  # CPU bmm with an inner dimension below 4 takes a slow path (measured 4-10x)
        return (weights[..., None] * rows).sum(1)
    return torch.bmm(weights.unsqueeze(1), rows).squeeze(1)  # bmm, not @: matmul adds ~4 view dispatches


def project(v: Tensor, rows: Tensor) -> Tensor:
    """``<rows[:, i], v>`` per sample: ``(batch, n), (batch, k, n) -> (batch, k)``.

    A row vector on the left: CPU bmm with a single *column* on the right is a slow per-sample GEMV loop.
    """
    return torch.bmm(v.unsqueeze(1), rows.transpose(1, 2)).squeeze(1)


def write_slot(buf: Tensor, slot: int, row: Tensor, dim: int = 1) -> Tensor:
    """Write ``row`` into index ``slot`` of ``buf`` along ``dim`` (1 or 2); a short ``row`` fills the leading part.

    In place when nothing needs a gradient; out of place otherwise (keeps DirectAdjoint's graph intact).
    """
    if not (buf.requires_grad or row.requires_grad):
        buf.select(dim, slot)[:, : row.shape[1]].copy_(row)
        return buf
    row = torch.nn.functional.pad(row, (0, buf.shape[3 - dim] - row.shape[1]))  # unread positions get zeros
    mask = torch.zeros(buf.shape[dim], dtype=torch.bool, device=buf.device)
    mask[slot] = True
    return torch.where(mask[None, :, None] if dim == 1 else mask[None, None, :], row.unsqueeze(dim), buf)
