"""Memory and time of the three ways to differentiate an ODE solve, against the number of steps.

    python -m pydeq.bench.ode_gradients                      # steps 25 / 100 / 400, a minute or two
    python -m pydeq.bench.ode_gradients --steps 50 200 800   # longer

A neural ODE ``du/dt = W2 tanh(W1 u + b1) + b2`` (state ``--width``, hidden ``--hidden``, batch ``--batch``) is
integrated over ``[0, 1]`` with ``RK4(dt = 1 / steps)`` (fixed steps, so every mode takes exactly ``steps`` steps)
and one training step (forward, loss, backward) is measured for ``DirectAdjoint``, ``CheckpointAdjoint`` (flat,
O(√steps)), ``CheckpointAdjoint(recursive=True)`` (O(log steps)) and ``BacksolveAdjoint``. Each configuration runs
in a fresh process, as :mod:`pydeq.bench.memory` does: peak extra resident memory of the step (``VmHWM`` after a
reset, minus the resident size before), median wall time of ``--repeats`` steps, and the gradient's relative error
against ``DirectAdjoint`` (the exact gradient of the discrete solve).

A second table shows why the checkpointed mode matters besides memory: on ``du/dt = -k tanh(W u)`` with a strong
pull (``k = 25``) the state reconstructed backward by the backsolve adjoint grows like ``e^{25 t}`` and takes its
gradient with it, while the checkpointed gradient stays exact.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

from .memory import _reset_peak, _rss_kib

__all__ = ["Config", "MODES", "measure", "main"]

MODES = ("direct", "checkpoint", "checkpoint-recursive", "backsolve")


@dataclass(frozen=True)
class Config:
    mode: str
    steps: int
    batch: int = 64
    width: int = 64
    hidden: int = 256
    repeats: int = 3


def _adjoint(mode: str) -> object:
    import pydeq  # lazily: the parent process only spawns children

    return {"direct": pydeq.DirectAdjoint(), "checkpoint": pydeq.CheckpointAdjoint(),
            "checkpoint-recursive": pydeq.CheckpointAdjoint(recursive=True),
            "backsolve": pydeq.BacksolveAdjoint()}[mode]


def _train_step(cfg: Config, net: object, x: object) -> list:
    import torch

    import pydeq

    sol = pydeq.odeint(lambda t, u: net(u), x, (0.0, 1.0), solver=pydeq.RK4(dt=1.0 / cfg.steps),
                       adjoint=_adjoint(cfg.mode))
    return list(torch.autograd.grad(sol.z.square().mean(), list(net.parameters())))


def _child(cfg: Config) -> dict:
    import statistics
    import time

    import torch
    from torch import nn

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(cfg.width, cfg.hidden), nn.Tanh(), nn.Linear(cfg.hidden, cfg.width))
    x = torch.randn(cfg.batch, cfg.width)
    reference = _train_step(Config("direct", cfg.steps, cfg.batch, cfg.width, cfg.hidden), net, x)
    grads = _train_step(cfg, net, x)  # warm-up, and the gradient to compare
    error = max(float((g - r).norm() / r.norm()) for g, r in zip(grads, reference, strict=True))
    del reference, grads
    before = _rss_kib("VmRSS")
    exact = _reset_peak()
    _train_step(cfg, net, x)
    peak = _rss_kib("VmHWM") if exact else None
    times = []
    for _ in range(cfg.repeats):
        start = time.perf_counter()
        _train_step(cfg, net, x)
        times.append(time.perf_counter() - start)
    extra = None if peak is None or before is None else (peak - before) / 1024
    return {**asdict(cfg), "peak_extra_mib": extra, "seconds": statistics.median(times), "grad_rel_error": error}


def _instability(k: float = 25.0) -> dict:
    """Relative gradient error of each mode on a strongly contracting field (state of 8, batch 4, Tsit5 1e-6)."""
    import torch

    import pydeq

    torch.manual_seed(1)
    W = (torch.randn(8, 8, dtype=torch.float64) / 3).requires_grad_(True)
    u0 = torch.randn(4, 8, dtype=torch.float64)
    out = {}
    for mode in MODES:
        sol = pydeq.odeint(lambda t, u: -k * torch.tanh(u @ W.T) + torch.sin(t)[:, None], u0, (0.0, 2.0),
                           solver=pydeq.Tsit5(rtol=1e-6, atol=1e-8), adjoint=_adjoint(mode), on_failure="return")
        out[mode] = torch.autograd.grad(sol.z.sum(), W)[0]
    ref = out["direct"]
    return {mode: float((g - ref).norm() / ref.norm()) for mode, g in out.items()}


def measure(cfg: Config) -> dict:
    """Run one configuration in a fresh Python process and return its record."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    code = ("import json; from pydeq.bench.ode_gradients import Config, _child; "
            f"print(json.dumps(_child(Config(**{asdict(cfg)!r}))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m pydeq.bench.ode_gradients", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 100, 400])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = [measure(Config(mode, n, args.batch, args.width, args.hidden, args.repeats))
            for n in args.steps for mode in MODES]
    print("| steps | mode | peak extra memory (MiB) | time per training step (s) | gradient error vs direct |")
    print("|---|---|---|---|---|")
    for r in rows:
        mem = "n/a" if r["peak_extra_mib"] is None else f"{r['peak_extra_mib']:.1f}"
        print(f"| {r['steps']} | {r['mode']} | {mem} | {r['seconds']:.3f} | {r['grad_rel_error']:.1e} |")
    unstable = _instability()
    print("\nstrong pull (k = 25): gradient error vs direct: "
          + ", ".join(f"{m} {e:.1e}" for m, e in unstable.items() if m != "direct"))
    return {"rows": rows, "instability": unstable}


if __name__ == "__main__":
    main()
