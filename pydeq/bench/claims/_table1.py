"""The dense MNIST models of Pal et al.'s Table 1, shared by ``cdeq-table1-depth`` and ``cdeq-table1``.

Six configurations (:data:`CONFIGS`): Vanilla, Skip (an explicit ``tanh(Linear)`` predictor of z0) and Skip Reg
(z0 = f(0, x)), each with and without Jacobian regularisation, on a 784→128 encoder, a cell on ℝ¹²⁸ and a linear
128→10 head, solved by ``SteadyState(Tsit5(rtol=5e-3, atol=5e-3), rtol=5e-3, atol=5e-3, max_steps=50)``
(REFERENCES §1: Tsit5 at abstol = reltol = 5e-3; 50 iterations as the reference script) with implicit gradients.
Two cells: :class:`InjectedCell` ``tanh(W z + b + x)`` (the depth claim's) and :class:`ParallelCell`
``tanh(U z) + tanh(V x)`` with a ``tanh`` encoder — the reference script's model
(DeepEquilibriumNetworks.jl, ``experiments/mnist/mnist_fc.jl``: ``Parallel(+, Dense(128, 128, tanh; bias=false),
Dense(128, 128, tanh; bias=false))`` after ``Dense(784, 128, tanh)``), whose parameter counts are checked against
the paper's 138K / 151K. :class:`DenseModel` holds the three parts with the loss and the test measurements both
claims use.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import pydeq
from pydeq.bench.claims._training import Stats, accuracy

__all__ = ["BATCH", "CONFIGS", "JAC_WEIGHT", "LR", "PAPER_DEPTH", "SKIP_WEIGHT", "TOL", "WIDTH", "DenseModel",
           "InjectedCell", "ParallelCell", "dense_model", "table1_solver"]

TOL, WIDTH, BATCH, LR, SKIP_WEIGHT, JAC_WEIGHT = 5e-3, 128, 32, 1e-3, 0.01, 1.0
CONFIGS = ("vanilla", "vanilla-jac", "skip", "skip-jac", "skipreg", "skipreg-jac")
PAPER_DEPTH = {"vanilla": 18.345, "vanilla-jac": 5.034, "skip": 4.001, "skip-jac": 4.001, "skipreg": 4.001,
               "skipreg-jac": 4.001}


class InjectedCell(nn.Module):
    """``f(z, x) = tanh(W z + b + x)``."""

    def __init__(self, width: int = WIDTH) -> None:
        super().__init__()
        self.W = nn.Linear(width, width)

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(self.W(z) + x)


class ParallelCell(nn.Module):
    """``f(z, x) = tanh(U z) + tanh(V x)``, no biases: the reference script's ``Parallel(+, Dense, Dense)``."""

    def __init__(self, width: int = WIDTH) -> None:
        super().__init__()
        self.U = nn.Linear(width, width, bias=False)
        self.V = nn.Linear(width, width, bias=False)

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(self.U(z)) + torch.tanh(self.V(x))


@dataclass
class DenseModel:
    """``head(deq(encoder(images)))``: the three parts, so a loop can time and count each."""

    encoder: nn.Module
    deq: pydeq.DEQ
    head: nn.Module

    def parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.deq.parameters(), *self.head.parameters()]

    def train(self, mode: bool = True) -> None:
        for part in (self.encoder, self.deq, self.head):
            part.train(mode)

    def to(self, device: torch.device | str) -> DenseModel:
        for part in (self.encoder, self.deq, self.head):
            part.to(device)
        return self

    def loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Stats]:
        """Cross-entropy plus the DEQ's ``aux_loss()`` (Skip, Jacobian), and the step's numbers once it is done:
        that loss, the f calls (``nfe``), the mean solver steps (``depth``) and fraction converged per sample."""
        z, sol = self.deq(self.encoder(images), return_solution=True)
        loss = F.cross_entropy(self.head(z), labels) + self.deq.aux_loss()
        return loss, lambda: {"loss": float(loss.detach()), "nfe": float(sol.nfe),
                              "depth": float(sol.steps.double().mean()),
                              "converged": float(sol.converged.double().mean())}

    def evaluate(self, images: Tensor, labels: Tensor, *, batch: int = BATCH) -> dict[str, float]:
        """In eval mode, ``batch`` images at a time: the accuracy, the mean f calls per batch (``nfe``), the mean
        solver steps (``depth``) and fraction converged per sample, and the median seconds per batch
        (``predict_s``)."""
        per_batch: list[dict[str, Any]] = []

        def predict(x: Tensor) -> Tensor:
            t0 = time.perf_counter()
            z, sol = self.deq(self.encoder(x), return_solution=True)
            logits = self.head(z)
            per_batch.append({"s": time.perf_counter() - t0, "nfe": sol.nfe, "depth": float(sol.steps.double().sum()),
                              "converged": int(sol.converged.sum())})
            return logits

        self.train(False)
        hits = accuracy(predict, images, labels, batch=batch)
        self.train(True)
        n = len(images)
        return {"accuracy": hits, "nfe": statistics.fmean(b["nfe"] for b in per_batch),
                "depth": sum(b["depth"] for b in per_batch) / n,
                "converged": sum(b["converged"] for b in per_batch) / n,
                "predict_s": statistics.median(b["s"] for b in per_batch)}


def table1_solver(max_steps: int = 50) -> pydeq.SteadyState:
    """Table 1's continuous solver as a user writes it (pydeq's default rms norm)."""
    return pydeq.SteadyState(pydeq.Tsit5(rtol=TOL, atol=TOL), rtol=TOL, atol=TOL, max_steps=max_steps)


def dense_model(config: str, seed: int, *, reference: bool = False) -> DenseModel:
    """One of the six :data:`CONFIGS`, seeded; ``reference=True`` builds the reference script's model
    (:class:`ParallelCell`, ``tanh`` encoder, 134,538 / 151,050 parameters), else ``tanh(W z + b + x)`` with a
    linear encoder (the depth claim's)."""
    if config not in CONFIGS:
        raise ValueError(f"unknown Table 1 configuration {config!r}; choose from {CONFIGS}.")
    torch.manual_seed(seed)
    if reference:
        encoder: nn.Module = nn.Sequential(nn.Flatten(), nn.Linear(784, WIDTH), nn.Tanh())
        cell: nn.Module = ParallelCell(WIDTH)
    else:
        encoder, cell = nn.Sequential(nn.Flatten(), nn.Linear(784, WIDTH)), InjectedCell(WIDTH)
    head = nn.Linear(WIDTH, 10)
    kw = dict(solver=table1_solver(), state_shape=(WIDTH,), on_failure="return",
              jacobian_weight=JAC_WEIGHT if config.endswith("-jac") else 0.0)
    kind = config.removesuffix("-jac")
    if kind == "skip":
        deq: pydeq.DEQ = pydeq.SkipDEQ(cell, nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh()),
                                       skip_weight=SKIP_WEIGHT, **kw)
    elif kind == "skipreg":
        deq = pydeq.SkipRegDEQ(cell, skip_weight=SKIP_WEIGHT, **kw)
    else:
        deq = pydeq.DEQ(cell, **kw)
    return DenseModel(encoder, deq, head)
