"""The CIFAR-10 "tiny" multiscale DEQ of Pal et al.'s Table 2, on pydeq's multiscale blocks.

The configuration (REFERENCES §1; DeepEquilibriumNetworks.jl ``experiments/cifar10/tiny.yml`` and
``experiments/src/construct.jl``): 2 branches of 24 channels at 32x32 and 16x16, residual blocks with expansion 5
(24 → 120 → 24), fusion by a strided 3x3 conv downwards and a 3x3 conv + nearest upsampling upwards, a 1x1
post-fuse conv per branch, variational dropout 0.2; a two-conv stem; a head of one bottleneck per branch (head
channels 8 / 16, expansion 4), a strided 3x3 conv fusing branch 0 into branch 1, a 1x1 conv to width 200, average
pooling and a linear layer. Skip DEQ's predictor: a residual block (expansion 3) for branch 0 and a strided conv
for branch 1. Conv weights start from N(0, 0.01²) as the reference's. Parameters: 163,546 (Vanilla, Skip Reg,
neural ODE) and 200,122 (Skip), the paper's.

Differences from the reference, all deliberate: GroupNorm (8 groups) where the reference's DEQ map uses BatchNorm
without running statistics (pydeq's multiscale map is per-sample, see :mod:`pydeq.nn.multiscale`; the parameter
count is the same), BatchNorm in the head (outside the solve, as the reference's bottlenecks), and pydeq's
residual wiring (the block's input is added back, MDEQ's; the reference adds the output of its second conv).
"""

from __future__ import annotations

from torch import Tensor, nn

from pydeq.bench.claims._models import Backbone
from pydeq.nn.multiscale import BranchLayout, MultiScaleMap, ResidualBlock, Stem

__all__ = ["TINY", "TinyHead", "TinyPredictor", "count_parameters", "tiny_backbone"]

TINY = {"branches": 2, "channels": 24, "expansion": 5, "head_channels": (8, 16), "final_width": 200,
        "dropout": 0.2, "groups": 8, "image_size": (32, 32)}
"""The tiny configuration (REFERENCES §1)."""


def _bn_relu(c: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(c), nn.ReLU()]


class _Bottleneck(nn.Module):
    """``relu(mapping(conv1x1(x)) + rescale(x))`` to ``4 * hidden`` channels (the reference's head block)."""

    def __init__(self, c_in: int, hidden: int, expansion: int = 4):
        super().__init__()
        out = hidden * expansion
        self.rescale = (nn.Sequential(nn.Conv2d(c_in, out, 1, bias=False), nn.BatchNorm2d(out)) if c_in != out
                        else nn.Identity())
        self.conv = nn.Conv2d(c_in, hidden, 1, bias=False)
        self.mapping = nn.Sequential(*_bn_relu(hidden), nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
                                     *_bn_relu(hidden), nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        return (self.mapping(self.conv(x)) + self.rescale(x)).relu()


class TinyHead(nn.Module):
    """Packed state ``(batch, layout.numel)`` -> logits: bottlenecks, pairwise strided fusion, 1x1 conv, pool."""

    def __init__(self, layout: BranchLayout, head_channels: tuple[int, ...], final_width: int, classes: int = 10):
        super().__init__()
        if len(head_channels) != len(layout.shapes):
            raise ValueError(f"head_channels needs one entry per branch ({len(layout.shapes)}); got {head_channels}.")
        self.layout = layout
        self.increments = nn.ModuleList(_Bottleneck(s[0], h) for s, h in zip(layout.shapes, head_channels,
                                                                               strict=True))
        self.downs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(4 * a, 4 * b, 3, stride=2, padding=1), *_bn_relu(4 * b))
            for a, b in zip(head_channels, head_channels[1:], strict=False))
        self.final = nn.Sequential(nn.Conv2d(4 * head_channels[-1], final_width, 1), *_bn_relu(final_width),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(final_width, classes))

    def forward(self, z: Tensor) -> Tensor:
        ys = [inc(b) for inc, b in zip(self.increments, self.layout.unpack(z), strict=True)]
        y = ys[0]
        for down, nxt in zip(self.downs, ys[1:], strict=True):
            y = down(y) + nxt
        return self.final(y)


class TinyPredictor(nn.Module):
    """Skip DEQ initial state from the injection ``(batch, C_0, H, W)``: a residual block (expansion 3) for branch
    0, ``i`` strided conv-norm-relu steps for branch ``i``; returns the packed state."""

    def __init__(self, layout: BranchLayout, groups: int):
        super().__init__()
        c0 = layout.shapes[0][0]
        self.layout = layout
        self.block = ResidualBlock(c0, groups, expansion=3)
        self.downs = nn.ModuleList(
            nn.Sequential(*[m for k in range(i) for m in (
                nn.Conv2d(c0, c if k == i - 1 else c0, 3, stride=2, padding=1, bias=False),
                nn.GroupNorm(groups, c if k == i - 1 else c0), nn.ReLU())])
            for i, (c, _, _) in enumerate(layout.shapes) if i)

    def forward(self, x: Tensor) -> Tensor:
        return self.layout.pack([self.block(x), *(down(x) for down in self.downs)])


class _Injection(nn.Module):
    """The stem, drawing the multiscale map's new dropout masks first: one mask per forward pass."""

    def __init__(self, stem: nn.Module, f: MultiScaleMap):
        super().__init__()
        self.stem = stem
        self._f = [f]  # a plain reference: f belongs to the core, not to the encoder

    def forward(self, images: Tensor) -> Tensor:
        self._f[0].reset_dropout()
        return self.stem(images)


def _reference_init(module: nn.Module, std: float = 0.01) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, std)


def tiny_backbone(*, channels: int = 24, dropout: float = 0.2) -> Backbone:
    """The tiny model's parts (``channels``/``dropout`` only shrink it for tests)."""
    cfg = TINY
    layout = BranchLayout.for_image([channels] * cfg["branches"], cfg["image_size"])
    groups = cfg["groups"] if channels % cfg["groups"] == 0 else 1
    f = MultiScaleMap(layout, groups, dropout, expansion=cfg["expansion"], up_kernel=3, post_conv=True)
    stem = Stem(3, channels, groups, convs=2)
    head = TinyHead(layout, cfg["head_channels"], cfg["final_width"])
    init = TinyPredictor(layout, groups)
    for part in (stem, f, head, init):
        _reference_init(part)
    return Backbone(encoder=_Injection(stem, f), f=f, head=head, init=init, state_shape=(layout.numel,))


def count_parameters(backbone: Backbone, *, skip: bool) -> int:
    """Trainable parameters of the model (the predictor counted only for the Skip DEQ)."""
    parts = [backbone.encoder, backbone.f, backbone.head, *([backbone.init] if skip else [])]
    return sum(p.numel() for part in parts for p in part.parameters())
