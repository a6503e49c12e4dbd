"""Benchmark claims: every module in this package is imported by :func:`discover` and registers its claims.

To add a claim, drop a module here (``pydeq/bench/claims/<topic>.py``) that decorates its functions with
:func:`pydeq.bench.claim`; nothing else needs to change.
"""

from __future__ import annotations

import importlib
import pkgutil
import traceback

__all__ = ["discover"]

# Modules outside this package that register claims; a missing one is fine, a broken one is reported.
_EXTRA = ("pydeq.bench.selftest", "pydeq.bench.engine")


def discover() -> dict[str, str]:
    """Import every claim module; return ``{module: traceback}`` for those that failed to import.

    A broken module does not stop the others: the runner reports it as an errored entry instead.
    """
    failures: dict[str, str] = {}
    names = [*_EXTRA, *(f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))]
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name or name not in _EXTRA:
                failures[name] = traceback.format_exc()
        except Exception:  # noqa: BLE001 - reported in the results, not hidden
            failures[name] = traceback.format_exc()
    return failures
