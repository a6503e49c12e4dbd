"""Soak run: many training steps of a DEQ, watching resident memory and everything the layer keeps around.

    python -m pydeq.bench.soak                   # 1,000 steps, a minute or so on one core
    python -m pydeq.bench.soak --steps 5000

The model exercises the whole training path: Anderson forward, implicit (GMRES) backward, spectral
normalisation cached per step, variational dropout, the fixed-point correction loss, AdamW. After ``--warmup``
steps (allocator pools and optimiser state filled) it samples the resident set size (``/proc/self/statm``) and
the number of live Python objects and tensors every ``--every`` steps, and reports their growth from the end of
the warm-up to the end: memory growth beyond ``--limit`` percent, or any steady rise of live tensors or of
``Solution`` records (statistics that would pile up), is a leak. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import warnings

import torch
from torch import nn

import pydeq
from pydeq.nn.dropout import VariationalDropout, resample_each_call
from pydeq.nn.losses import deq_correction_loss
from pydeq.nn.norm import SpectralNorm, apply_norm

__all__ = ["main"]


def rss_mib() -> float:
    """Current resident set size in MiB (``/proc/self/statm``; peak ``ru_maxrss`` where there is no /proc)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def live_counts() -> tuple[int, int, int]:
    """(Python objects, tensors, pydeq Solution records) reachable by the garbage collector."""
    gc.collect()
    objs = gc.get_objects()
    with warnings.catch_warnings():  # isinstance on some of torch's deprecated module attributes warns
        warnings.simplefilter("ignore")
        tensors = sum(1 for o in objs if isinstance(o, torch.Tensor))
        solutions = sum(1 for o in objs if isinstance(o, pydeq.Solution))
    return len(objs), tensors, solutions


class Cell(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.w1, self.w2 = nn.Linear(width, width), nn.Linear(width, width)
        self.drop = VariationalDropout(0.1)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(0.9 * self.w2(self.drop(torch.tanh(self.w1(z)))) + x)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m pydeq.bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--limit", type=float, default=1.0, help="allowed RSS growth after warm-up, percent")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    deq = pydeq.DEQ(Cell(args.width), solver=pydeq.Anderson(rtol=1e-4, max_steps=40),
                    adjoint=pydeq.ImplicitAdjoint(linear_solver=pydeq.GMRES(rtol=1e-5, max_steps=40)),
                    on_failure="return")
    apply_norm(deq, SpectralNorm())
    resample_each_call(deq)
    head = nn.Linear(args.width, 1)
    params = list(deq.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    g = torch.Generator().manual_seed(1)
    samples: list[tuple[int, float, int, int, int]] = []
    nfe = []
    for step in range(1, args.steps + 1):
        x = torch.randn(args.batch, args.width, generator=g)
        y = x[:, :1].sin()

        def task(z: torch.Tensor, y: torch.Tensor = y) -> torch.Tensor:
            return (head(z) - y).square().mean()

        z = deq(x)
        loss = task(z) + deq_correction_loss(deq, task, count=2, weight=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        nfe.append(deq.last_solution.nfe)
        if step >= args.warmup and (step - args.warmup) % args.every == 0 or step == args.steps:
            objs, tensors, solutions = live_counts()
            samples.append((step, rss_mib(), objs, tensors, solutions))
            print(f"step {step:6d}  rss {samples[-1][1]:8.2f} MiB  objects {objs:7d}  tensors {tensors:5d}  "
                  f"solutions {solutions}  loss {loss.item():.4f}  nfe {nfe[-1]}", flush=True)
    first, last = samples[0], samples[-1]
    growth = 100 * (last[1] - first[1]) / first[1]
    report = {"rss_growth_percent": growth, "tensor_growth": last[3] - first[3], "object_growth": last[2] - first[2],
              "solutions_alive": last[4]}
    print(f"RSS after warm-up {first[1]:.2f} MiB -> end {last[1]:.2f} MiB: {growth:+.2f}% (limit {args.limit}%)")
    print(f"live tensors {first[3]} -> {last[3]}, Python objects {first[2]} -> {last[2]}, "
          f"Solution records alive at the end: {last[4]} (the layer keeps only its last one)")
    ok = growth <= args.limit and last[3] <= first[3] and last[4] <= 1
    print("PASS" if ok else "FAIL")
    if not ok and argv is None:
        sys.exit(1)
    return report


if __name__ == "__main__":
    main()
