"""``python -m pydeq.julia``: where the Julia project is, and a one-time set-up that resolves and precompiles it.

    python -m pydeq.julia paths   # print the Julia project and juliapkg.json locations (never starts Julia)
    python -m pydeq.julia setup   # start Julia once: juliapkg resolve + precompile (online the first time)
"""

from __future__ import annotations

import argparse
import sys
import time

from . import JULIAPKG_DIR, PROJECT_DIR, JuliaUnavailableError, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pydeq.julia", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["paths", "setup"])
    args = parser.parse_args(argv)
    if args.command == "paths":
        print(f"julia project:  {PROJECT_DIR}\njuliapkg.json:  {JULIAPKG_DIR}")
        return 0
    t0 = time.perf_counter()
    try:
        load()
    except JuliaUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Julia engine ready in {time.perf_counter() - t0:.1f} s (later starts reuse the precompiled cache)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
