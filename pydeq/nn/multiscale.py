"""Multiscale DEQs (Bai, Koltun & Kolter 2020): several resolution branches solved jointly as ONE state.

The branches ``(batch, C_i, H / 2**i, W / 2**i)`` are packed into one flat ``(batch, N)`` state
(:class:`BranchLayout`), so every pydeq root finder, ``SteadyState`` solver, adjoint and ODE integrator
works on it unchanged. The layers return the unpacked branches; the packed state is
``layer.last_solution.z`` (also returned by ``forward(images, return_solution=True)``), and
``layer.layout.unpack`` / ``layer.layout.pack`` convert between the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._adjoint import AbstractAdjoint
from .._ode.adjoint import AbstractODEAdjoint
from .._ode.solvers import AbstractODESolver
from .._root import AbstractRootFinder
from .._solution import Solution
from ._mdeq_blocks import BranchLayout, BranchPredictor, MultiScaleMap, ResidualBlock, Stem
from .deq import DEQ, SkipDEQ, SkipRegDEQ
from .neural_ode import DEQVectorField, NeuralODE

__all__ = ["BranchLayout", "BranchPredictor", "MultiScaleMap", "ResidualBlock", "Stem", "MultiScaleDEQ",
           "MultiScaleSkipDEQ", "MultiScaleSkipRegDEQ", "MultiScaleNeuralODE", "MultiScaleClassifier"]


def _channel_list(branches: int, channels: int | Sequence[int]) -> list[int]:
    if not isinstance(branches, int) or isinstance(branches, bool) or branches < 1:
        raise ValueError(f"branches must be an int >= 1; got {branches!r}.")
    if isinstance(channels, int) and not isinstance(channels, bool):
        channels = [channels] * branches
    channels = list(channels)
    if len(channels) != branches:
        raise ValueError(
            f"channels has {len(channels)} entries but branches={branches}: give one channel count per branch, "
            f"or a single int for all of them."
        )
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in channels):
        raise ValueError(f"channels must be positive ints; got {channels}.")
    return channels


class _MultiScale(nn.Module):
    """Stem, multiscale map and layout shared by the multiscale layers; subclasses set ``self._layer``."""

    def __init__(self, in_channels: int, image_size: tuple[int, int], branches: int,
                 channels: int | Sequence[int], groups: int, dropout: float):
        super().__init__()
        chans = _channel_list(branches, channels)
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int; got {in_channels!r}.")
        if len(tuple(image_size)) != 2 or not all(isinstance(s, int) and s >= 1 for s in image_size):
            raise ValueError(f"image_size must be (height, width) of positive ints; got {image_size!r}.")
        if not isinstance(groups, int) or groups < 1 or any(c % groups for c in chans):
            raise ValueError(
                f"every branch's channel count must be divisible by groups={groups!r} (GroupNorm); got "
                f"channels={chans}. Choose groups dividing all of them (e.g. 1, 2 or 4)."
            )
        self.in_channels, self.image_size = in_channels, (int(image_size[0]), int(image_size[1]))
        self.layout = BranchLayout.for_image(chans, self.image_size)
        self.stem = Stem(in_channels, chans[0], groups)
        self.f = MultiScaleMap(self.layout, groups, dropout)

    def inject(self, images: Tensor) -> Tensor:
        """Check ``images: (batch, in_channels, H, W)`` and return the injection ``(batch, C_0, H, W)``."""
        if not isinstance(images, Tensor) or images.dim() != 4:
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a (batch, channels, height, width) tensor; got {got}.")
        if images.shape[1] != self.in_channels:
            raise ValueError(f"images have {images.shape[1]} channels but the layer was built with "
                             f"in_channels={self.in_channels}.")
        if tuple(images.shape[2:]) != self.image_size:
            raise ValueError(f"images are {tuple(images.shape[2:])} (height, width) but the layer was built for "
                             f"image_size={self.image_size}; the branch shapes depend on it.")
        return self.stem(images)

    def forward(self, images: Tensor, z0: Tensor | Sequence[Tensor] | None = None, *,
                return_solution: bool = False) -> tuple[Tensor, ...] | tuple[Any, ...]:
        """``images: (batch, in_channels, H, W)`` -> the branches ``(batch, C_i, H / 2**i, W / 2**i)``.

        ``z0`` optionally overrides the initial state (a warm start): the packed ``(batch, layout.numel)``
        state or one tensor per branch. With ``return_solution=True`` returns ``(branches, solution)``;
        ``solution.z`` is the packed state.
        """
        x = self.inject(images)
        if z0 is not None and not isinstance(z0, Tensor):
            z0 = self.layout.pack(z0)
        self.f.reset_dropout()  # one dropout mask per forward pass: f stays one map during the solve
        z, solution = self._layer(x, z0, return_solution=True)
        branches = self.layout.unpack(z)
        return (branches, solution) if return_solution else branches

    @property
    def last_solution(self) -> Solution | None:
        """The latest :class:`~pydeq.Solution`; its ``z`` is the packed ``(batch, layout.numel)`` state."""
        return self._layer.last_solution


class MultiScaleDEQ(_MultiScale):
    """Multiscale DEQ: all branches' equilibrium ``z* = f(z*, x)`` solved jointly (Bai, Koltun & Kolter 2020).

    ``x`` is the stem's output ``(batch, C_0, H, W)``. ``f`` applies a residual block per branch (``x`` enters
    the highest resolution only), then fuses the branches (strided 3x3 convs downwards, 1x1 conv + nearest
    upsampling upwards, summed per target branch, then relu and GroupNorm).

    Args:
        in_channels: channels of the input images.
        image_size: ``(height, width)`` of the images; both divisible by ``2**(branches - 1)``.
        branches: number of resolutions (branch ``i`` has ``1 / 2**i`` of the input's height and width).
        channels: channels per branch, one int for all or one per branch. CIFAR "tiny": 2 branches of 24.
        groups: GroupNorm groups; must divide every branch's channels. GroupNorm, not BatchNorm, so that no
            sample affects another's equilibrium (per-sample convergence, data-parallel training).
        dropout: variational dropout rate in the residual blocks; one mask per forward pass.
        solver, adjoint, eval_solver, on_failure, jacobian_weight: as for :class:`~pydeq.DEQ`.

    ``forward(images)`` returns the tuple of branches ``(batch, C_i, H / 2**i, W / 2**i)``.

    ``self.deq`` is the :class:`~pydeq.DEQ` on the packed state (``skip_loss``, ``jacobian_loss``,
    ``pretraining`` live there).
    """

    def __init__(self, in_channels: int, image_size: tuple[int, int], *, branches: int = 2,
                 channels: int | Sequence[int] = 24, groups: int = 4, dropout: float = 0.0,
                 solver: AbstractRootFinder | None = None, adjoint: AbstractAdjoint | None = None,
                 eval_solver: AbstractRootFinder | None = None, on_failure: str = "warn",
                 jacobian_weight: float = 0.0):
        super().__init__(in_channels, image_size, branches, channels, groups, dropout)
        self.deq = DEQ(self.f, solver=solver, adjoint=adjoint, state_shape=(self.layout.numel,),
                       eval_solver=eval_solver, on_failure=on_failure, jacobian_weight=jacobian_weight)
        self._layer = self.deq


class _PackedPredictor(nn.Module):
    """``x -> pack(predictor(x))`` so a per-branch predictor serves as the DEQ's ``init``."""

    def __init__(self, predictor: nn.Module, layout: BranchLayout):
        super().__init__()
        self.predictor, self.layout = predictor, layout

    def forward(self, x: Tensor) -> Tensor:
        return self.layout.pack(self.predictor(x))


class MultiScaleSkipDEQ(_MultiScale):
    """Multiscale Skip DEQ (Pal et al. 2022): a predictor network gives the initial state of every branch.

    Train with ``loss + w * layer.skip_loss()`` (``w = 0.01`` on CIFAR in the paper) so the predictor learns
    to land near ``z*``; ``skip_weight`` feeds :meth:`aux_loss`.

    Args:
        in_channels, image_size, branches, channels, groups, dropout: as for :class:`MultiScaleDEQ`.
        predictor: module mapping the injection ``(batch, C_0, H, W)`` to one tensor per branch; default a
            small conv net per branch (average-pool, conv3x3-norm-relu-conv3x3).
        solver, adjoint, eval_solver, on_failure, skip_weight, jacobian_weight: as for :class:`~pydeq.DEQ`.
    """

    def __init__(self, in_channels: int, image_size: tuple[int, int], *, branches: int = 2,
                 channels: int | Sequence[int] = 24, groups: int = 4, dropout: float = 0.0,
                 predictor: nn.Module | None = None, solver: AbstractRootFinder | None = None,
                 adjoint: AbstractAdjoint | None = None, eval_solver: AbstractRootFinder | None = None,
                 on_failure: str = "warn", skip_weight: float = 0.0, jacobian_weight: float = 0.0):
        super().__init__(in_channels, image_size, branches, channels, groups, dropout)
        if predictor is not None and not isinstance(predictor, nn.Module):
            raise TypeError(f"predictor must be an nn.Module returning one tensor per branch; got "
                            f"{type(predictor).__name__}.")
        predictor = BranchPredictor(self.layout, groups) if predictor is None else predictor
        self.deq = SkipDEQ(self.f, _PackedPredictor(predictor, self.layout), solver=solver, adjoint=adjoint,
                           state_shape=(self.layout.numel,), eval_solver=eval_solver, on_failure=on_failure,
                           skip_weight=skip_weight, jacobian_weight=jacobian_weight)
        self._layer = self.deq

    @property
    def predictor(self) -> nn.Module:
        """The initial-state network (returns one tensor per branch)."""
        return self.deq.init.predictor

    def skip_loss(self) -> Tensor:
        """``mean |z0 - z*|`` over the packed state of the last call."""
        return self.deq.skip_loss()

    def aux_loss(self) -> Tensor:
        """``skip_weight * skip_loss() + jacobian_weight * jacobian_loss()`` of the last call."""
        return self.deq.aux_loss()


class MultiScaleSkipRegDEQ(_MultiScale):
    """Multiscale Skip Reg DEQ (Pal et al. 2022): initial state ``f(0, x)``, no extra network.

    Args:
        in_channels, image_size, branches, channels, groups, dropout: as for :class:`MultiScaleDEQ`.
        solver, adjoint, eval_solver, on_failure, skip_weight, jacobian_weight: as for :class:`~pydeq.DEQ`.
    """

    def __init__(self, in_channels: int, image_size: tuple[int, int], *, branches: int = 2,
                 channels: int | Sequence[int] = 24, groups: int = 4, dropout: float = 0.0,
                 solver: AbstractRootFinder | None = None, adjoint: AbstractAdjoint | None = None,
                 eval_solver: AbstractRootFinder | None = None, on_failure: str = "warn",
                 skip_weight: float = 0.0, jacobian_weight: float = 0.0):
        super().__init__(in_channels, image_size, branches, channels, groups, dropout)
        self.deq = SkipRegDEQ(self.f, solver=solver, adjoint=adjoint, state_shape=(self.layout.numel,),
                              eval_solver=eval_solver, on_failure=on_failure, skip_weight=skip_weight,
                              jacobian_weight=jacobian_weight)
        self._layer = self.deq

    def skip_loss(self) -> Tensor:
        """``mean |f(0, x) - z*|`` over the packed state of the last call."""
        return self.deq.skip_loss()

    def aux_loss(self) -> Tensor:
        """``skip_weight * skip_loss() + jacobian_weight * jacobian_loss()`` of the last call."""
        return self.deq.aux_loss()


class MultiScaleNeuralODE(_MultiScale):
    """Multiscale neural ODE: ``du/dt = f(u, x) - u`` with the multiscale ``f``, ``u(0) = 0``, output ``u(t1)``.

    The finite-horizon baseline of DeepEquilibriumNetworks.jl's ``MultiScaleNeuralODE`` (Pal et al. 2022):
    the same ``f`` as :class:`MultiScaleDEQ`, integrated over ``t_span`` instead of solved to equilibrium.

    Args:
        in_channels, image_size, branches, channels, groups, dropout: as for :class:`MultiScaleDEQ`.
        t_span: ``(t0, t1)``, default ``(0, 1)``.
        solver: ODE method; default ``Tsit5()`` (see :class:`~pydeq.NeuralODE`).
        adjoint: ``DirectAdjoint()`` (default, back-propagation through the solver) or ``BacksolveAdjoint()``.
        max_steps, on_failure: as for :class:`~pydeq.NeuralODE`.

    ``self.node`` is the :class:`~pydeq.NeuralODE` on the packed state.
    """

    def __init__(self, in_channels: int, image_size: tuple[int, int], *, branches: int = 2,
                 channels: int | Sequence[int] = 24, groups: int = 4, dropout: float = 0.0,
                 t_span: Sequence[float] = (0.0, 1.0), solver: AbstractODESolver | None = None,
                 adjoint: AbstractODEAdjoint | None = None, max_steps: int = 10_000, on_failure: str = "warn"):
        super().__init__(in_channels, image_size, branches, channels, groups, dropout)
        self.node = NeuralODE(DEQVectorField(self.f), t_span=t_span, solver=solver, adjoint=adjoint,
                              state_shape=(self.layout.numel,), max_steps=max_steps, on_failure=on_failure)
        self._layer = self.node


class MultiScaleClassifier(nn.Module):
    """Classification head on a multiscale layer: per-branch global average pool, concatenate, linear.

    Args:
        backbone: a multiscale layer (:class:`MultiScaleDEQ`, ...), reachable as ``self.backbone``.
        num_classes: output logits.

    ``forward(images) -> (batch, num_classes)``.
    """

    def __init__(self, backbone: _MultiScale, num_classes: int):
        super().__init__()
        if not isinstance(backbone, _MultiScale):
            raise TypeError(f"backbone must be a multiscale layer (MultiScaleDEQ, ...); got {type(backbone).__name__}.")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int; got {num_classes!r}.")
        self.backbone = backbone
        self.linear = nn.Linear(sum(s[0] for s in backbone.layout.shapes), num_classes)

    def forward(self, images: Tensor) -> Tensor:
        branches = self.backbone(images)
        pooled = [b.mean(dim=(2, 3)) for b in branches]
        return self.linear(torch.cat(pooled, dim=1))
