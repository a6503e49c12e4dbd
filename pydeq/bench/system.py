"""Measured facts about the machine a benchmark ran on, for ``results.json`` and the report."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pydeq.bench.timing import measure

__all__ = ["machine_info"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _git(repo: Path) -> tuple[str | None, bool | None]:
    """Commit and dirtiness of the checkout holding this package, or ``(None, None)`` outside git."""
    def run(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10,
                               check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = run("status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status)


def _matmul_gflops(device: torch.device, n: int = 512, repeats: int = 5) -> float:
    """A calibration: float32 n×n matmul throughput (best of ``repeats``), so runs on different machines compare."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = measure(lambda: a @ b, repeats=repeats, warmup=1, device=device).min
    return round(2 * n**3 / best / 1e9, 1)


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """CPU model, core counts, memory, software versions, torch threads, GPU, git commit, matmul GFLOP/s."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    commit, dirty = _git(Path(__file__).resolve().parents[2])
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    with torch.random.fork_rng(devices=[device] if cuda else []):  # the calibration must not move the seed
        gflops = _matmul_gflops(device)
    return {
        "cpu": _cpu_model(),
        "cores_logical": os.cpu_count() or 1,
        "cores_available": available,
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
        "git_commit": commit,
        "git_dirty": dirty,
        "matmul_gflops": gflops,
    }
