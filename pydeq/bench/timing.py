"""Wall-clock timing for benchmarks: repeated, synchronised, reported as minimum and median.

Ratios between methods are what the suite reports, so methods that are compared are timed side by side,
interleaved round-robin (A B A B …) so that drift in the machine's speed hits both alike. Every timing in
:mod:`pydeq.bench` goes through here: :func:`stopwatch` for a block, :func:`measure` / :func:`measure_side_by_side`
for repeated calls, :func:`side_by_side` for calls that time their own parts, :class:`Timing` for min and median.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import torch

__all__ = [
    "Stopwatch", "Timing", "measure", "measure_side_by_side", "rotated_batches", "side_by_side", "stopwatch",
    "synchronize",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Timing:
    """Repeated wall-clock samples of one operation, in seconds."""

    samples: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("a Timing needs at least one sample; got none. Use repeats >= 1.")

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def to_json(self) -> dict[str, object]:
        return {"min_s": self.min, "median_s": self.median, "samples_s": list(self.samples)}


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued GPU work so that a timer measures it (no-op on CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1, number: int = 1,
            device: torch.device | str | None = None) -> Timing:
    """Time ``fn()`` ``repeats`` times after ``warmup`` untimed calls, with the garbage collector paused.

    ``number`` > 1 makes each sample the mean time of one call over ``number`` back-to-back calls (``timeit``'s
    ``number``), for operations too short to time one at a time; the warm-up is then ``warmup`` untimed samples,
    ``warmup * number`` calls.
    """
    return measure_side_by_side({"fn": fn}, repeats=repeats, warmup=warmup, number=number, device=device)["fn"]


def measure_side_by_side(fns: dict[str, Callable[[], object]], *, repeats: int = 5, warmup: int = 1,
                         number: int = 1, device: torch.device | str | None = None) -> dict[str, Timing]:
    """Time several functions interleaved round-robin; returns a :class:`Timing` per name.

    :func:`side_by_side` of each function timed whole by :func:`stopwatch`; ``warmup`` and ``number`` as in
    :func:`measure`.
    """
    if number < 1:
        raise ValueError(f"need number >= 1 (calls per sample); got number={number}.")

    def timed(fn: Callable[[], object]) -> Callable[[], float]:
        def sample() -> float:
            with stopwatch(device) as sw:
                for _ in range(number):
                    fn()
            return sw.seconds / number

        return sample

    samples = side_by_side({name: timed(fn) for name, fn in fns.items()}, repeats=repeats, warmup=warmup)
    return {name: Timing(tuple(s)) for name, s in samples.items()}


def side_by_side(fns: Mapping[str, Callable[[], T]], *, repeats: int = 5, warmup: int = 1,
                 progress: Callable[[range], Iterable[int]] | None = None) -> dict[str, list[T]]:
    """Call several functions interleaved round-robin (A B A B …) and return every timed round's results, per name.

    For functions that time parts of themselves (with :func:`stopwatch`) and return those times with other
    results: ``warmup`` untimed rounds first, then ``repeats`` rounds, each call with the garbage collector paused
    (as ``timeit`` does: no collector pauses inside a sample). ``progress`` wraps the timed rounds, e.g. in a
    progress bar (``lambda rounds: ctx.bar(rounds, desc=...)``). :func:`measure_side_by_side` is this with every
    call timed whole.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0; got repeats={repeats}, warmup={warmup}.")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    results: dict[str, list[T]] = {name: [] for name in fns}
    gc.collect()
    for _ in range(repeats) if progress is None else progress(range(repeats)):
        for name, fn in fns.items():
            enabled = gc.isenabled()
            gc.disable()
            try:
                results[name].append(fn())
            finally:
                if enabled:
                    gc.enable()
    return results


@dataclass
class Stopwatch:
    """Elapsed seconds of a ``with stopwatch(device):`` block (``seconds`` is set on exit)."""

    seconds: float = float("nan")
    _start: float = field(default=0.0, repr=False)


@contextmanager
def stopwatch(device: torch.device | str | None = None) -> Iterator[Stopwatch]:
    """Time a block, synchronising the device before starting and before stopping."""
    sw = Stopwatch()
    synchronize(device)
    sw._start = time.perf_counter()
    try:
        yield sw
    finally:
        synchronize(device)
        sw.seconds = time.perf_counter() - sw._start


def rotated_batches(names: list[str], n_examples: int, batch: int, epoch: int, gen: torch.Generator,
                    steps: Iterable[int]) -> Iterator[tuple[int, torch.Tensor, list[str]]]:
    """One epoch of lock-step training: ``(global step, batch indices, method order)`` per step.

    The epoch's permutation is drawn from ``gen``; the order of ``names`` is rotated by one each step so that no
    method always runs first (and warms the caches for the others). ``steps`` is ``range(n_examples // batch)``,
    possibly wrapped in a progress bar.
    """
    perm = torch.randperm(n_examples, generator=gen)
    per_epoch = n_examples // batch
    for i in steps:
        shift = (epoch * per_epoch + i) % len(names)
        yield epoch * per_epoch + i, perm[i * batch:(i + 1) * batch], names[shift:] + names[:shift]
