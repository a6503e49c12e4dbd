"""Model builders for the continuous-DEQ claims: one ``f`` per model, wrapped by every method alike.

A :class:`Backbone` holds what all methods share: the encoder (images -> injection ``x``), the cell ``f(z, x)``,
the state shape, the head (state -> logits) and the Skip DEQ initial-state network. :func:`build` deep-copies
it (so every method starts from the same weights) and puts one *core* between encoder and head: a pydeq layer
(``DEQ``, ``SkipDEQ``, ``SkipRegDEQ``, ``NeuralODE``) or a peer (torchdiffeq ``odeint``/``odeint_adjoint``,
TorchDEQ ``get_deq``) on the same ``f``. Calls of ``f`` are counted with a forward hook, so the NFE of pydeq and
of the peers are counted the same way. :func:`train_nets` trains such nets side by side.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pydeq.bench.claim import BenchContext
from pydeq.bench.claims._training import Run, Stats, Trainee, accuracy, train_lockstep

__all__ = ["Backbone", "Net", "SpectralTanhCell", "TorchDEQCore", "TorchdiffeqCore", "build", "conv_backbone",
           "mlp_backbone", "multiscale_backbone", "train_nets"]


@dataclass
class Backbone:
    """The shared parts of one model: ``head(core(encoder(images)))`` with ``core`` solving for ``f``."""

    encoder: nn.Module
    f: nn.Module
    head: nn.Module
    init: nn.Module
    state_shape: tuple[int, ...]


class _MLPCell(nn.Module):
    """``f(z, x) = tanh(W z + x)`` with ``||W||_2 = 0.5`` at initialisation (no constraint while training)."""

    def __init__(self, width: int):
        super().__init__()
        self.W = nn.Linear(width, width, bias=False)
        with torch.no_grad():
            self.W.weight.mul_(0.5 / torch.linalg.matrix_norm(self.W.weight, 2))

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(self.W(z) + x)


def mlp_backbone(width: int) -> Backbone:
    """Dense DEQ on 28x28 images: ``x = U vec(image) + b``, ``f(z, x) = tanh(W z + x)``, linear head."""
    return Backbone(encoder=nn.Sequential(nn.Flatten(), nn.Linear(784, width)), f=_MLPCell(width),
                    head=nn.Linear(width, 10), init=nn.Sequential(nn.Linear(width, width), nn.Tanh()),
                    state_shape=(width,))


class SpectralTanhCell(nn.Module):
    """``f(z, inj) = tanh(W z + inj)`` with ``W = rho V / ||V||_2`` (spectral norm ``rho``, a contraction for
    ``rho < 1``) and the injection ``inj = U x + b``: the dense DEQ of the efficient and HomoODE claims.

    ``U, b`` start as ``nn.Linear``'s, then ``V`` as ``randn(d, d) / sqrt(d)`` drawn from ``generator`` (the global
    generator if ``None``).
    """

    def __init__(self, d_in: int, d: int, *, rho: float, generator: torch.Generator | None = None):
        super().__init__()
        self.rho = rho
        self.inj = nn.Linear(d_in, d)
        self.V = nn.Parameter(torch.randn(d, d, generator=generator) / d**0.5)

    def closure(self, x: Tensor) -> tuple[Callable[[Tensor, Tensor], Tensor], Tensor]:
        """The map ``f(z, inj)`` and this batch's ``inj``; ``W`` is computed here, once a forward, not per step."""
        W = self.rho * self.V / torch.linalg.matrix_norm(self.V, 2)
        return (lambda z, inj: torch.tanh(z @ W.T + inj)), self.inj(x)


class _ConvCell(nn.Module):
    """Residual conv cell ``f(z, x) = GN(relu(z + GN(conv(relu(GN(conv(z))))) + x))`` (MDEQ's block, one branch)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm1, self.norm2, self.norm3 = (nn.GroupNorm(groups, channels) for _ in range(3))

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        out = self.norm2(self.conv2(torch.relu(self.norm1(self.conv1(z)))) + x)
        return self.norm3(torch.relu(out + z))


def _conv_block(c_in: int, c_out: int, groups: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.GroupNorm(groups, c_out))


def conv_backbone(channels: int, groups: int = 4) -> Backbone:
    """Small conv DEQ on 28x28 images: a stride-2 stem to ``(channels, 14, 14)``, one residual cell, pooled head."""
    return Backbone(encoder=_conv_block(1, channels, groups, stride=2), f=_ConvCell(channels, groups),
                    head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)),
                    init=nn.Sequential(_conv_block(channels, channels, groups), nn.ReLU()),
                    state_shape=(channels, 14, 14))


class _MultiScaleHead(nn.Module):
    """Unpack the branches, average-pool each, concatenate, linear (as ``MultiScaleClassifier``)."""

    def __init__(self, layout: Any, classes: int = 10):
        super().__init__()
        self.layout = layout
        self.linear = nn.Linear(sum(s[0] for s in layout.shapes), classes)

    def forward(self, z: Tensor) -> Tensor:
        return self.linear(torch.cat([b.mean(dim=(2, 3)) for b in self.layout.unpack(z)], dim=1))


def multiscale_backbone(channels: int, branches: int = 2, groups: int = 4) -> Backbone:
    """Tiny multiscale DEQ on 32x32 RGB (Bai, Koltun & Kolter 2020): pydeq's ``MultiScaleSkipDEQ`` parts.

    Its stem, multiscale map and branch predictor are taken from one ``MultiScaleSkipDEQ`` so the cell is the
    library's; the packed state is ``(layout.numel,)``.
    """
    from pydeq.nn.multiscale import MultiScaleSkipDEQ

    ms = MultiScaleSkipDEQ(3, (32, 32), branches=branches, channels=channels, groups=groups)
    return Backbone(encoder=ms.stem, f=ms.f, head=_MultiScaleHead(ms.layout), init=ms.deq.init,
                    state_shape=(ms.layout.numel,))


class TorchdiffeqCore(nn.Module):
    """torchdiffeq 0.2.5 ``odeint`` (or ``odeint_adjoint``) of ``f(u, x) - u`` over [0, 1] from ``u = 0``."""

    def __init__(self, f: nn.Module, state_shape: tuple[int, ...], *, rtol: float, atol: float, adjoint: bool):
        super().__init__()
        from pydeq import DEQVectorField

        self.field, self.state_shape = DEQVectorField(f), state_shape
        self.rtol, self.atol, self.adjoint = rtol, atol, adjoint

    def forward(self, x: Tensor) -> Tensor:
        import torchdiffeq

        field = self.field
        u0 = x.new_zeros((x.shape[0], *self.state_shape))
        t = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
        if not self.adjoint:
            return torchdiffeq.odeint(lambda t, u: field(u, x), u0, t, rtol=self.rtol, atol=self.atol,
                                      method="dopri5")[-1]
        # x is a graph tensor, not a parameter: name it in adjoint_params or the encoder gets no gradient
        params = (*field.parameters(), *([x] if x.requires_grad else []))
        return torchdiffeq.odeint_adjoint(_Closure(field, x), u0, t, rtol=self.rtol, atol=self.atol,
                                          method="dopri5", adjoint_params=params)[-1]


class _Closure(nn.Module):
    def __init__(self, field: nn.Module, x: Tensor):
        super().__init__()
        self.field, self.x = field, x

    def forward(self, t: Tensor, u: Tensor) -> Tensor:
        return self.field(u, self.x)


class TorchDEQCore(nn.Module):
    """TorchDEQ 0.1.0 ``get_deq`` on the same ``f``: Broyden forward, IFT backward with a Broyden solve."""

    def __init__(self, f: nn.Module, state_shape: tuple[int, ...], *, tol: float, max_steps: int, bwd_steps: int):
        super().__init__()
        from torchdeq import get_deq

        self.f, self.state_shape = f, state_shape
        self.deq = get_deq(f_solver="broyden", f_max_iter=max_steps, f_tol=tol, f_stop_mode="rel",
                           b_solver="broyden", b_max_iter=bwd_steps, b_tol=tol, b_stop_mode="rel", ift=True,
                           hook_ift=True)

    def forward(self, x: Tensor) -> Tensor:
        f = self.f
        z_out, _ = self.deq(lambda z: f(z, x), x.new_zeros((x.shape[0], *self.state_shape)))
        return z_out[-1]


class Net(nn.Module):
    """``head(core(encoder(images)))``; ``calls`` counts calls of ``f`` (forward hook)."""

    def __init__(self, backbone: Backbone, core: nn.Module, *, skip_weight: float = 0.0):
        super().__init__()
        self.encoder, self.core, self.head = backbone.encoder, core, backbone.head
        self.skip_weight = skip_weight
        self.calls = 0
        backbone.f.register_forward_hook(self._count)

    def _count(self, module: nn.Module, args: Any, out: Any) -> None:
        self.calls += 1

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.core(self.encoder(images)))

    def aux_loss(self) -> Tensor | None:
        """``skip_weight * skip_loss()`` of a Skip / Skip Reg core, else ``None``."""
        if not self.skip_weight:
            return None
        return self.skip_weight * self.core.skip_loss()

    def backward_vjps(self) -> float:
        """VJPs of the last backward pass as pydeq's ``Solution.backward.nfe`` records them (NaN for peers)."""
        sol = getattr(self.core, "last_solution", None)
        return float(sol.backward.nfe) if sol is not None else float("nan")

    def loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Stats]:
        """Cross-entropy plus :meth:`aux_loss`, and the step's numbers once it is done: the cross-entropy
        (``loss``), calls of ``f`` in the forward (``nfe``) and in the backward (``nfe_backward``: calls made by
        ``backward()`` plus pydeq's backward VJPs; TorchDEQ's are not counted), and the fraction of samples that
        missed the tolerance (``unconverged``; ``None`` for peers, which keep no solution)."""
        calls = self.calls
        ce = nn.functional.cross_entropy(self(images), labels)
        aux = self.aux_loss()
        forward = self.calls - calls

        def stats() -> dict[str, Any]:
            vjps, sol = self.backward_vjps(), getattr(self.core, "last_solution", None)
            return {"loss": float(ce.detach()), "nfe": forward,
                    "nfe_backward": (self.calls - calls - forward) + (0.0 if math.isnan(vjps) else vjps),
                    "unconverged": float((~sol.converged).float().mean()) if sol is not None else None}

        return (ce if aux is None else ce + aux), stats

    def evaluate(self, images: Tensor, labels: Tensor, *, batch: int) -> dict[str, float]:
        """Accuracy on ``images`` in eval mode, ``batch`` at a time, and the mean calls of ``f`` per batch."""
        self.eval()
        calls = self.calls
        hits = accuracy(self, images, labels, batch=batch)
        self.train()
        return {"accuracy": hits, "nfe": (self.calls - calls) / max(math.ceil(len(images) / batch), 1)}


def build(backbone: Backbone, make_core: Callable[[Backbone], nn.Module], *, skip_weight: float = 0.0) -> Net:
    """A :class:`Net` on a deep copy of ``backbone`` (same initial weights for every method)."""
    parts = copy.deepcopy(backbone)
    return Net(parts, make_core(parts), skip_weight=skip_weight)


def train_nets(ctx: BenchContext, nets: dict[str, Net], train: tuple[Tensor, Tensor],
               test: tuple[Tensor, Tensor] | None, *, epochs: int, batch: int,
               optimizer: Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer], desc: str) -> Run:
    """Train ``nets`` lock-step (:func:`~pydeq.bench.claims._training.train_lockstep`) on :meth:`Net.loss`, each
    with ``optimizer(parameters)``, measuring :meth:`Net.evaluate` on ``test`` after each epoch (if given).

    The nets run in the mapping's order every step, not rotated: a multiscale ``f`` draws its dropout masks from
    the global generator, so the order decides which net gets which mask.
    """
    if test is not None:
        test = (test[0].to(ctx.device), test[1].to(ctx.device))
    trainees = {k: Trainee(optimizer(n.parameters()), n.loss,
                           None if test is None else lambda n=n: n.evaluate(*test, batch=batch))
                for k, n in nets.items()}
    return train_lockstep(ctx, trainees, train, epochs=epochs, batch=batch, rotate=False, desc=desc)
