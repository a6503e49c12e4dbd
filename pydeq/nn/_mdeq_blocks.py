"""Building blocks of a multiscale DEQ (Bai, Koltun & Kolter 2020): the packed layout, residual blocks,
fusion and the multiscale map ``f(z, x)`` that acts on one flat state.

Every normalisation is ``GroupNorm``: it normalises each sample on its own, so ``f`` maps sample ``b`` of
the batch to sample ``b`` of the output and nothing else. ``BatchNorm`` would couple the samples: the
equilibrium of one image would depend on the other images in its batch, per-sample convergence
(samples stop at different steps) would change the statistics the others see mid-solve, and under
data-parallel training every replica would solve a different fixed-point problem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .dropout import VariationalDropout, reset_dropout

__all__ = ["BranchLayout", "ResidualBlock", "Fusion", "MultiScaleMap", "Stem",
           "BranchPredictor"]


@dataclass(frozen=True)
class BranchLayout:
    """Shapes of the branches and how they sit in one flat state ``(batch, numel)``.

    Branch ``i`` has shape ``(C_i, H / 2**i, W / 2**i)``; the packed state is the branches flattened and
    concatenated in order (branch 0, the highest resolution, first).

    Attributes:
        shapes: per-branch ``(channels, height, width)``.
    """

    shapes: tuple[tuple[int, int, int], ...]

    @classmethod
    def for_image(cls, channels: Sequence[int], image_size: tuple[int, int]) -> BranchLayout:
        """Layout for ``len(channels)`` branches of ``channels[i]`` channels on ``image_size = (H, W)`` images."""
        height, width = image_size
        factor = 2 ** (len(channels) - 1)
        if height % factor or width % factor:
            raise ValueError(
                f"image_size={tuple(image_size)} is not divisible by 2**(branches - 1) = {factor} for "
                f"{len(channels)} branches: each branch halves the previous one's resolution. Pad or resize the "
                f"images to a multiple of {factor}, or use fewer branches."
            )
        return cls(tuple((c, height >> i, width >> i) for i, c in enumerate(channels)))

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of entries of each branch per sample."""
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def numel(self) -> int:
        """Entries per sample of the packed state."""
        return sum(self.sizes)

    def pack(self, branches: Sequence[Tensor]) -> Tensor:
        """``[(batch, C_i, H_i, W_i)] -> (batch, numel)``."""
        if len(branches) != len(self.shapes):
            raise ValueError(f"expected {len(self.shapes)} branch tensors; got {len(branches)}.")
        for i, (b, shape) in enumerate(zip(branches, self.shapes, strict=True)):
            if b.dim() != 4 or tuple(b.shape[1:]) != shape:
                raise ValueError(
                    f"branch {i} must have shape (batch, {', '.join(map(str, shape))}); got {tuple(b.shape)}."
                )
        return torch.cat([b.reshape(b.shape[0], -1) for b in branches], dim=1)

    def unpack(self, z: Tensor) -> tuple[Tensor, ...]:
        """``(batch, numel) -> (branch_0, ..., branch_{n-1})`` with branch ``i`` of shape ``(batch, C_i, H_i, W_i)``.

        The branches are views of ``z`` (no copy).
        """
        if z.dim() != 2 or z.shape[1] != self.numel:
            raise ValueError(f"packed state must have shape (batch, {self.numel}); got {tuple(z.shape)}.")
        parts = torch.split(z, self.sizes, dim=1)
        return tuple(p.reshape(z.shape[0], *s) for p, s in zip(parts, self.shapes, strict=True))


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)  # GroupNorm follows: no bias


class ResidualBlock(nn.Module):
    """One branch's block: ``conv-norm-relu-conv-dropout (+ injection)-norm (+ z)-relu-norm``.

    ``expansion`` widens the inner layer: ``conv1`` maps ``channels -> expansion * channels`` and ``conv2`` back
    (MDEQ's ``deq_expand``; the CIFAR-10 "tiny" model of Pal et al. 2022 uses 5).
    """

    def __init__(self, channels: int, groups: int, dropout: float = 0.0, *, expansion: int = 1):
        super().__init__()
        if not isinstance(expansion, int) or isinstance(expansion, bool) or expansion < 1:
            raise ValueError(f"expansion must be an int >= 1; got {expansion!r}.")
        inner = expansion * channels
        self.conv1, self.conv2 = _conv3x3(channels, inner), _conv3x3(inner, channels)
        self.norm1 = nn.GroupNorm(groups, inner)
        self.norm2, self.norm3 = (nn.GroupNorm(groups, channels) for _ in range(2))
        self.dropout = VariationalDropout(dropout)

    def forward(self, z: Tensor, injection: Tensor | None = None) -> Tensor:
        out = self.dropout(self.conv2(torch.relu(self.norm1(self.conv1(z)))))
        if injection is not None:
            out = out + injection
        return self.norm3(torch.relu(self.norm2(out) + z))


def _resample(c_in: int, c_out: int, source: int, target: int, groups: int, up_kernel: int = 1) -> nn.Module:
    """Map branch ``source`` to branch ``target``'s resolution and channels (upwards by a ``up_kernel`` conv)."""
    if target > source:  # down: one strided 3x3 conv per halving; relu between, none after
        layers: list[nn.Module] = []
        for k in range(target - source):
            last = k == target - source - 1
            layers += [_conv3x3(c_in, c_out if last else c_in, stride=2), nn.GroupNorm(groups, c_out if last else c_in)]
            if not last:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)
    return nn.Sequential(nn.Conv2d(c_in, c_out, up_kernel, padding=up_kernel // 2, bias=False),
                         nn.GroupNorm(groups, c_out), nn.Upsample(scale_factor=2 ** (source - target), mode="nearest"))


class Fusion(nn.Module):
    """Multiscale fusion: branch ``i`` receives ``sum_j resample_{j->i}(y_j)``, then relu and GroupNorm.

    Args:
        channels, groups: per-branch channels and GroupNorm groups.
        up_kernel: kernel of the conv on the upward paths (1, MDEQ's; 3 in DeepEquilibriumNetworks.jl's
            experiments, the models of Pal et al. 2022).
        post_conv: apply a 1x1 conv to each fused sum before the relu (``norm(relu(conv1x1(sum)))``), as the
            post-fuse layers of DeepEquilibriumNetworks.jl's experiments.
    """

    def __init__(self, channels: Sequence[int], groups: int, *, up_kernel: int = 1, post_conv: bool = False):
        super().__init__()
        if up_kernel not in (1, 3):
            raise ValueError(f"up_kernel must be 1 or 3; got {up_kernel!r}.")
        n = len(channels)
        self.paths = nn.ModuleList(
            nn.ModuleList(nn.Identity() if i == j else _resample(channels[j], channels[i], j, i, groups, up_kernel)
                          for j in range(n))
            for i in range(n)
        )
        self.post = nn.ModuleList((nn.Conv2d(c, c, 1, bias=False) if post_conv else nn.Identity())
                                  for c in channels)
        self.norms = nn.ModuleList(nn.GroupNorm(groups, c) for c in channels)

    def forward(self, ys: Sequence[Tensor]) -> list[Tensor]:
        out = []
        for paths, post, norm in zip(self.paths, self.post, self.norms, strict=True):
            total = sum(path(y) for path, y in zip(paths, ys, strict=True))
            out.append(norm(torch.relu(post(total))))
        return out


class MultiScaleMap(nn.Module):
    """The multiscale DEQ map on the packed state: ``f(z, x) = pack(fuse(block_i(z_i, x if i == 0)))``.

    Args:
        layout: the branch shapes (:class:`BranchLayout`).
        groups: GroupNorm groups; every branch's channel count must be divisible by it.
        dropout: variational dropout rate inside the blocks (mask fixed between :meth:`reset_dropout` calls).
        expansion: inner width factor of the residual blocks (:class:`ResidualBlock`).
        up_kernel, post_conv: as for :class:`Fusion`.

    Called as ``f(z, x)`` with ``z: (batch, layout.numel)`` and ``x: (batch, C_0, H, W)`` the injection,
    which enters the highest-resolution branch only (Bai, Koltun & Kolter 2020).
    """

    def __init__(self, layout: BranchLayout, groups: int, dropout: float = 0.0, *, expansion: int = 1,
                 up_kernel: int = 1, post_conv: bool = False):
        super().__init__()
        channels = [s[0] for s in layout.shapes]
        self.layout = layout
        self.blocks = nn.ModuleList(ResidualBlock(c, groups, dropout, expansion=expansion) for c in channels)
        self.fusion = Fusion(channels, groups, up_kernel=up_kernel, post_conv=post_conv)

    def reset_dropout(self) -> None:
        """Draw new dropout masks at the next call (the layers call this once per forward pass)."""
        reset_dropout(self)

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        branches = self.layout.unpack(z)
        ys = [block(b, x if i == 0 else None) for i, (block, b) in enumerate(zip(self.blocks, branches, strict=True))]
        return self.layout.pack(self.fusion(ys))


class Stem(nn.Module):
    """Input stem ``conv3x3-norm-relu`` (``convs`` times): images ``(batch, in_channels, H, W)`` -> injection
    ``(batch, C_0, H, W)``. DeepEquilibriumNetworks.jl's CIFAR-10 models use two (``convs=2``)."""

    def __init__(self, in_channels: int, channels: int, groups: int, *, convs: int = 1):
        super().__init__()
        if not isinstance(convs, int) or isinstance(convs, bool) or convs < 1:
            raise ValueError(f"convs must be an int >= 1; got {convs!r}.")
        layers: list[nn.Module] = []
        for k in range(convs):
            layers += [_conv3x3(in_channels if k == 0 else channels, channels), nn.GroupNorm(groups, channels),
                       nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


class BranchPredictor(nn.Module):
    """Skip DEQ initial-state network: injection ``(batch, C_0, H, W)`` to one tensor per branch.

    Branch ``i``: average-pool by ``2**i``, then ``conv3x3-norm-relu-conv3x3``.
    """

    def __init__(self, layout: BranchLayout, groups: int):
        super().__init__()
        c0 = layout.shapes[0][0]
        self.heads = nn.ModuleList(
            nn.Sequential(nn.AvgPool2d(2**i) if i else nn.Identity(), _conv3x3(c0, c), nn.GroupNorm(groups, c),
                          nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))
            for i, (c, _, _) in enumerate(layout.shapes)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        return [head(x) for head in self.heads]
