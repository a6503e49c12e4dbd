"""Helpers shared by the Table 1 and Table 2 claims: rows judged against a band of the paper's, paper-style tables."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from pydeq.bench.claim import Row

__all__ = ["band_row", "ratio_band", "paper_table"]


def ratio_band(num: tuple[float, float], den: tuple[float, float]) -> tuple[float, float, float]:
    """The paper's ratio ``num / den`` of two ``(mean, std)`` entries and its one-standard-deviation band
    ``(ratio, low, high)``, the relative deviations added in quadrature."""
    ratio = num[0] / den[0]
    rel = math.hypot(num[1] / num[0], den[1] / den[0])
    return ratio, ratio * (1 - rel), ratio * (1 + rel)


def band_row(row: Row, *, paper: float, low: float, high: float, source: str, judged: bool = True,
             caveat: str = "") -> Row:
    """``row`` (a :meth:`Row.speedup`) held when its median ratio lies in ``[low, high]``; ``source`` says which
    of the paper's numbers the band is (shown in the report). ``judged=False`` keeps the row informational
    (``caveat`` says why)."""
    inside = low <= row.ratio <= high
    why = (f"median {row.ratio:.2f}× {'inside' if inside else 'outside'} [{low:.2f}, {high:.2f}]× ({source})")
    metrics = {**row.metrics, "paper_ratio": paper, "paper_low": low, "paper_high": high}
    if not judged:
        return dataclasses.replace(row, held=None, target=None, metrics=metrics, why=f"no verdict: {caveat}; {why}",
                                   paper_figure=f"{paper:.2f}× [{low:.2f}–{high:.2f}]")
    return dataclasses.replace(row, held=inside, target=low, metrics=metrics, why=why + (f"; {caveat}" if caveat
                                                                                       else ""),
                               paper_figure=f"{paper:.2f}× [{low:.2f}–{high:.2f}]")


def paper_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table (cells already formatted, e.g. ``"97.9 / 81.2"`` for paper / measured)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
