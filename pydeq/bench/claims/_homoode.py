"""The HomoODE claim's five models (:mod:`pydeq.bench.claims.homoode`), sized to a matched parameter budget.

HomoODE with and without the shared learnable initial point, a DEQ, a neural ODE and an augmented neural ODE on
flattened 14x14 MNIST, each a :class:`Classifier`: a body returning its features and NFE, and a linear read-out to
10 classes. :func:`build` makes one at a width, :func:`matched_width` finds the width whose parameter count is
closest to a budget.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import pydeq
from pydeq.bench.claims._models import SpectralTanhCell

__all__ = ["AUGMENT", "D_IN", "HIDDEN", "INIT_DIM", "RHO", "STATE", "TOL", "Classifier", "build", "matched_width",
           "parameter_count"]

D_IN, STATE, HIDDEN, AUGMENT, INIT_DIM = 196, 32, 64, 20, 16
TOL, RHO = 1e-3, 0.9


class _CondMLP(nn.Module):
    """``g(z, x) = L2 tanh(L1 [z, x])``: x is a condition at every λ."""

    def __init__(self, d: int, d_in: int, h: int):
        super().__init__()
        self.l1, self.l2 = nn.Linear(d + d_in, h), nn.Linear(h, d)

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return self.l2(torch.tanh(self.l1(torch.cat([z, x], 1))))


class _FieldMLP(nn.Module):
    """``f(u) = L2 tanh(L1 u)``; called ``f(u, x)`` by NeuralODE and ignores x (x lives in the state)."""

    def __init__(self, d: int, h: int):
        super().__init__()
        self.l1, self.l2 = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, u: Tensor, x: Any = None) -> Tensor:
        return self.l2(torch.tanh(self.l1(u)))


class Classifier(nn.Module):
    """A body returning ``(features, nfe)`` and a linear head."""

    def __init__(self, kind: str, body: nn.Module, features: int):
        super().__init__()
        self.kind, self.body, self.head = kind, body, nn.Linear(features, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, int]:
        if self.kind == "deq":
            f, inj = self.body.closure(x)
            solver = pydeq.Anderson(rtol=TOL, atol=0.0, max_steps=50)
            adjoint = pydeq.ImplicitAdjoint(linear_solver=pydeq.GMRES(rtol=TOL, atol=0.0))
            sol = pydeq.fixed_point(f, inj, torch.zeros_like(inj), solver=solver, adjoint=adjoint, on_failure="return")
        else:
            _, sol = self.body(x, return_solution=True)
        return self.head(sol.z), sol.nfe


def _ode_solver() -> pydeq.Dopri5:
    return pydeq.Dopri5(rtol=TOL, atol=TOL)


def build(kind: str, width: int) -> Classifier:
    """``width`` is the hidden width of the field (the state size for the DEQ)."""
    if kind == "deq":
        return Classifier(kind, SpectralTanhCell(D_IN, width, rho=RHO), width)
    if kind in ("homoode", "homoode-z0=0"):
        body = pydeq.HomoODE(_CondMLP(STATE, D_IN, width), (STATE,), shared_init=kind == "homoode",
                             init_dim=INIT_DIM, solver=_ode_solver(), on_failure="return")
        return Classifier(kind, body, STATE)
    if kind == "node":
        return Classifier(kind, pydeq.NeuralODE(_FieldMLP(D_IN, width), solver=_ode_solver(), on_failure="return"),
                          D_IN)
    if kind == "anode":
        body = pydeq.AugmentedNeuralODE(_FieldMLP(D_IN + AUGMENT, width), AUGMENT, solver=_ode_solver(),
                                        on_failure="return")
        return Classifier(kind, body, D_IN + AUGMENT)
    raise ValueError(f"unknown model kind {kind!r}; choose deq, homoode, homoode-z0=0, node or anode.")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_width(kind: str, budget: int, lo: int = 1, hi: int = 4096) -> int:
    """The width whose model's parameter count is closest to ``budget`` (counts grow with width: bisect)."""
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if parameter_count(build(kind, mid)) < budget else (lo, mid)
    return min((max(lo - 1, 1), lo), key=lambda w: abs(parameter_count(build(kind, w)) - budget))
