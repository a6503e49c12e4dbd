"""Parity of the Julia engine with the native engine on the same weights. Needs Julia: these tests skip
unless juliacall is installed and a Julia is at hand (``julia`` on PATH, ``PYTHON_JULIACALL_EXE``, or
``PYDEQ_JULIA_TESTS=1`` to let juliapkg fetch one). Run them as
``PYTHON_JULIACALL_HANDLE_SIGNALS=yes pytest -p no:faulthandler -m julia``."""

from __future__ import annotations

import importlib.util
import os
import shutil
import warnings

import pytest
import torch

from pydeq import spec
from pydeq.julia import exchange

pytestmark = pytest.mark.julia

_HAVE_JULIA = importlib.util.find_spec("juliacall") is not None and bool(
    shutil.which("julia") or os.environ.get("PYTHON_JULIACALL_EXE") or os.environ.get("PYDEQ_JULIA_TESTS") == "1"
)
_REASON = ("needs Julia: pip install 'pydeq[julia]' and put julia on PATH (or set PYTHON_JULIACALL_EXE/"
           "PYTHON_JULIACALL_PROJECT, or PYDEQ_JULIA_TESTS=1 to let juliapkg install it online)")


@pytest.fixture(scope="module")
def engine():
    if not _HAVE_JULIA:
        pytest.skip(_REASON)
    import pydeq.julia as pj

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pj.TorchImportOrderWarning)
        try:
            return pj.load()
        except pj.JuliaUnavailableError as err:
            pytest.skip(str(err))


def _tight(dtype=torch.float64):
    from pydeq import Broyden

    if dtype == torch.float32:  # what float32 can reach: tighter tolerances only run each solve to its cap
        return Broyden(rtol=1e-5, atol=1e-6, max_steps=300)
    return Broyden(rtol=1e-9, atol=1e-11, max_steps=300)


def _pair(model_spec, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    native = spec.build(model_spec, backend="native").to(dtype)
    for p in native.f.parameters():
        if p.dim() >= 2:
            with torch.no_grad():
                p.mul_(0.5)
    julia = spec.build(model_spec, backend="julia").to(dtype)
    julia.load_state_dict(native.state_dict())
    return native, julia


def _dense_f(n=6, m=3):
    return spec.Chain(spec.Injection(z=spec.Dense(n, n, bias=False), x=spec.Dense(m, n)), spec.Tanh())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_parity_dense(engine, dtype):
    native, julia = _pair(spec.DEQSpec(_dense_f(), solver=_tight(dtype)), dtype)
    x = torch.randn(5, 3, dtype=dtype)
    sol = julia(x, return_solution=True)
    torch.testing.assert_close(sol.z, native(x), rtol=1e-4, atol=1e-5)
    assert sol.nfe > 0 and sol.residual.shape == (5,)
    assert sol.success and sol.extras["julia_retcode"] == "Success"


@pytest.mark.parametrize("kind", ["skip", "skipreg", "continuous"])
def test_forward_parity_variants(engine, kind):
    from pydeq._ode import Tsit5
    from pydeq._ode.steady_state import SteadyState

    f = _dense_f(4, 4)
    model_spec = {
        "skip": spec.SkipDEQSpec(f, init=spec.Dense(4, 4), solver=_tight()),
        "skipreg": spec.SkipRegDEQSpec(f, solver=_tight()),
        "continuous": spec.DEQSpec(f, solver=SteadyState(Tsit5(), rtol=1e-8, atol=1e-10, max_steps=2000)),
    }[kind]
    native, julia = _pair(model_spec)
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(julia(x), native(x), rtol=1e-5, atol=1e-5)


def test_forward_parity_conv(engine):
    f = spec.Chain(spec.Injection(z=spec.Conv2d(2, 2, 3, padding=1, bias=False), x=spec.Conv2d(1, 2, 3, padding=1)),
                   spec.Tanh())
    native, julia = _pair(spec.DEQSpec(f, solver=_tight()))
    x = torch.randn(2, 1, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(julia(x), native(x), rtol=1e-5, atol=1e-5)


def test_gradients_gradcheck_float64(engine):
    from pydeq import GMRES, ImplicitAdjoint

    adjoint = ImplicitAdjoint(linear_solver=GMRES(rtol=1e-11, atol=1e-13))
    _, julia = _pair(spec.DEQSpec(_dense_f(3, 2), solver=_tight(), adjoint=adjoint))
    names = [k for k, _ in julia.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in julia.parameters())
    x = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)

    def run(x, *ps):
        return torch.func.functional_call(julia, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(run, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradients_match_native(engine):
    native, julia = _pair(spec.DEQSpec(_dense_f(), solver=_tight()))
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 6, dtype=torch.float64)
    a = torch.autograd.grad((julia(x) * g).sum(), (x, *julia.parameters()))
    b = torch.autograd.grad((native(x) * g).sum(), (x, *native.parameters()))
    for ga, gb in zip(a, b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)


def test_interop_round_trip_shares_memory(engine):
    from juliacall import Main as jl


    t = torch.zeros(2, 3)
    a = exchange.to_julia(t)
    jl.seval("a -> (a[3, 1] = 7; nothing)")(a)  # Julia (3, 2) = torch (2, 3) reversed
    assert t[0, 2] == 7
    b = jl.seval("zeros(Float64, 3, 2)")
    u = exchange.from_julia(b)
    assert tuple(u.shape) == (2, 3)
    jl.seval("b -> (b[1, 2] = 5; nothing)")(b)
    assert u[1, 0] == 5


def test_conv_gradients_match_native_on_the_matrix_free_adjoint(engine):
    """A conv state of 2 x 2 x 5 x 4 = 80 entries: SciMLSensitivity's matrix-free operator path (which needs the
    flat residual of DeepEquilibriumNetworks >= 2.7.1); PyDEQ names GMRES, so it is taken at every size."""
    from pydeq import GMRES, ImplicitAdjoint

    f = spec.Chain(spec.Injection(z=spec.Conv2d(2, 2, 3, padding=1, bias=False), x=spec.Conv2d(1, 2, 3, padding=1)),
                   spec.Tanh())
    adjoint = ImplicitAdjoint(linear_solver=GMRES(rtol=1e-10, atol=1e-12, max_steps=200))
    native, julia = _pair(spec.DEQSpec(f, solver=_tight(), adjoint=adjoint))
    x = torch.randn(2, 1, 5, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 2, 5, 4, dtype=torch.float64)
    a = torch.autograd.grad((julia(x) * g).sum(), (x, *julia.parameters()))
    b = torch.autograd.grad((native(x) * g).sum(), (x, *native.parameters()))
    for ga, gb in zip(a, b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("solver", ["broyden", "continuous"])
def test_a_capped_solve_reports_julias_verdict(engine, solver):
    from pydeq import Broyden, ConvergenceError, Status
    from pydeq._ode import Tsit5
    from pydeq._ode.steady_state import SteadyState

    capped = {"broyden": Broyden(rtol=1e-12, atol=1e-14, max_steps=1),
              "continuous": SteadyState(Tsit5(), rtol=1e-12, atol=1e-14, max_steps=2)}[solver]
    _, julia = _pair(spec.DEQSpec(_dense_f(), solver=capped))
    x = torch.randn(4, 3, dtype=torch.float64)
    julia.on_failure = "return"
    sol = julia(x, return_solution=True)
    assert sol.status.tolist() == [int(Status.MAX_STEPS)] * 4
    assert sol.extras["julia_retcode"] in ("MaxIters", "Failure")
    julia.on_failure = "raise"
    with pytest.raises(ConvergenceError, match="Julia solve"):
        julia(x)


def test_to_julia_keeps_the_buffer_alive_and_copies_only_non_contiguous(engine):
    import gc

    from juliacall import Main as jl


    a = exchange.to_julia(torch.arange(6.0).reshape(2, 3))  # the tensor is dropped at once
    nc = torch.zeros(3, 2, dtype=torch.float64).t()
    b = exchange.to_julia(nc)  # a private copy
    gc.collect()
    jl.seval("GC.gc(true); GC.gc(true)")
    assert jl.seval("a -> collect(vec(a))")(a).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    jl.seval("b -> (b[1, 1] = 5; nothing)")(b)
    assert nc[0, 0] == 0  # writes to the copy do not reach a non-contiguous tensor
    with pytest.raises(ValueError, match="not contiguous"):
        exchange.to_julia(nc, copy=False)


_CUDA_DEVICES = torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.skipif(_CUDA_DEVICES < 2, reason="needs two CUDA devices")
def test_a_tensor_on_the_second_gpu_is_read_on_its_own_device(engine):
    native, julia = _pair(spec.DEQSpec(_dense_f(), solver=_tight()))
    native, julia = native.to("cuda:1"), julia.to("cuda:1")
    x = torch.randn(5, 3, dtype=torch.float64, device="cuda:1")
    torch.testing.assert_close(julia(x), native(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(_CUDA_DEVICES < 1, reason="needs a CUDA device")
def test_from_julia_of_a_cuarray_shares_under_cuda5_and_teaches_under_cuda6(engine):
    from juliacall import JuliaError
    from juliacall import Main as jl


    exchange.to_julia(torch.zeros(2, device="cuda"))  # loads CUDA.jl
    a = jl.seval("CUDA.zeros(Float32, 3, 2)")
    if jl.seval("pkgversion(CUDA) >= v\"6\""):
        with pytest.raises(JuliaError, match="CUDA.Mem"):
            exchange.from_julia(a)
    else:
        assert tuple(exchange.from_julia(a).shape) == (2, 3)
