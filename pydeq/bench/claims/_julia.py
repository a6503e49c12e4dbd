"""The bench's cells in the spec language, for ``--backend julia`` (see :mod:`pydeq.bench.routing`).

The dense cell ``tanh(W z + x)`` and the residual conv cell ``GN3(relu(z + GN2(conv2(relu(GN1(conv1(z)))) + x)))``
are described by spec blocks over the cells' own modules; the multiscale cell has no description.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pydeq.bench.claim import BenchContext
from pydeq.bench.claims._models import _ConvCell, _MLPCell
from pydeq.bench.routing import TranslatedCell, route

__all__ = ["route_methods", "translate_cell"]


def _mlp(cell: _MLPCell) -> TranslatedCell:
    from pydeq import spec

    w = cell.W.in_features
    block = spec.Chain(spec.Injection(z=spec.Dense(w, w, bias=False), x=spec.Identity()), spec.Tanh())
    return TranslatedCell(block, (cell.W, None, None))


def _conv(cell: _ConvCell) -> TranslatedCell:
    from pydeq import spec

    c, groups = cell.conv1.in_channels, cell.norm1.num_groups
    conv = spec.Conv2d(c, c, 3, padding=1, bias=False)
    norm = spec.GroupNorm(groups, c, eps=cell.norm1.eps)
    branch = spec.Chain(conv, norm, spec.ReLU(), conv)
    block = spec.Chain(spec.Residual(spec.Chain(spec.Injection(z=branch, x=spec.Identity()), norm)), spec.ReLU(), norm)
    leaves = (cell.conv1, cell.norm1, None, cell.conv2, None, cell.norm2, None, cell.norm3)
    return TranslatedCell(block, leaves)


def translate_cell(f: nn.Module) -> TranslatedCell | str:
    """The spec description of a bench cell, or why the Julia engine cannot run it."""
    if type(f) is _MLPCell:
        return _mlp(f)
    if type(f) is _ConvCell:
        return _conv(f)
    if "multiscale" in type(f).__module__ or "MultiScale" in type(f).__name__:
        return "multiscale DEQs are not in the spec language (no multi-resolution branches or fusion)"
    return f"the cell {type(f).__name__} has no description in the spec language"


def route_methods(ctx: BenchContext, nets: dict[str, Any]) -> dict[str, Any]:
    """:func:`pydeq.bench.routing.route` with the bench's cells: with ``--backend julia`` every DEQ method whose
    model the spec language can express runs on the Julia engine; a no-op otherwise."""
    return route(ctx, nets, translate_cell)
