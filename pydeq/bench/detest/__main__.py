"""``python -m pydeq.bench.detest``: run the DETEST work-precision comparison and write its tables and plots."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from . import PROBLEMS, run
from . import __doc__ as DOC
from .report import plot_classes, tables

__all__ = ["main"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m pydeq.bench.detest", description=DOC.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("detest-results"))
    parser.add_argument("--only", nargs="+", metavar="PROBLEM", default=None, help="e.g. A3 B1 (default: all)")
    parser.add_argument("--quick", action="store_true", help="a few tolerances, one repeat, no batched runs")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    known = {p.name for p in PROBLEMS}
    if args.only and not set(args.only) <= known:
        parser.error(f"unknown problem(s) {sorted(set(args.only) - known)}; choose from {sorted(known)}")
    record = run(only=args.only, quick=args.quick, batch=args.batch, repeats=args.repeats, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(record, indent=1))
    text = tables(record)
    (args.out / "detest.md").write_text(text)
    plot_classes(record, args.out)
    print(text)
    return record


if __name__ == "__main__":
    main()
