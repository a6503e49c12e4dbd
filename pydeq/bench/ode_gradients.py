"""Memory and time of the three ways to differentiate an ODE solve, against the number of steps.

    python -m pydeq.bench.ode_gradients                      # steps 25 / 100 / 400, a minute or two
    python -m pydeq.bench.ode_gradients --steps 50 200 800   # longer

A neural ODE ``du/dt = W2 tanh(W1 u + b1) + b2`` (state ``--width``, hidden ``--hidden``, batch ``--batch``) is
integrated over ``[0, 1]`` with ``RK4(dt = 1 / steps)`` (fixed steps, so every mode takes exactly ``steps`` steps)
and one training step (forward, loss, backward) is measured for ``DirectAdjoint``, ``CheckpointAdjoint`` (flat,
O(√steps)), ``CheckpointAdjoint(recursive=True)`` (O(log steps)) and ``BacksolveAdjoint``. Each configuration runs
in a fresh process, as :mod:`pydeq.bench.memory` does: peak extra resident memory of the step (``VmHWM`` after a
reset, minus the resident size before; allocations under 4 KiB, such as the checkpoint tape's per-step
``(batch,)`` vectors, about 25 bytes per sample per step, stay below its resolution) and median wall time of
``--repeats`` steps; the gradient's relative error against ``DirectAdjoint`` (the exact gradient of the discrete
solve) is computed in the parent process.

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
    batch: int = 128
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


def _model(cfg: Config) -> tuple[object, object]:
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(cfg.width, cfg.hidden), nn.Tanh(), nn.Linear(cfg.hidden, cfg.width))
    return net, torch.randn(cfg.batch, cfg.width)


def _child(cfg: Config) -> dict:
    """Memory and time of one configuration, alone in its process (nothing else grew the heap first)."""
    import torch

    from .timing import measure as measure_time  # this module's own measure() runs a configuration

    torch.set_num_threads(1)
    net, x = _model(cfg)
    _train_step(cfg, net, x)  # warm-up: one-time allocations are not the step's
    before = _rss_kib("VmRSS")
    exact = _reset_peak()
    _train_step(cfg, net, x)
    peak = _rss_kib("VmHWM") if exact else None
    seconds = measure_time(lambda: _train_step(cfg, net, x), repeats=cfg.repeats, warmup=0).median
    extra = None if peak is None or before is None else (peak - before) / 1024
    return {**asdict(cfg), "peak_extra_mib": extra, "seconds": seconds}


def gradient_error(cfg: Config) -> float:
    """Largest relative error of ``cfg.mode``'s parameter gradients against DirectAdjoint's (float32)."""
    net, x = _model(cfg)
    ref = _train_step(Config("direct", cfg.steps, cfg.batch, cfg.width, cfg.hidden), net, x)
    got = _train_step(cfg, net, x)
    return max(float((g - r).norm() / r.norm()) for g, r in zip(got, ref, strict=True))


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
    # every allocation of 4 KiB or more is its own mapping, returned to the kernel when freed: the peak is visible
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "4096", "OMP_NUM_THREADS": "1"}
    code = ("import json; from pydeq.bench.ode_gradients import Config, _child; "
            f"print(json.dumps(_child(Config(**{asdict(cfg)!r}))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m pydeq.bench.ode_gradients", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 100, 400])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows = []
    for n in args.steps:
        for mode in MODES:
            cfg = Config(mode, n, args.batch, args.width, args.hidden, args.repeats)
            rows.append({**measure(cfg), "grad_rel_error": gradient_error(cfg)})
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
