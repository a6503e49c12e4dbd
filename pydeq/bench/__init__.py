"""``pydeq bench``: reproduce the papers' headline claims as ratios measured side by side, with a report.

A claim is a function ``BenchContext -> ClaimResult`` registered with :func:`claim` in a module under
``pydeq/bench/claims/``; :func:`run_suite` runs a suite of them and writes ``results.json`` (layout in
:mod:`pydeq.bench.schema`), ``report.md`` and PNG plots. See :mod:`pydeq.bench.claim` for an example.
"""

from pydeq.bench.claim import REGISTRY, BenchContext, Claim, ClaimResult, Row, SkipClaim, claim, seed_everything
from pydeq.bench.runner import available_claims, run_suite
from pydeq.bench.timing import Stopwatch, Timing, measure, measure_side_by_side, stopwatch, synchronize

__all__ = [
    "REGISTRY", "BenchContext", "Claim", "ClaimResult", "Row", "SkipClaim", "Stopwatch", "Timing",
    "available_claims", "claim", "measure", "measure_side_by_side", "run_suite", "seed_everything", "stopwatch",
    "synchronize",
]
