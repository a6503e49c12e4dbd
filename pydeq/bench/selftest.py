"""A built-in claim that exercises the whole pipeline in seconds: two plain MLPs on synthetic data.

It states nothing about any paper; it exists so that ``pydeq bench quick --only selftest`` (and the tests)
produce every kind of row, series and plot without data downloads or solver code.
"""

from __future__ import annotations

import torch
from torch import nn

from pydeq.bench.claim import BenchContext, ClaimResult, Row, claim
from pydeq.bench.timing import stopwatch

__all__ = ["selftest"]


def _mlp(depth: int, width: int, d_in: int, d_out: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(d_in, width), nn.Tanh()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, d_out))


def _blobs(n: int, d: int, classes: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    centres = 2.0 * torch.randn(classes, d, generator=generator)
    y = torch.randint(0, classes, (n,), generator=generator)
    return centres[y] + torch.randn(n, d, generator=generator), y


@claim("selftest", title="Pipeline self-test: shallow vs deep MLP", suites=(),
       paper="none (checks the benchmark pipeline; run it with --only selftest)")
def selftest(ctx: BenchContext) -> ClaimResult:
    """Train a 1-layer and a 4-layer MLP side by side; the shallow one should step faster."""
    g = torch.Generator().manual_seed(ctx.seed)
    d, classes, n, batch, epochs = 16, 4, 512, 64, ctx.scale(quick=3, paper=5)
    x, y = _blobs(2 * n, d, classes, g)
    x, y = x.to(ctx.device), y.to(ctx.device)
    (x_train, y_train), (x_test, y_test) = (x[:n], y[:n]), (x[n:], y[n:])
    depths = {"mlp-1": 1, "mlp-4": 4}
    models = {name: _mlp(depth, 32, d, classes).to(ctx.device) for name, depth in depths.items()}
    opts = {name: torch.optim.Adam(m.parameters(), lr=1e-2) for name, m in models.items()}
    series: dict[str, dict[str, list[float]]] = {k: {m: [] for m in models} for k in
                                                 ("time_per_epoch", "nfe_per_epoch", "accuracy", "loss")}
    for _ in ctx.bar(range(epochs), desc="selftest epochs"):
        for name, model in models.items():
            perm = torch.randperm(n, generator=g).to(ctx.device)
            with stopwatch(ctx.device) as sw:
                for i in range(0, n, batch):
                    idx = perm[i:i + batch]
                    loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
                    opts[name].zero_grad()
                    loss.backward()
                    opts[name].step()
            with torch.no_grad():
                acc = (model(x_test).argmax(1) == y_test).float().mean().item()
            series["time_per_epoch"][name].append(sw.seconds)
            series["nfe_per_epoch"][name].append(float(depths[name] * (n // batch)))  # layer evaluations
            series["accuracy"][name].append(acc)
            series["loss"][name].append(loss.item())

    def backward(model: nn.Module) -> None:
        nn.functional.cross_entropy(model(x_train), y_train).backward()

    t = ctx.measure_side_by_side({name: (lambda m=m: backward(m)) for name, m in models.items()})
    series["backward_time"] = {name: list(timing.samples) for name, timing in t.items()}
    acc = {name: series["accuracy"][name][-1] for name in models}
    return ClaimResult(
        rows=[
            Row.speedup("mlp-1", "mlp-4", t["mlp-1"], t["mlp-4"], quantity="backward time, full training set",
                        paper_figure="> 1× (expected)", at_least=1.0,
                        why_not="timer noise dominates at this size"),
            Row(method="mlp-1", peer="mlp-4", quantity="final test accuracy", metrics=acc,
                paper_figure="similar", measured_figure=f"{acc['mlp-1']:.3f} vs {acc['mlp-4']:.3f}",
                why="informative only"),
        ],
        series=series,
        setup={"samples": n, "features": d, "classes": classes, "batch": batch, "epochs": epochs, "width": 32},
        summary="Two small MLPs on Gaussian blobs; checks that timing, series, plots and the report all work.",
    )
