"""The only module that imports juliacall; every call into Julia goes through :class:`JuliaEngine`."""

from __future__ import annotations

import os
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import ENV_DEFAULTS, JULIAPKG_DIR, PROJECT_DIR, JuliaUnavailableError, TorchImportOrderWarning
from . import exchange as interop

__all__ = ["JuliaEngine", "JuliaForward", "start", "engine_if_started"]

# One lock serialises every Julia call: autograd may run backward on another thread (torch's CUDA
# worker threads), and juliacall needs calls serialised (REFERENCES.md §6).
_LOCK = threading.RLock()
_ENGINE: JuliaEngine | None = None
_ERROR: JuliaUnavailableError | None = None

_REMEDIES = (
    "Remedies: (1) install the extra: pip install 'pydeq[julia]'; (2) use a Julia you already have: set "
    "PYTHON_JULIACALL_EXE=/path/to/julia and PYTHON_JULIACALL_PROJECT=/path/to/project (a Julia project where "
    f'you ran: using Pkg; Pkg.develop(path="{PROJECT_DIR}")); (3) let juliapkg install Julia and the packages: '
    "go online for the first start and unset PYTHON_JULIAPKG_OFFLINE (later starts work offline). "
    "Or keep the native engine: backend='native'."
)


@dataclass(frozen=True)
class JuliaForward:
    """What one Julia forward solve returns.

    Attributes:
        z: ``(batch, *state)`` the answer, in torch-allocated memory.
        residual: ``(batch,)`` Euclidean norm of ``f(z, x) - z`` per sample.
        nfe: function evaluations (each on the whole batch).
        success: Julia's own verdict (``SciMLBase.successful_retcode``), one for the whole batch: the solve
            stops once ``max_b ||r_b|| <= abstol`` or ``max_b ||r_b|| <= reltol * max_b ||r_b + z_b||``.
        retcode: the solver's return code (``"Success"``, ``"MaxIters"``, ``"Failure"``, ``"Stalled"``, ...).
    """

    z: Tensor
    residual: Tensor
    nfe: int
    success: bool
    retcode: str


class JuliaEngine:
    """Handle-based access to the Julia package ``PyDEQ``: destination passing, flat DLPack tensors.

    Every call names the torch device of its tensors (``-1`` for the CPU), and Julia makes that device CUDA.jl's
    active one for the call.

    Args:
        jl: the Julia module ``PyDEQ`` as juliacall exposes it (anything with ``py_build``, ``py_forward``,
            ``py_vjp``, ``py_wrap``, ``share`` and ``release`` works, which is how the tests check this class).
    """

    def __init__(self, jl: Any, main: Any = None):
        self.jl = jl
        self.main = main  # juliacall.Main, for loading CUDA.jl on first use
        self._cuda = False

    def _ensure_cuda(self, *tensors: Tensor) -> None:
        """Load CUDA.jl (and cuDNN for convolutions) the first time a CUDA tensor crosses."""
        if self._cuda or not any(t.device.type == "cuda" for t in tensors):
            return
        try:
            self._call(self.main.seval, "using CUDA, cuDNN")
        except Exception as err:
            raise RuntimeError(
                "CUDA tensors need CUDA.jl and cuDNN.jl in the Julia environment: python -m juliapkg add CUDA "
                "--uuid=052768ef-5323-5732-b1bb-66c8b64840ba && python -m juliapkg add cuDNN "
                f"--uuid=02a925ec-e4fe-4b08-9a7e-0d78e3d38ccd (then restart Python). Julia said: {err}"
            ) from err
        self._cuda = True

    def _call(self, fn: Any, *args: Any) -> Any:
        with _LOCK:
            return fn(*args)

    def build(self, spec_json: str) -> int:
        """Build the model a spec's JSON describes; returns its handle."""
        return int(self._call(self.jl.py_build, spec_json))

    def release(self, handle: int) -> bool:
        return bool(self._call(self.jl.release, handle))

    def forward(self, handle: int, x: Tensor, theta: Tensor, z_shape: list[int]) -> JuliaForward:
        """Solve; ``z*: z_shape`` and ``residual: (batch,)`` are allocated here, by torch, and Julia writes them."""
        device = interop.device_index(x=x, theta=theta)
        xf, x_shape = interop.flat_for_julia("x", x)
        tf, _ = interop.flat_for_julia("theta", theta)
        self._ensure_cuda(x, theta)
        z = torch.empty(z_shape, dtype=x.dtype, device=x.device)
        residual = torch.empty(z_shape[0], dtype=x.dtype, device=x.device)
        interop.sync_device(x, theta)
        nfe, success, retcode = self._call(self.jl.py_forward, handle, z.view(-1), residual, xf, tf, tuple(z_shape),
                                           x_shape, device)
        return JuliaForward(z=z, residual=residual, nfe=int(nfe), success=bool(success), retcode=str(retcode))

    def vjp(self, handle: int, x: Tensor, theta: Tensor, z: Tensor, gz: Tensor) -> tuple[Tensor, Tensor]:
        """``(gx, gtheta)``: the implicit-adjoint vector-Jacobian product of ``z*(x, theta)`` with ``gz``."""
        device = interop.device_index(x=x, theta=theta, z=z, grad_z=gz)
        xf, x_shape = interop.flat_for_julia("x", x)
        tf, _ = interop.flat_for_julia("theta", theta)
        zf, z_shape = interop.flat_for_julia("z", z)
        gf, _ = interop.flat_for_julia("grad_z", gz)
        self._ensure_cuda(x, theta, z, gz)
        gx, gtheta = torch.empty_like(xf), torch.empty_like(tf)
        interop.sync_device(x, theta, z, gz)
        self._call(self.jl.py_vjp, handle, gx, gtheta, xf, tf, zf, gf, z_shape, x_shape, device)
        return gx.view(x_shape), gtheta

    def to_julia(self, t: Tensor, *, copy: bool | None = None) -> Any:
        """:func:`pydeq.julia.exchange.to_julia`: shares ``t``'s buffer unless a copy is needed or asked for."""
        flat, shape = interop.flat_for_julia("t", t, copy=copy)
        device = interop.device_index(t=t)
        self._ensure_cuda(t)
        interop.sync_device(t)
        return self._call(self.jl.py_wrap, flat, shape, device)

    def from_julia(self, a: Any) -> Tensor:
        """:func:`pydeq.julia.exchange.from_julia`: Julia's ``PyDEQ.share`` hands ``a`` to ``torch.from_dlpack``."""
        return self._call(self.jl.share, a, torch.from_dlpack)


def engine_if_started() -> JuliaEngine | None:
    return _ENGINE


def start() -> JuliaEngine:
    """Start Julia once; a failure is remembered and re-raised (juliacall cannot be re-initialised)."""
    global _ENGINE, _ERROR
    with _LOCK:
        if _ENGINE is not None:
            return _ENGINE
        if _ERROR is not None:
            raise _ERROR
        try:
            _ENGINE = JuliaEngine(*_import_pydeq_module())
        except JuliaUnavailableError as err:
            _ERROR = err
            raise
        return _ENGINE


def _import_pydeq_module() -> tuple[Any, Any]:
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if JULIAPKG_DIR not in sys.path:
        sys.path.append(JULIAPKG_DIR)
    if "juliacall" not in sys.modules and "torch" in sys.modules:
        warnings.warn(
            "torch was imported before juliacall, which can crash on Linux (clashing LLVM symbols). If Julia "
            "crashes, make `import juliacall` the first import of your script, before torch and pydeq.",
            TorchImportOrderWarning,
            stacklevel=4,
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch was imported before juliacall")  # said above
            import juliacall
    except ModuleNotFoundError as err:
        if err.name not in ("juliacall", "juliapkg"):
            raise JuliaUnavailableError(f"juliacall failed to import ({err}). {_REMEDIES}") from err
        raise JuliaUnavailableError(
            "the Julia engine needs juliacall, which is not installed: pip install 'pydeq[julia]'. " + _REMEDIES
        ) from None
    except Exception as err:  # juliapkg/juliacall raise plain Exception when Julia cannot be found or started
        offline = os.environ.get("PYTHON_JULIAPKG_OFFLINE", "").lower() in ("yes", "true", "1")
        why = " (PYTHON_JULIAPKG_OFFLINE is set, so nothing can be downloaded)" if offline else ""
        raise JuliaUnavailableError(f"juliacall could not start Julia{why}: {err}. {_REMEDIES}") from err
    try:
        juliacall.Main.seval("using PyDEQ: PyDEQ")
        return juliacall.Main.PyDEQ, juliacall.Main
    except Exception as err:
        raise JuliaUnavailableError(
            f"Julia started but the PyDEQ package did not load: {err}. With PYTHON_JULIACALL_PROJECT set, develop "
            f'it into that project (Pkg.develop(path="{PROJECT_DIR}")); otherwise run once online so juliapkg '
            "resolves it."
        ) from err
