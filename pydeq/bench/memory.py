"""Peak training memory against solver iterations: implicit adjoints stay flat, unrolled back-propagation grows.

    python -m pydeq.bench.memory                 # the default comparison, a few seconds per configuration
    python -m pydeq.bench.memory --batch 512     # larger

Each configuration runs in a fresh Python process (so nothing cached by an earlier one counts). The process
builds the model and data, runs one untimed warm-up step, resets the kernel's peak-resident-memory counter
(``echo 5 > /proc/self/clear_refs`` resets ``VmHWM``), runs one training step (forward, backward) and reports
``VmHWM - VmRSS`` before the step: the extra memory the step needed at its peak, whoever allocated it (torch's
CPU allocator keeps no statistics; ``tracemalloc`` does not see torch). ``MALLOC_MMAP_THRESHOLD_`` is fixed so
that glibc returns freed tensor memory to the kernel at once instead of growing its heap (which would blur the
peak). The solver is a fixed-point iteration that cannot meet its tolerance, so every configuration runs exactly
the number of iterations asked for. Linux only (``/proc``); elsewhere it falls back to ``ru_maxrss`` after the step
minus the resident size before it, a coarser figure.

Printed: one line per configuration, then the two ratios the production checklist asks for:
``implicit(100) / implicit(10)`` (flat: <= 1.1) and ``unrolled(50) / implicit(50)`` (>= 5).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass

__all__ = ["Config", "measure", "main"]

ADJOINTS = ("implicit", "phantom", "jfb", "unrolled")


@dataclass(frozen=True)
class Config:
    """One measurement: ``adjoint`` in ADJOINTS, ``iters`` forward solver iterations, model size."""

    adjoint: str
    iters: int
    batch: int = 256
    width: int = 256
    hidden: int = 1024


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _child(cfg: Config) -> dict:
    import torch
    from torch import nn

    import pydeq

    torch.set_num_threads(1)
    torch.manual_seed(0)

    class Cell(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up, self.down = nn.Linear(cfg.width, cfg.hidden), nn.Linear(cfg.hidden, cfg.width)
            with torch.no_grad():
                self.down.weight.mul_(0.5 / torch.linalg.matrix_norm(self.down.weight @ self.up.weight, 2))

        def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.down(torch.relu(self.up(z))) + x)

    adjoint = {
        "implicit": pydeq.ImplicitAdjoint(linear_solver=pydeq.GMRES(rtol=1e-6, max_steps=30)),
        "phantom": pydeq.PhantomAdjoint(steps=5),
        "jfb": pydeq.JacobianFreeAdjoint(),
        "unrolled": pydeq.DirectAdjoint(),
    }[cfg.adjoint]
    # atol/rtol far below float32 resolution: the solve always runs exactly `iters` steps
    solver = pydeq.FixedPointIteration(rtol=0.0, atol=1e-30, max_steps=cfg.iters)
    deq = pydeq.DEQ(Cell(), solver=solver, adjoint=adjoint, on_failure="return")
    x = torch.randn(cfg.batch, cfg.width)

    def step() -> None:
        deq.zero_grad(set_to_none=False)
        deq(x).square().mean().backward()

    step()  # warm-up: parameter gradients allocated, lazy initialisation done
    deq.last_solution = None  # the previous step's graph is not part of the next step's peak
    before = _rss_kib("VmRSS")
    exact = _reset_peak() and before is not None
    step()
    if exact:
        peak = _rss_kib("VmHWM") - before
    else:  # ru_maxrss is the process-lifetime peak, in KiB on Linux and bytes on macOS
        scale = 1024 if sys.platform == "darwin" else 1
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // scale - (before or 0)
    return {"peak_mib": peak / 1024, "exact": exact, "steps": int(deq.last_solution.steps.max())}


def measure(cfg: Config) -> dict:
    """Run ``cfg`` in a fresh interpreter and return ``{"peak_mib", "exact", "steps"}``."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "pydeq.bench.memory", "--child", json.dumps(cfg.__dict__)]
    out = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory measurement {cfg} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m pydeq.bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(Config(**json.loads(args.child)))))
        return {}
    size = dict(batch=args.batch, width=args.width, hidden=args.hidden)
    plan = [("implicit", 10), ("implicit", 50), ("implicit", 100), ("phantom", 50), ("jfb", 50), ("unrolled", 10),
            ("unrolled", 50)]
    peaks = {}
    print(f"peak extra memory of one training step (batch {args.batch}, state {args.width}, hidden {args.hidden})")
    for adjoint, iters in plan:
        r = measure(Config(adjoint, iters, **size))
        peaks[(adjoint, iters)] = r["peak_mib"]
        note = "" if r["exact"] else "  (ru_maxrss fallback)"
        print(f"  {adjoint:9s} {iters:4d} iterations: {r['peak_mib']:8.1f} MiB{note}", flush=True)
    ratios = {
        "implicit_100_over_10": peaks[("implicit", 100)] / peaks[("implicit", 10)],
        "unrolled_50_over_implicit_50": peaks[("unrolled", 50)] / peaks[("implicit", 50)],
    }
    print(f"implicit 100 / 10 iterations:      {ratios['implicit_100_over_10']:.3f}   (target <= 1.1)")
    print(f"unrolled / implicit at 50 iters:   {ratios['unrolled_50_over_implicit_50']:.1f}x  (target >= 5)")
    return ratios


if __name__ == "__main__":
    main()
