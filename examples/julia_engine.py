"""Solve the same DEQ with the native engine and with DeepEquilibriumNetworks.jl, then train a step in Julia.

    pip install 'pydeq[julia]'
    python examples/julia_engine.py            # falls back to the native engine where Julia cannot start

Put ``import juliacall`` first (before torch) if Julia crashes at start-up on Linux.
"""

from __future__ import annotations

import time

import torch

import pydeq
from pydeq import spec
from pydeq.julia import JuliaUnavailableError


def main() -> None:
    torch.manual_seed(0)
    f = spec.Chain(spec.Injection(z=spec.Dense(16, 16, bias=False), x=spec.Dense(8, 16)), spec.Tanh())
    model_spec = spec.DEQSpec(f, solver=pydeq.Broyden(rtol=1e-6, atol=1e-8, max_steps=100))
    native = spec.build(model_spec, backend="torch")
    with torch.no_grad():
        native.f.layers[0].z.weight.mul_(0.5)  # keep f contractive
    x = torch.randn(32, 8)
    z_native = native(x)

    julia = spec.build(model_spec, backend="julia")
    julia.load_state_dict(native.state_dict())  # same weights: parameters stay owned by torch
    try:
        t0 = time.perf_counter()
        sol = julia(x, return_solution=True)
        print(f"first Julia call {time.perf_counter() - t0:.1f} s (includes start-up); {sol.summary()}")
    except JuliaUnavailableError as err:
        print(f"Julia engine unavailable, native result only:\n  {err}")
        print(f"native: |z*| = {float(z_native.norm()):.4f}")
        return
    print(f"max |z_julia - z_native| = {float((sol.z - z_native).abs().max()):.2e}")

    opt = torch.optim.Adam(julia.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    loss = julia(x).square().mean()  # backward runs Julia's SteadyStateAdjoint VJP
    loss.backward()
    opt.step()
    print(f"one training step in Julia: {time.perf_counter() - t0:.3f} s, loss {float(loss):.4f}")


if __name__ == "__main__":
    main()
