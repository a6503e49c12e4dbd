"""Multiscale DEQ, Skip DEQ and neural ODE on a toy image task (runs in seconds on a CPU).

Two resolution branches are solved jointly as one packed state; a small head classifies the branches.
The task: is the bright square in the left or the right half of an 8x8 RGB image?

    python examples/multiscale_deq.py
"""

import time

import torch

from pydeq import GMRES, Anderson, DirectAdjoint, ImplicitAdjoint, Tsit5
from pydeq.nn.multiscale import MultiScaleClassifier, MultiScaleNeuralODE, MultiScaleSkipDEQ


def toy_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, 3, 8, 8)`` noise with a bright 2x2 square; label 1 when the square is in the right half."""
    x = 0.3 * torch.randn(n, 3, 8, 8, generator=generator)
    rows = torch.randint(0, 7, (n,), generator=generator)
    cols = torch.randint(0, 7, (n,), generator=generator)
    for i in range(n):
        x[i, :, rows[i]:rows[i] + 2, cols[i]:cols[i] + 2] += 2.0
    return x, (cols >= 4).long()


def train(model: MultiScaleClassifier, x: torch.Tensor, y: torch.Tensor, steps: int, skip_weight: float) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    backbone = model.backbone
    for step in range(steps):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        if skip_weight:
            loss = loss + skip_weight * backbone.skip_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sol = backbone.last_solution
        if step % 5 == 0 or step == steps - 1:
            acc = (logits.argmax(1) == y).float().mean()
            extra = f"skip loss {float(backbone.skip_loss().detach()):.3f}  " if skip_weight else ""
            print(f"  step {step:2d}  loss {float(loss.detach()):.3f}  acc {float(acc):.2f}  {extra}"
                  f"nfe {sol.nfe} fwd / {sol.backward.nfe} bwd  ({sol.summary().split(',')[0]})")


def main() -> None:
    torch.set_num_threads(1)  # toy sizes: more threads only add synchronisation
    torch.manual_seed(0)
    x, y = toy_images(64, torch.Generator().manual_seed(0))

    # Paper-like loose tolerances (Pal et al. use 5e-2 forward and backward; DeepEquilibriumNetworks.jl caps
    # GMRES at 10 iterations): an MDEQ map with GroupNorm is not a contraction at initialisation.
    deq = MultiScaleSkipDEQ(3, (8, 8), branches=2, channels=8, groups=4,
                            solver=Anderson(rtol=5e-2, atol=1e-3, max_steps=20),
                            adjoint=ImplicitAdjoint(linear_solver=GMRES(rtol=5e-2, max_steps=10)),
                            on_failure="return")
    model = MultiScaleClassifier(deq, num_classes=2)
    branches = deq(x[:2])
    print("branch shapes:", [tuple(b.shape) for b in branches], "packed state:", tuple(deq.last_solution.z.shape))

    print("MultiScaleSkipDEQ (implicit gradient, skip loss weight 0.01):")
    t = time.perf_counter()
    train(model, x, y, steps=20, skip_weight=0.01)
    print(f"  {time.perf_counter() - t:.1f} s")

    print("MultiScaleNeuralODE (same architecture, du/dt = f(u, x) - u over [0, 1], backprop through Tsit5):")
    torch.manual_seed(0)
    node = MultiScaleNeuralODE(3, (8, 8), branches=2, channels=8, groups=4,
                               solver=Tsit5(rtol=1e-2, atol=1e-3), adjoint=DirectAdjoint())
    t = time.perf_counter()
    train(MultiScaleClassifier(node, num_classes=2), x, y, steps=6, skip_weight=0.0)
    print(f"  {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
