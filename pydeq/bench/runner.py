"""Run a suite of claims, writing complete results after each one.

``results.json`` and ``report.md`` are rewritten after every claim, so Ctrl-C (``KeyboardInterrupt``) leaves
valid results for every claim that finished, with ``status: "interrupted"``. A claim that raises is recorded as
an error (with its traceback) and the run goes on; :class:`~pydeq.bench.claim.SkipClaim` and missing data
mark it skipped.
"""

from __future__ import annotations

import datetime as dt
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from pydeq.bench.claim import REGISTRY, BenchContext, Claim, ClaimResult, SkipClaim, json_safe, seed_everything
from pydeq.bench.claims import discover
from pydeq.bench.plots import plot_claim
from pydeq.bench.report import write_report
from pydeq.bench.routing import label_rows
from pydeq.bench.schema import STATUSES
from pydeq.bench.system import machine_info

__all__ = ["DEFAULT_REPEATS", "available_claims", "run_suite"]

DEFAULT_REPEATS = {"quick": 3, "paper": 7, "engine": 5}
_IMPORT_ERRORS: dict[str, str] = {}


def available_claims() -> dict[str, Claim]:
    """Every registered claim, after importing the claim modules (import failures are kept for the report)."""
    _IMPORT_ERRORS.update(discover())
    return dict(REGISTRY)


@contextmanager
def _deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C until the block ends, so results and report are never left half-written (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _record(claim: Claim, status: str, elapsed: float, result: ClaimResult | None = None,
            error: str | None = None) -> dict[str, Any]:
    return {
        "name": claim.name, "title": claim.title, "paper": claim.paper, "status": status, "elapsed_s": elapsed,
        "summary": result.summary if result else "", "notes": result.notes if result else "",
        "setup": json_safe(result.setup) if result else {},
        "rows": [r.to_json() for r in result.rows] if result else [],
        "series": {k: {m: [json_safe(float(v)) for v in vals] for m, vals in by.items()}
                   for k, by in result.series.items()} if result else {},
        "plots": [], "error": error,
    }


def _run_one(claim: Claim, ctx: BenchContext) -> dict[str, Any]:
    from pydeq.data import DataMissingError

    seed_everything(ctx.seed)
    t0 = time.perf_counter()
    try:
        result = claim.fn(ctx)
        if not isinstance(result, ClaimResult):
            raise TypeError(f"claim {claim.name!r} returned {type(result).__name__}; it must return a ClaimResult.")
        if ctx.backend == "julia":  # every row says which engine produced it
            result = label_rows(claim.name, result, ctx)
    except (SkipClaim, DataMissingError) as e:
        return _record(claim, "skipped", time.perf_counter() - t0, error=f"{type(e).__name__}: {e}")
    except Exception:  # noqa: BLE001 - one failing claim must not lose the others
        return _record(claim, "error", time.perf_counter() - t0, error=traceback.format_exc())
    return _record(claim, result.status, time.perf_counter() - t0, result)


def _select(suite: str, only: Sequence[str] | None, claims: dict[str, Claim]) -> list[Claim]:
    if only:
        unknown = [n for n in only if n not in claims]
        if unknown:
            raise ValueError(f"unknown claim(s) {unknown}; available: {sorted(claims)}.")
        return [claims[n] for n in dict.fromkeys(only)]
    return [c for c in claims.values() if suite in c.suites]


def _new_results(suite: str, argv: Sequence[str] | None, device: torch.device, config: dict[str, Any]) -> dict:
    """The results record of a run that has just started, with an errored entry per claim module that failed to
    import."""
    results: dict[str, Any] = {
        "schema_version": 1, "tool": "pydeq bench", "suite": suite, "status": "running", "started_at": _now(),
        "finished_at": None, "elapsed_s": 0.0, "argv": list(argv if argv is not None else sys.argv),
        "config": config, "machine": machine_info(device), "claims": [], "counts": dict.fromkeys(STATUSES, 0),
    }
    for module, tb in _IMPORT_ERRORS.items():
        broken = Claim(f"import:{module}", lambda ctx: ClaimResult(rows=[]), f"Claim module {module}", "", (), ())
        results["claims"].append(_record(broken, "error", 0.0, error=tb))
    return results


def run_suite(suite: str, *, out_dir: str | Path, only: Sequence[str] | None = None, seed: int = 0,
              device: str | torch.device = "cpu", backend: str = "native", repeats: int | None = None,
              data_dir: str | Path | None = None, progress: bool = True, fetch: bool = True,
              argv: Sequence[str] | None = None, echo: Callable[[str], None] | None = None,
              jobs: int = 1) -> dict[str, Any]:
    """Run the claims of ``suite`` (or just ``only``) and write results, report and plots into ``out_dir``.

    Returns the results record (see :mod:`pydeq.bench.schema`); its ``status`` is ``"interrupted"`` when a
    ``KeyboardInterrupt`` stopped the run, in which case everything that finished is already on disk.
    ``echo`` receives one line per finished claim (default: stderr, above the progress bars);
    :func:`pydeq.bench.report.summary_table` formats the returned record for a terminal. ``jobs``: processes a
    claim may run its independent parts in (:func:`pydeq.bench.parallel.in_processes`; results do not depend
    on it, only the wall time does).
    """
    from tqdm import tqdm

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1 (processes a claim may use); got {jobs!r}.")

    out_dir, device = Path(out_dir), torch.device(device)
    echo = echo or (lambda s: tqdm.write(s, file=sys.stderr))
    selected = _select(suite, only, available_claims())
    repeats = repeats or DEFAULT_REPEATS.get(suite, 5)
    start = time.perf_counter()
    results = _new_results(suite, argv, device, {
        "seed": seed, "device": str(device), "backend": backend, "repeats": repeats,
        "data_dir": None if data_dir is None else str(data_dir), "out_dir": str(out_dir),
        "only": list(only) if only else None, "jobs": jobs})

    def save() -> None:
        results["elapsed_s"] = time.perf_counter() - start
        results["counts"] = {s: sum(c["status"] == s for c in results["claims"]) for s in STATUSES}
        write_report(results, out_dir)

    with _deferred_interrupt():
        import matplotlib.figure  # noqa: F401 - imported whole now: a Ctrl-C mid-import would break later plots

        save()
    ctx_args = dict(suite=suite, seed=seed, device=device, backend=backend, repeats=repeats, out_dir=out_dir,
                    data_dir=None if data_dir is None else Path(data_dir), progress=progress, fetch=fetch, jobs=jobs)
    bar = tqdm(selected, desc=f"pydeq bench {suite}", unit="claim", disable=not progress, dynamic_ncols=True)
    current: Claim | None = None
    t_claim = time.perf_counter()
    try:
        for current in bar:
            bar.set_postfix_str(current.name)
            t_claim = time.perf_counter()
            record = _run_one(current, BenchContext(**ctx_args))
            with _deferred_interrupt():
                record["plots"] = plot_claim(record, out_dir)
                results["claims"].append(record)
                current = None
                echo(f"{record['name']}: {record['status'].replace('_', ' ')} ({record['elapsed_s']:.1f} s)")
                save()
    except KeyboardInterrupt:
        results["status"] = "interrupted"
        if current is not None:
            results["claims"].append(_record(current, "interrupted", time.perf_counter() - t_claim))
    finally:
        bar.close()
    if results["status"] != "interrupted":
        results["status"] = "complete"
    results["finished_at"] = _now()
    with _deferred_interrupt():
        save()
    return results
