"""Optional Julia engine: DeepEquilibriumNetworks.jl solves and adjoints behind torch modules.

Nothing here imports juliacall until :func:`load` is called (directly, through ``backend="julia"`` on a
:class:`pydeq.spec.SpecModel`, ``pydeq bench --backend julia`` or ``PYDEQ_BACKEND=julia``), so
``import pydeq`` and ``import pydeq.julia`` stay cheap and work without Julia.

Set-up on a machine with Julia and network: ``pip install 'pydeq[julia]'``; the first :func:`load`
resolves the Julia project shipped in this package (``PROJECT_DIR``) with juliapkg and precompiles it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .._solution import Solution
from ..spec.models import register_engine

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from ..spec.models import SpecModel
    from ._runtime import JuliaEngine

__all__ = ["JuliaUnavailableError", "TorchImportOrderWarning", "load", "is_loaded", "solve_spec",
           "PROJECT_DIR", "JULIAPKG_DIR", "PROJECT_UUID", "ENV_DEFAULTS"]

_HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT_DIR = os.path.join(_HERE, "PyDEQ")
"""The Julia package (Project.toml, src/, ext/, test/) shipped inside pydeq."""
JULIAPKG_DIR = os.path.join(_HERE, "_juliapkg")
"""Folder holding only ``juliapkg.json``; put on ``sys.path`` by :func:`load` so juliapkg finds it then and
only then (juliapkg scans ``sys.path`` entries and their immediate subfolders, which never reach here)."""
PROJECT_UUID = "3d12b7de-6038-47a1-b944-f8c994db72de"

ENV_DEFAULTS = {
    "PYTHON_JULIACALL_HANDLE_SIGNALS": "yes",  # required with Julia threads; avoids segfaults
    "PYTHON_JULIACALL_THREADS": "auto",
    "PYTHON_JULIACALL_OPTLEVEL": "3",
    "PYTHON_JULIACALL_AUTOLOAD_IPYTHON_EXTENSION": "no",
}
"""Set with ``os.environ.setdefault`` just before juliacall is imported (a user's own values win)."""


class JuliaUnavailableError(ImportError):
    """The Julia engine cannot start; the message names what is missing and how to fix it."""


class TorchImportOrderWarning(RuntimeWarning):
    """torch was imported before juliacall, a known crash source on Linux (clashing LLVM symbols)."""


def load() -> JuliaEngine:
    """Start Julia (once per process) and return the engine; raises :class:`JuliaUnavailableError`."""
    from ._runtime import start

    return start()


def is_loaded() -> bool:
    """Whether the engine has started in this process (never starts it)."""
    import sys

    runtime = sys.modules.get(__name__ + "._runtime")
    return runtime is not None and runtime.engine_if_started() is not None


def solve_spec(model: SpecModel, x: Tensor) -> Solution:
    """Solve a :class:`pydeq.spec.SpecModel` at ``x`` in Julia (its ``backend="julia"`` engine); starts Julia."""
    from ._op import julia_fixed_point

    return julia_fixed_point(model, x)


register_engine("julia", solve_spec)  # spec.build(..., backend="julia") runs here once this package is imported
