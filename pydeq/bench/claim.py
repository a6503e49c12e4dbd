"""What a benchmark claim is: a registered function ``BenchContext -> ClaimResult``.

A claim reproduces one headline statement of a paper ("a continuous DEQ trains 2–4× cheaper than a neural ODE")
as ratios measured side by side in one run. Write one like this::

    from pydeq.bench import BenchContext, ClaimResult, Row, claim

    @claim("cdeq-vs-node", title="Continuous DEQ vs neural ODE: training time",
           paper="Pal, Edelman, Rackauckas (2022), arXiv 2201.12240", data=("mnist",))
    def cdeq_vs_node(ctx: BenchContext) -> ClaimResult:
        x, y = ctx.data("mnist", "train", limit=ctx.scale(quick=2_000, paper=60_000))
        ...train each model for ctx.scale(quick=2, paper=25) epochs under ctx.bar(...), record per-epoch series...
        t = ctx.measure_side_by_side({"cdeq": step_cdeq, "node": step_node})
        return ClaimResult(
            rows=[Row.speedup("cdeq", "node", t["cdeq"], t["node"], quantity="training step time",
                              paper_figure="2–4×", at_least=2.0,
                              why_not="at this width the ODE needs few steps, so there is little to save")],
            series={"time_per_epoch": {"cdeq": [...], "node": [...]}, "accuracy": {...}},
            setup={"epochs": 2, "batch": 32}, summary="...")
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pydeq.bench.timing import Timing, measure, measure_side_by_side
from pydeq.data import DATASETS

__all__ = ["REGISTRY", "BenchContext", "Claim", "ClaimResult", "Row", "SkipClaim", "claim", "seed_everything"]

SUITES = ("quick", "paper", "engine")


class SkipClaim(Exception):
    """Raise from a claim when it cannot run here (no CUDA, no Julia, …); the message goes in the report."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) and ask cuDNN for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


@dataclass(frozen=True, kw_only=True)
class Row:
    """One measured comparison: ``method`` against ``peer``, beside the paper's figure.

    ``ratio`` is the measured figure as a number (a speed-up is ``peer time / method time``, from medians;
    ``ratio_min`` from minima), ``target`` the value it is held against, ``held`` whether the claim held
    (``None`` when the row only informs). ``metrics`` holds the raw numbers, e.g. ``{"method_median_s": ...}``.
    """

    method: str
    peer: str | None = None
    quantity: str
    metrics: dict[str, float] = field(default_factory=dict)
    ratio: float | None = None
    ratio_min: float | None = None
    target: float | None = None
    paper_figure: str = ""
    measured_figure: str = ""
    held: bool | None = None
    why: str = ""

    @classmethod
    def speedup(cls, method: str, peer: str, method_time: Timing, peer_time: Timing, *, quantity: str,
                paper_figure: str, at_least: float, why_not: str = "") -> Row:
        """How many times faster ``method`` is than ``peer``; held when the median ratio is ``>= at_least``.

        ``why_not`` explains, for the report, why the claim may not hold at this scale.
        """
        ratio, ratio_min = peer_time.median / method_time.median, peer_time.min / method_time.min
        held = ratio >= at_least
        why = f"median ratio {ratio:.2f}× {'≥' if held else '<'} {at_least:g}×"
        return cls(method=method, peer=peer, quantity=quantity, ratio=ratio, ratio_min=ratio_min, target=at_least,
                   metrics={"method_median_s": method_time.median, "method_min_s": method_time.min,
                            "peer_median_s": peer_time.median, "peer_min_s": peer_time.min},
                   paper_figure=paper_figure, measured_figure=f"{ratio:.2f}× (min {ratio_min:.2f}×)", held=held,
                   why=why if held or not why_not else f"{why}: {why_not}")

    def to_json(self) -> dict[str, Any]:
        def num(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else float(v)

        return {"method": self.method, "peer": self.peer, "quantity": self.quantity,
                "metrics": {k: num(v) for k, v in self.metrics.items()}, "ratio": num(self.ratio),
                "ratio_min": num(self.ratio_min), "target": num(self.target), "paper_figure": self.paper_figure,
                "measured_figure": self.measured_figure or ("" if self.ratio is None else f"{self.ratio:.2f}×"),
                "held": self.held, "why": self.why}


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf: "not measured" or a diverged run) replaced by ``None``,
    recursively through dicts, lists and tuples, so that the results file stays strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


@dataclass(kw_only=True)
class ClaimResult:
    """What a claim returns: its rows plus what the report shows around them.

    ``series`` maps a kind to ``{method: values}``; the kinds ``time_per_epoch`` (s), ``nfe_per_epoch``,
    ``accuracy`` (per epoch, in [0, 1]) and ``loss`` are drawn as curves over epochs, ``backward_time``
    (repeated samples, s) as bars of median with the minimum marked; any other kind is drawn as curves.
    """

    rows: list[Row]
    summary: str = ""
    notes: str = ""
    series: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """``held`` / ``not_held`` / ``partial`` / ``inconclusive`` from the rows' ``held`` values."""
        verdicts = [r.held for r in self.rows if r.held is not None]
        if not verdicts:
            return "inconclusive"
        return "held" if all(verdicts) else "not_held" if not any(verdicts) else "partial"


@dataclass(kw_only=True)
class BenchContext:
    """Everything a claim may use: seed, device, backend, repeats, data and output folders, progress bars.

    ``engines`` records which engine ran each method (filled by :func:`pydeq.bench.routing.route` under
    ``--backend julia``; the runner labels the rows from it). ``jobs``: how many processes a claim may run its
    independent parts in (:func:`pydeq.bench.parallel.in_processes`; ``--jobs``).
    """

    suite: str
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str = "native"
    repeats: int = 5
    out_dir: Path = Path(".")
    data_dir: Path | None = None
    progress: bool = True
    fetch: bool = True
    engines: dict[str, Any] = field(default_factory=dict)
    jobs: int = 1

    def scale(self, *, quick: Any, paper: Any) -> Any:
        """Pick a size by suite: ``paper`` for the paper suite, ``quick`` otherwise."""
        return paper if self.suite == "paper" else quick

    def bar(self, iterable: Iterable[Any] | None = None, *, desc: str, total: int | None = None,
            unit: str = "it") -> Any:
        """A tqdm progress bar on stderr (disabled with ``progress=False``)."""
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True,
                    disable=not self.progress)

    def measure(self, fn: Callable[[], object], *, repeats: int | None = None, warmup: int = 1) -> Timing:
        """:func:`pydeq.bench.timing.measure` with this run's repeats and device."""
        return measure(fn, repeats=repeats or self.repeats, warmup=warmup, device=self.device)

    def measure_side_by_side(self, fns: dict[str, Callable[[], object]], *, repeats: int | None = None,
                             warmup: int = 1) -> dict[str, Timing]:
        """:func:`pydeq.bench.timing.measure_side_by_side` with this run's repeats and device."""
        return measure_side_by_side(fns, repeats=repeats or self.repeats, warmup=warmup, device=self.device)

    def data(self, name: str, split: str = "train", limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Load a data set from ``data_dir`` (fetching it first if missing and ``fetch``); tensors on CPU."""
        from pydeq.data import DataMissingError, load

        try:
            return load(name, split, limit, cache_dir=self.data_dir)
        except DataMissingError:
            if not self.fetch:
                raise
        from pydeq.bench.fetch import fetch

        fetch(name, self.data_dir, progress=self.progress)
        return load(name, split, limit, cache_dir=self.data_dir)


@dataclass(frozen=True)
class Claim:
    """A registered claim: its function and what the report says about it."""

    name: str
    fn: Callable[[BenchContext], ClaimResult]
    title: str
    paper: str
    suites: tuple[str, ...]
    data: tuple[str, ...]


REGISTRY: dict[str, Claim] = {}


def claim(name: str, *, title: str, paper: str, suites: tuple[str, ...] = ("quick", "paper"),
          data: tuple[str, ...] = ()) -> Callable[[Callable[[BenchContext], ClaimResult]],
                                                  Callable[[BenchContext], ClaimResult]]:
    """Register ``fn(ctx) -> ClaimResult`` as claim ``name`` in ``suites`` (it can always be run with ``--only``).

    ``data`` names the data sets the claim reads (names in :data:`pydeq.data.DATASETS`).
    """
    bad = [s for s in suites if s not in SUITES]
    if bad:
        raise ValueError(f"unknown suites {bad} for claim {name!r}; choose from {SUITES}.")
    unknown = [d for d in data if d not in DATASETS]
    if unknown:
        raise ValueError(f"unknown data sets {unknown} for claim {name!r}; choose from {DATASETS}.")

    def register(fn: Callable[[BenchContext], ClaimResult]) -> Callable[[BenchContext], ClaimResult]:
        old = REGISTRY.get(name)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"claim {name!r} is registered twice ({old.fn.__module__} and "
                             f"{fn.__module__}); give one another name.")
        REGISTRY[name] = Claim(name, fn, title, paper, tuple(suites), tuple(data))
        return fn

    return register
