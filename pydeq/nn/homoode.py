"""HomoODE (Ding et al., NeurIPS 2023) and the augmented neural ODE baseline (Dupont et al., NeurIPS 2019)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int, check_tensor
from .._ode.adjoint import AbstractODEAdjoint
from .._ode.solvers import AbstractODESolver, Dopri5
from .neural_ode import NeuralODE

__all__ = ["HomoODE", "AugmentedNeuralODE"]


class HomoODE(nn.Module):
    r"""Learned homotopy: integrate :math:`dz/d\lambda = g(z, x)` for ``λ ∈ [0, 1]`` and output ``z(1)``.

    Homotopy continuation would follow ``dz/dλ = -J_F^{-1} F(z0)`` to a root of ``F(z) = f(z, x) − z``;
    HomoODE learns the field ``g`` instead, with ``x`` injected as a condition (as in a DEQ) rather than
    carried in the initial state (as in a neural ODE).

    Shared learnable initial point: ``z0`` is the same for every input, ``z0 = z0_net(c)`` for a constant
    ``c``. It is *detached* from the main loss and trained by its own loss, a smooth-L1 distance to the
    detached ``z(1)`` of the last forward, every ``k`` steps; a ``z0`` near the typical equilibrium shortens
    the path and cuts the number of function evaluations. A training loop::

        main_opt = torch.optim.Adam(homo.main_parameters(), lr=1e-3)
        init_opt = torch.optim.Adam(homo.initial_point_parameters(), lr=1e-3)
        for step, (x, y) in enumerate(loader):
            loss = criterion(head(homo(x)), y)
            main_opt.zero_grad(); loss.backward(); main_opt.step()
            if step % k == 0:
                homo.update_initial_point(init_opt)   # smooth-L1(z0, z(1).detach()) on its own optimizer

    Args:
        g: ``nn.Module`` or callable ``g(z, x)`` returning ``(batch, *state_shape)``.
        state_shape: per-sample state shape.
        shared_init: learn the shared ``z0`` (default); ``False`` uses ``z0 = 0``.
        z0_net: module mapping the constant ``(1, init_dim)`` to ``(1, prod(state_shape))``; default a
            two-layer tanh MLP whose last layer starts at zero (so ``z0`` starts at 0).
        init_dim: width of the constant input and of the default ``z0_net``.
        solver: default ``Dopri5(rtol=1e-3, atol=1e-3)`` as in the authors' code.
        adjoint: ``DirectAdjoint()`` (default, back-propagation through the solver as in the paper) or
            ``BacksolveAdjoint()``.
        params: extra tensors the backsolve adjoint must reach when ``g`` is a closure.
        max_steps, on_failure: as for :class:`~pydeq.nn.NeuralODE`.

    ``forward(x, *, return_solution=False)``; ``self.last_solution`` keeps the latest :class:`~pydeq.Solution`.

    Reference: Ding, Cui, Wang & Shi, HomoODE, NeurIPS 2023, arXiv:2310.09583.
    """

    def __init__(
        self,
        g: Callable[[Tensor, Any], Tensor],
        state_shape: Sequence[int],
        *,
        shared_init: bool = True,
        z0_net: nn.Module | None = None,
        init_dim: int = 16,
        solver: AbstractODESolver | None = None,
        adjoint: AbstractODEAdjoint | None = None,
        params: Sequence[Tensor] = (),
        max_steps: int = 10_000,
        on_failure: str = "warn",
    ):
        super().__init__()
        check_int("init_dim", init_dim)
        if not isinstance(shared_init, bool):
            raise TypeError(f"shared_init must be True or False; got {shared_init!r}.")
        self.state_shape = tuple(int(s) for s in state_shape)
        solver = Dopri5(rtol=1e-3, atol=1e-3) if solver is None else solver
        self.ode = NeuralODE(g, t_span=(0.0, 1.0), solver=solver, adjoint=adjoint, state_shape=self.state_shape,
                             params=params, max_steps=max_steps, on_failure=on_failure)
        self.shared_init = shared_init
        self.z0_net: nn.Module | None = None
        if shared_init:
            self.z0_net = _default_z0_net(init_dim, math.prod(self.state_shape)) if z0_net is None else z0_net
            self.register_buffer("const", torch.ones(1, init_dim))
        elif z0_net is not None:
            raise ValueError("z0_net was given but shared_init=False (z0 = 0); drop one of the two.")
        self._last_z1: Tensor | None = None

    @property
    def g(self) -> Callable[[Tensor, Any], Tensor]:
        return self.ode.f

    @property
    def last_solution(self) -> Any:
        return self.ode.last_solution

    def initial_point(self) -> Tensor:
        """The shared ``z0``, ``(1, *state_shape)``, with the graph to ``z0_net`` (zeros if disabled)."""
        if self.z0_net is None:
            return torch.zeros((1, *self.state_shape), device=self._device(), dtype=self._dtype())
        out = self.z0_net(self.const)
        if out.numel() != math.prod(self.state_shape):
            raise ValueError(f"z0_net must return prod(state_shape) = {math.prod(self.state_shape)} values; "
                             f"got shape {tuple(out.shape)}.")
        return out.reshape(1, *self.state_shape)

    def forward(self, x: Tensor, *, return_solution: bool = False) -> Any:
        check_tensor("x", x)
        z0 = self.initial_point().detach().to(x.dtype)  # detached: the main loss never moves z0
        z1, solution = self.ode(x, z0=z0.expand(x.shape[0], *self.state_shape), return_solution=True)
        self._last_z1 = z1.detach()
        return (z1, solution) if return_solution else z1

    def initial_point_loss(self, target: Tensor | None = None) -> Tensor:
        """Smooth-L1 between the shared ``z0`` and ``target`` (default: the detached ``z(1)`` of the last
        forward, ``(batch, *state_shape)``); differentiable in ``z0_net`` only."""
        if self.z0_net is None:
            raise RuntimeError("this HomoODE has shared_init=False (z0 = 0): there is no initial point to train.")
        if target is None:
            if self._last_z1 is None:
                raise RuntimeError("initial_point_loss needs a target: call the model on a batch first.")
            target = self._last_z1
        z0 = self.initial_point()
        return F.smooth_l1_loss(z0.to(target.dtype).expand_as(target), target.detach())

    def update_initial_point(self, optimizer: torch.optim.Optimizer, target: Tensor | None = None) -> float:
        """One step of ``optimizer`` (over :meth:`initial_point_parameters`) on :meth:`initial_point_loss`."""
        loss = self.initial_point_loss(target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def initial_point_parameters(self) -> Iterator[nn.Parameter]:
        return iter(()) if self.z0_net is None else self.z0_net.parameters()

    def main_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter except the initial point's (give these to the main optimizer)."""
        skip = {id(p) for p in self.initial_point_parameters()}
        return (p for p in self.parameters() if id(p) not in skip)

    def _device(self) -> torch.device:
        return next(iter(self.parameters()), torch.zeros(())).device

    def _dtype(self) -> torch.dtype:
        return next(iter(self.parameters()), torch.zeros(())).dtype


def _default_z0_net(width: int, out: int) -> nn.Module:
    net = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, out))
    nn.init.zeros_(net[2].weight)
    nn.init.zeros_(net[2].bias)
    return net


class _Autonomous(nn.Module):
    """``(u, x) -> f(u)``: the augmented neural ODE carries x in its state, not as a condition."""

    def __init__(self, f: Callable[[Tensor], Tensor]):
        super().__init__()
        self.f = f

    def forward(self, u: Tensor, x: Any) -> Tensor:
        return self.f(u)


class AugmentedNeuralODE(nn.Module):
    r"""Augmented neural ODE baseline: :math:`u(0) = [x, 0]`, :math:`\dot u = f(u)`, output ``u(t1)``.

    ``x`` (``(batch, d, ...)``) is padded with ``augment_dim`` zero channels along dim 1; the output keeps
    all ``d + augment_dim`` channels (put a read-out layer after it).

    Args:
        f: ``nn.Module`` or callable ``f(u)`` mapping ``(batch, d + augment_dim, ...)`` to itself.
        augment_dim: number of zero channels appended (>= 0).
        t_span, solver, adjoint, params, max_steps, on_failure: as for :class:`~pydeq.nn.NeuralODE`.

    Reference: Dupont, Doucet & Teh, "Augmented Neural ODEs", NeurIPS 2019.
    """

    def __init__(self, f: Callable[[Tensor], Tensor], augment_dim: int, *, t_span: Sequence[float] = (0.0, 1.0),
                 solver: AbstractODESolver | None = None, adjoint: AbstractODEAdjoint | None = None,
                 params: Sequence[Tensor] = (), max_steps: int = 10_000, on_failure: str = "warn"):
        super().__init__()
        check_int("augment_dim", augment_dim, minimum=0)
        if not callable(f):
            raise TypeError(f"f must be an nn.Module or callable f(u); got {type(f).__name__}.")
        self.augment_dim = augment_dim
        self.ode = NeuralODE(_Autonomous(f), t_span=t_span, solver=solver, adjoint=adjoint, params=params,
                             max_steps=max_steps, on_failure=on_failure)

    @property
    def last_solution(self) -> Any:
        return self.ode.last_solution

    def forward(self, x: Tensor, *, return_solution: bool = False) -> Any:
        check_tensor("x", x)
        if x.dim() < 2:
            raise ValueError(f"x must be (batch, channels, ...); got shape {tuple(x.shape)}.")
        pad = x.new_zeros((x.shape[0], self.augment_dim, *x.shape[2:]))
        return self.ode(x, z0=torch.cat([x, pad], dim=1), return_solution=return_solution)
