"""The block language of model specs: each block makes a torch module and knows its output shape.

A spec is a small tree of these blocks (:class:`Dense`, :class:`Conv2d`, :class:`GroupNorm`, activations,
:class:`Chain`, :class:`Injection`, :class:`Residual`) inside a model spec (:mod:`pydeq.spec.models`). The same
tree is translated to Lux by the Julia bridge (:mod:`pydeq.julia.translate`), so one description gives a torch
module and the identical Lux model.
"""

from __future__ import annotations

import abc
from dataclasses import KW_ONLY, dataclass
from typing import Any

from torch import Tensor, nn

__all__ = ["AbstractBlock", "Dense", "Conv2d", "GroupNorm", "Tanh", "ReLU", "Sigmoid", "Softplus", "Identity", "Chain",
           "Injection", "Residual", "as_pair", "check_f"]


class AbstractBlock(abc.ABC):
    """A building block: makes its torch module and knows its output shape (the Lux translation of each block
    lives with the Julia bridge, :mod:`pydeq.julia.translate`)."""

    @abc.abstractmethod
    def module(self) -> nn.Module:
        """A fresh torch module with PyTorch's default initialisation."""

    @abc.abstractmethod
    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample output shape for per-sample input ``shape`` (torch order)."""

@dataclass(frozen=True)
class Dense(AbstractBlock):
    """Affine map ``W v + b`` (``nn.Linear`` / Lux ``Dense``) on ``(batch, in_features)``."""

    in_features: int
    out_features: int
    _: KW_ONLY
    bias: bool = True

    def module(self) -> nn.Module:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if tuple(shape) != (self.in_features,):
            raise ValueError(
                f"Dense({self.in_features}, ...) needs per-sample shape ({self.in_features},); got {shape}"
            )
        return (self.out_features,)

def as_pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class Conv2d(AbstractBlock):
    """2-D convolution (``nn.Conv2d`` / Lux ``Conv``) on ``(batch, channels, height, width)``."""

    in_channels: int
    out_channels: int
    kernel_size: int | tuple[int, int]
    _: KW_ONLY
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] = 0
    bias: bool = True

    def module(self) -> nn.Module:
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                         padding=self.padding, bias=self.bias)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) != 3 or shape[0] != self.in_channels:
            raise ValueError(f"Conv2d({self.in_channels}, ...) needs per-sample shape ({self.in_channels}, H, W); "
                             f"got {shape}")
        (kh, kw), (sh, sw), (ph, pw) = as_pair(self.kernel_size), as_pair(self.stride), as_pair(self.padding)
        return (self.out_channels, (shape[1] + 2 * ph - kh) // sh + 1, (shape[2] + 2 * pw - kw) // sw + 1)

@dataclass(frozen=True)
class GroupNorm(AbstractBlock):
    """Group normalisation with a per-channel scale and shift (``nn.GroupNorm`` / Lux ``GroupNorm``) on
    ``(batch, channels, ...)``: each sample is normalised over ``channels // groups`` contiguous channels and
    every position, with ``eps`` added to the variance."""

    groups: int
    channels: int
    _: KW_ONLY
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.groups < 1 or self.channels % self.groups:
            raise ValueError(f"GroupNorm needs groups >= 1 dividing channels; got groups={self.groups}, "
                             f"channels={self.channels}. Pick groups among the divisors of {self.channels}.")

    def module(self) -> nn.Module:
        return nn.GroupNorm(self.groups, self.channels, eps=self.eps)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) < 2 or shape[0] != self.channels:
            raise ValueError(f"GroupNorm({self.groups}, {self.channels}) needs per-sample shape ({self.channels}, "
                             f"H, ...); got {shape}")
        return tuple(shape)

class _Activation(AbstractBlock):
    torch_cls: type[nn.Module]

    def module(self) -> nn.Module:
        return self.torch_cls()

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Tanh(_Activation):
    """Elementwise ``tanh``."""

    torch_cls = nn.Tanh


class ReLU(_Activation):
    """Elementwise ``max(v, 0)``."""

    torch_cls = nn.ReLU


class Sigmoid(_Activation):
    """Elementwise logistic function."""

    torch_cls = nn.Sigmoid


class Softplus(_Activation):
    """Elementwise ``log(1 + exp(v))``."""

    torch_cls = nn.Softplus


class Identity(_Activation):
    """No-op (a linear DEQ: ``f(z, x) = W z + U x + b``)."""

    torch_cls = nn.Identity


class _ChainModule(nn.Module):
    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(modules)

    def forward(self, *args: Tensor) -> Tensor:
        out = self.layers[0](*args)
        for layer in self.layers[1:]:
            out = layer(out)
        return out


@dataclass(frozen=True, init=False)
class Chain(AbstractBlock):
    """Blocks applied in order (nested chains are flattened). The first may take ``(z, x)``."""

    layers: tuple[AbstractBlock, ...]

    def __init__(self, *layers: AbstractBlock):
        flat: list[AbstractBlock] = []
        for layer in layers:
            if not isinstance(layer, AbstractBlock):
                raise TypeError(f"Chain takes spec blocks (Dense, Conv2d, Tanh, ...); got {type(layer).__name__}")
            flat.extend(layer.layers if isinstance(layer, Chain) else [layer])
        if not flat:
            raise ValueError("Chain needs at least one block")
        object.__setattr__(self, "layers", tuple(flat))

    def module(self) -> nn.Module:
        return _ChainModule([layer.module() for layer in self.layers])

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        for layer in self.layers:
            shape = layer.out_shape(shape)
        return shape

class _InjectionModule(nn.Module):
    def __init__(self, z: nn.Module, x: nn.Module):
        super().__init__()
        self.z, self.x = z, x

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return self.z(z) + self.x(x)


@dataclass(frozen=True)
class Injection(AbstractBlock):
    """``f(z, x) = z_block(z) + x_block(x)``: the input injection of a DEQ (Lux ``Parallel(+, ...)``)."""

    z: AbstractBlock
    x: AbstractBlock

    def module(self) -> nn.Module:
        return _InjectionModule(self.z.module(), self.x.module())

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.x.out_shape(shape)  # the state's shape is set by the injected input

class _ResidualModule(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return self.block(z, x) + z


@dataclass(frozen=True)
class Residual(AbstractBlock):
    """``f(z, x) = block(z, x) + z``: a residual connection around a block that takes ``(z, x)`` (one that starts
    with an :class:`Injection`); Lux ``SkipConnection(block, (out, (z, x)) -> out + z)``. It must come first in f."""

    block: AbstractBlock

    def __post_init__(self) -> None:
        check_f(self.block, what="Residual's block")

    def module(self) -> nn.Module:
        return _ResidualModule(self.block.module())

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.block.out_shape(shape)


def check_f(f: Any, what: str = "f") -> None:
    """Require a block that takes ``(z, x)``: an Injection, a Residual, or a Chain starting with one."""
    first = f.layers[0] if isinstance(f, Chain) else f
    if not isinstance(first, Injection | Residual):
        raise TypeError(
            f"{what} must be an Injection, a Residual or a Chain that starts with one, so that it takes (z, x); "
            f"got {f!r}. Example: Chain(Injection(z=Dense(8, 8), x=Dense(4, 8)), Tanh())."
        )
