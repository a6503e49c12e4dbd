"""Continuous DEQ vs discrete DEQ vs neural ODE on one shared f (Pal, Edelman & Rackauckas 2022).

The same cell f(z, x) = tanh(W z + U x) is used three ways:
  * discrete DEQ:    z* = f(z*, x) by Anderson acceleration, implicit gradient;
  * continuous DEQ:  du/dt = f(u, x) − u followed to steady state, implicit gradient: with SteadyState's
                     default method (SecantEuler: Euler steps with secant step sizes) and with Tsit5;
  * neural ODE:      the same flow f(u, x) − u over t ∈ [0, 1] only, back-propagated through the solver.
It first checks that both DEQs land on the same fixed point with the same gradient, then trains each for a
few steps and prints accuracy, function evaluations and time. Runs in seconds:  python examples/continuous_deq.py
"""

from __future__ import annotations

import time

import torch
from torch import nn

from pydeq import DEQ, Anderson, DEQVectorField, DirectAdjoint, ImplicitAdjoint, NeuralODE, SteadyState, Tsit5

STEPS = 60


class Cell(nn.Module):
    def __init__(self, n: int = 16, m: int = 4):
        super().__init__()
        self.W, self.U = nn.Linear(n, n, bias=False), nn.Linear(m, n)
        with torch.no_grad():
            self.W.weight.mul_(0.8 / torch.linalg.matrix_norm(self.W.weight, 2))

    def forward(self, z, x):
        return torch.tanh(self.W(z) + self.U(x))


def models(cell: nn.Module, tol: float, max_steps: int) -> dict[str, nn.Module]:
    return {
        "discrete DEQ (Anderson)": DEQ(cell, solver=Anderson(rtol=tol, atol=tol, max_steps=max_steps),
                                       state_shape=(16,)),
        "continuous DEQ (default)": DEQ(cell, solver=SteadyState(rtol=tol, atol=tol, max_steps=max_steps),
                                        state_shape=(16,), adjoint=ImplicitAdjoint()),
        "continuous DEQ (Tsit5)": DEQ(cell, solver=SteadyState(Tsit5(), rtol=tol, atol=tol, max_steps=max_steps),
                                      state_shape=(16,), adjoint=ImplicitAdjoint()),
        "neural ODE [0, 1]": NeuralODE(DEQVectorField(cell), solver=Tsit5(rtol=tol, atol=tol),
                                       adjoint=DirectAdjoint(), state_shape=(16,)),
    }


def main() -> None:
    torch.manual_seed(0)
    cell = Cell().double()
    x = torch.randn(32, 4, dtype=torch.float64)
    out = {}
    for name, model in list(models(cell, 1e-10, max_steps=2000).items())[:3]:
        z = model(x)
        out[name] = (z.detach(), torch.autograd.grad(z.pow(2).sum(), list(cell.parameters())))
    (za, ga), *continuous = out.values()
    for (zc, gc), name in zip(continuous, list(out)[1:], strict=True):
        gdiff = max(float((a - c).abs().max()) for a, c in zip(ga, gc, strict=True))
        print(f"{name}: fixed point differs from the discrete one by {float((za - zc).abs().max()):.1e}; "
              f"gradients by {gdiff:.1e}")
    print()

    gen = torch.Generator().manual_seed(1)
    head_w = torch.randn(16, 1, generator=gen)
    for name in models(cell, 1e-3, max_steps=200):
        torch.manual_seed(0)
        cell = Cell()
        model = models(cell, 1e-3, max_steps=200)[name]
        head = nn.Linear(16, 1)
        opt = torch.optim.Adam([*cell.parameters(), *head.parameters()], lr=5e-3)
        start, fwd, bwd = time.perf_counter(), 0, 0
        for _ in range(STEPS):
            xb = torch.randn(64, 4, generator=gen)
            yb = torch.sin(xb.sum(1, keepdim=True)) + 0.1 * torch.tanh(xb @ head_w[:4])
            loss = ((head(model(xb)) - yb) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():  # keep f a contraction, as the papers do with weight/spectral norm
                cell.W.weight.mul_(0.9 / torch.linalg.matrix_norm(cell.W.weight, 2).clamp_min(0.9))
            fwd, bwd = fwd + model.last_solution.nfe, bwd + model.last_solution.backward.nfe
        print(f"{name:26s} final loss {loss.item():.3f}  nfe/step forward {fwd / STEPS:5.1f} backward {bwd / STEPS:5.1f}"
              f"  time {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
