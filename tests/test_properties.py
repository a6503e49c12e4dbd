"""Property-based tests over bad and unusual input: a correct result, a flagged sample or a clear error, never a
hang, a crash or a silently wrong answer.

The oracle for every solve: each sample marked converged must satisfy the tolerance when its residual is
recomputed here, independently of the solver; every other sample must be counted in ``failures()``. Linear maps
have a closed-form answer that converged samples must match.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pydeq

SOLVERS = {
    "anderson": lambda: pydeq.Anderson(rtol=1e-4, atol=1e-6, max_steps=40),
    "broyden": lambda: pydeq.Broyden(rtol=1e-4, atol=1e-6, max_steps=40),
    "picard": lambda: pydeq.FixedPointIteration(rtol=1e-4, atol=1e-6, max_steps=60),
    "newton": lambda: pydeq.NewtonKrylov(rtol=1e-4, atol=1e-6, max_steps=20),
}
CLEAR_ERRORS = (ValueError, TypeError, pydeq.NonFiniteError, pydeq.ConvergenceError)
PROFILE = settings(max_examples=25, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_oracle(f, x: torch.Tensor, sol: pydeq.Solution, solver) -> None:
    """Converged samples really meet the tolerance; the rest are flagged; shapes and dtypes are kept."""
    assert sol.z.shape == x.shape and sol.z.dtype == x.dtype
    assert sol.status.shape == sol.residual.shape == (x.shape[0],)
    with torch.no_grad():
        fz = f(sol.z.detach(), x)
        res = torch.linalg.vector_norm((fz - sol.z).flatten(1).double(), dim=1)
        tol = solver.atol + solver.rtol * torch.linalg.vector_norm(fz.flatten(1).double(), dim=1)
    slack = 1.01 + 10 * torch.finfo(x.dtype).eps * math.sqrt(x[0].numel())
    ok = sol.converged
    assert bool((res[ok] <= slack * tol[ok] + torch.finfo(x.dtype).tiny).all()), (res[ok], tol[ok])
    assert bool(torch.isfinite(sol.z[ok]).all())
    assert int((~ok).sum()) == sum(sol.failures().values())


shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)
dtypes = st.sampled_from([torch.float32, torch.float64])


@st.composite
def layouts(draw, dims: int) -> str:
    options = ["contiguous", "transposed"] + (["channels_last"] if dims == 3 else [])
    return draw(st.sampled_from(options))


def make_x(batch: int, shape: tuple[int, ...], dtype: torch.dtype, layout: str, scale: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=g, dtype=torch.float64) * scale
    x = x.to(dtype)
    if layout == "transposed" and x.dim() >= 3:
        x = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, non-contiguous strides
        assert not x.is_contiguous() or min(x.shape[1:3]) == 1
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@PROFILE
@given(solver=st.sampled_from(list(SOLVERS)), batch=st.integers(1, 6), shape=shapes, dtype=dtypes,
       contraction=st.floats(0.0, 0.95), scale=st.sampled_from([1e-3, 1.0, 1e3]), seed=st.integers(0, 2**16),
       data=st.data())
def test_contractive_maps_converge_correctly(solver, batch, shape, dtype, contraction, scale, seed, data) -> None:
    """Contractions of every shape, dtype, layout and magnitude: every sample converges and is correct."""
    layout = data.draw(layouts(len(shape)))
    x = make_x(batch, shape, dtype, layout, scale, seed)
    s = SOLVERS[solver]()

    def f(z, x):
        return contraction * torch.tanh(z) + x

    sol = pydeq.fixed_point(f, x, solver=s, on_failure="return")
    check_oracle(f, x, sol, s)
    if solver != "picard" or contraction < 0.8:  # Picard at 0.95 may legitimately run out of steps
        assert sol.success, sol.summary()


@PROFILE
@given(solver=st.sampled_from(list(SOLVERS)), batch=st.integers(1, 5), n=st.integers(1, 6),
       gain=st.floats(-3.0, 3.0), shift=st.floats(-2.0, 2.0), seed=st.integers(0, 2**16))
def test_linear_maps_of_any_gain_are_correct_or_flagged(solver, batch, n, gain, shift, seed) -> None:
    """``f(z) = gain z + x + shift``: non-contractive when |gain| >= 1, no fixed point when gain == 1."""
    x = make_x(batch, (n,), torch.float64, "contiguous", 1.0, seed)
    s = SOLVERS[solver]()

    def f(z, x):
        return gain * z + x + shift

    sol = pydeq.fixed_point(f, x, solver=s, on_failure="return")
    check_oracle(f, x, sol, s)
    if abs(1 - gain) > 1e-3:
        exact = (x + shift) / (1 - gain)
        ok = sol.converged
        torch.testing.assert_close(sol.z[ok], exact[ok], atol=1e-3 * (1 + exact.abs().max().item()), rtol=1e-3)


@PROFILE
@given(solver=st.sampled_from(list(SOLVERS)), batch=st.integers(1, 5), n=st.integers(1, 5),
       bad=st.sampled_from([math.nan, math.inf, -math.inf]), where=st.integers(0, 100))
def test_nonfinite_input_is_refused(solver, batch, n, bad, where) -> None:
    x = torch.randn(batch, n)
    x.view(-1)[where % x.numel()] = bad
    with pytest.raises(ValueError, match="NaN/Inf"):
        pydeq.fixed_point(lambda z, x: 0.5 * z + x, x, solver=SOLVERS[solver]())


@PROFILE
@given(solver=st.sampled_from(list(SOLVERS)), batch=st.integers(1, 5), n=st.integers(1, 5),
       victim=st.integers(0, 4), policy=st.sampled_from(["return", "warn", "raise"]))
def test_nan_inside_f_is_flagged_per_sample(solver, batch, n, victim, policy) -> None:
    """f produces NaN for one sample only: that sample is NONFINITE; the others still converge correctly."""
    victim = victim % batch
    x = torch.randn(batch, n, dtype=torch.float64)
    mask = torch.zeros(batch, 1, dtype=torch.bool)
    mask[victim] = True
    s = SOLVERS[solver]()

    def f(z, x):
        out = 0.5 * torch.tanh(z) + x
        return torch.where(mask & (z.abs().sum(1, keepdim=True) > 0), torch.nan, out)

    if policy != "return":
        with pytest.raises(pydeq.NonFiniteError, match="NONFINITE"):
            pydeq.fixed_point(f, x, solver=s, on_failure=policy)
        return
    sol = pydeq.fixed_point(f, x, solver=s, on_failure="return")
    assert int(sol.status[victim]) == int(pydeq.Status.NONFINITE)
    others = torch.ones(batch, dtype=torch.bool)
    others[victim] = False
    assert bool(sol.converged[others].all())
    check_oracle(f, x, sol, s)


@PROFILE
@given(solver=st.sampled_from(list(SOLVERS)), exponent=st.integers(30, 38), dtype=dtypes)
def test_huge_magnitudes_are_correct_or_flagged(solver, exponent, dtype) -> None:
    """Near the top of float32's range the answer 2x overflows: NONFINITE, never a finite wrong number."""
    x = torch.full((3, 4), 10.0 ** exponent, dtype=dtype)
    s = SOLVERS[solver]()

    def f(z, x):
        return 0.5 * z + x

    sol = pydeq.fixed_point(f, x, solver=s, on_failure="return")
    check_oracle(f, x, sol, s)
    finite = bool(torch.isfinite(2 * x).all())
    if not finite:
        assert not bool(sol.converged.any())
        assert set(sol.failures()) == {pydeq.Status.NONFINITE}


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_large_batch(solver: str) -> None:
    x = torch.randn(4096, 3)
    s = SOLVERS[solver]()

    def f(z, x):
        return 0.7 * torch.sin(z) + x

    sol = pydeq.fixed_point(f, x, solver=s, on_failure="return")
    check_oracle(f, x, sol, s)
    assert sol.success


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_batch_size_zero(solver: str) -> None:
    """An empty batch (the last shard of a dataset, a filtered batch) returns an empty solution and gradient."""
    x = torch.randn(0, 4, requires_grad=True)
    sol = pydeq.fixed_point(lambda z, x: 0.5 * torch.tanh(z) + x, x, solver=SOLVERS[solver]())
    assert sol.z.shape == (0, 4) and sol.success and sol.summary().startswith("0/0")
    sol.z.sum().backward()
    assert x.grad.shape == (0, 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("solver", ["anderson", "picard"])
def test_half_precision_solves_or_refuses_clearly(solver: str, dtype: torch.dtype) -> None:
    x = torch.randn(3, 4, dtype=dtype, requires_grad=True)
    s = pydeq.Anderson(rtol=1e-2) if solver == "anderson" else pydeq.FixedPointIteration(rtol=1e-2)
    try:
        sol = pydeq.fixed_point(lambda z, x: 0.5 * torch.tanh(z) + x, x, solver=s, on_failure="return")
        sol.z.sum().backward()
    except CLEAR_ERRORS as e:
        assert "float32" in str(e) or "dtype" in str(e)
        return
    assert sol.z.dtype == dtype and x.grad.dtype == dtype


def test_deq_layer_flags_nonconverged_samples_in_its_solution() -> None:
    """Through the layer too: a map with no fixed point never reports success and warns by default."""
    layer = pydeq.DEQ(lambda z, x: z + 1.0 + 0 * x, solver=pydeq.Anderson(max_steps=10))
    with pytest.warns(pydeq.ConvergenceWarning, match="did not converge"):
        layer(torch.randn(4, 3))
    assert not bool(layer.last_solution.converged.any())
