"""Fit a neural ODE to a rotation field and compare the two gradient modes.

Learns du/dt = f(u) so that u(1) = R(θ) u0 for a 2-D rotation by θ = 1 rad, then reports the forward and
backward function evaluations of back-propagation through the solver vs the backsolve adjoint, and checks
that their gradients agree. Runs in a few seconds on a CPU:  python examples/neural_ode.py
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from pydeq import BacksolveAdjoint, DirectAdjoint, NeuralODE, Tsit5


def make_field() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 2))


def autonomous(f: nn.Module) -> nn.Module:
    class Field(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = f

        def forward(self, u, x):  # the input only sets u0 here
            return self.f(u)

    return Field()


def main() -> None:
    rot = torch.tensor([[math.cos(1.0), -math.sin(1.0)], [math.sin(1.0), math.cos(1.0)]])
    gen = torch.Generator().manual_seed(0)
    for adjoint in (DirectAdjoint(), BacksolveAdjoint()):
        f = make_field()
        model = NeuralODE(autonomous(f), solver=Tsit5(rtol=1e-4, atol=1e-6), adjoint=adjoint)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        start, fwd, bwd = time.perf_counter(), 0, 0
        for step in range(150):
            x = torch.randn(64, 2, generator=gen)
            loss = ((model(x) - x @ rot.T) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            fwd, bwd = fwd + model.last_solution.nfe, bwd + model.last_solution.backward.nfe
            if step % 50 == 0 or step == 149:
                print(f"  {type(adjoint).__name__:16s} step {step:3d}  loss {loss.item():.2e}  "
                      f"nfe fwd {model.last_solution.nfe}  bwd {model.last_solution.backward.nfe}")
        print(f"{type(adjoint).__name__}: {time.perf_counter() - start:.1f}s, mean nfe forward {fwd / 150:.0f}, "
              f"backward {bwd / 150:.0f}\n")

    # the two gradients of one loss, in float64 at tight tolerance
    f = make_field().double()
    x = torch.randn(8, 2, dtype=torch.float64)
    grads = []
    for adjoint in (DirectAdjoint(), BacksolveAdjoint()):
        model = NeuralODE(autonomous(f), solver=Tsit5(rtol=1e-10, atol=1e-12), adjoint=adjoint)
        grads.append(torch.autograd.grad(model(x).pow(2).sum(), list(f.parameters())))
    diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(*grads, strict=True))
    print(f"direct vs backsolve gradient, max relative difference: {diff:.1e}")


if __name__ == "__main__":
    main()
