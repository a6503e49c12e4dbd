"""Norms, termination, stagnation and steady-state stepping: what the stop tests compare, at any state size."""

from __future__ import annotations

import math

import pytest
import torch

import pydeq
from pydeq._norms import converged
from pydeq._ode.vcab3 import ab_weights
from pydeq._solution import Status

D = torch.float64

ROOT_FINDERS = {
    "FixedPointIteration": lambda **kw: pydeq.FixedPointIteration(**kw),
    "Anderson": lambda **kw: pydeq.Anderson(**kw),
    "Broyden": lambda **kw: pydeq.Broyden(**kw),
    "NewtonKrylov": lambda **kw: pydeq.NewtonKrylov(**kw),
    "SteadyState": lambda **kw: pydeq.SteadyState(**kw),
    "SteadyState-ResidualEuler": lambda **kw: pydeq.SteadyState(pydeq.ResidualEuler(), **kw),
    "SteadyState-Tsit5": lambda **kw: pydeq.SteadyState(pydeq.Tsit5(), **kw),
    "SteadyState-VCAB3": lambda **kw: pydeq.SteadyState(pydeq.VCAB3(), **kw),
}


# --- norms ------------------------------------------------------------------------------------------------------

def test_norms_are_what_their_docstrings_say():
    v = torch.tensor([[[3.0, -4.0]], [[0.0, 0.0]], [[1.0, -1.0]]], dtype=D)  # (batch 3, 1, 2)
    torch.testing.assert_close(pydeq.l2_norm(v), torch.tensor([5.0, 0.0, math.sqrt(2)], dtype=D))
    torch.testing.assert_close(pydeq.rms_norm(v), torch.tensor([5.0 / math.sqrt(2), 0.0, 1.0], dtype=D))
    torch.testing.assert_close(pydeq.max_norm(v), torch.tensor([4.0, 0.0, 1.0], dtype=D))
    # rms is the only one of the three that does not change when the state is repeated
    big = v.repeat(1, 50, 3)
    torch.testing.assert_close(pydeq.rms_norm(big), pydeq.rms_norm(v))
    torch.testing.assert_close(pydeq.max_norm(big), pydeq.max_norm(v))
    torch.testing.assert_close(pydeq.l2_norm(big), pydeq.l2_norm(v) * math.sqrt(150))


def test_the_stop_test_is_residual_at_most_atol_plus_rtol_times_norm_fz():
    residual = torch.tensor([1.0, 1.5, 3.0, math.nan, math.inf], dtype=D)
    fz_norm = torch.tensor([5.0, 5.0, 5.0, 5.0, 5.0], dtype=D)
    assert converged(residual, fz_norm, rtol=0.1, atol=1.0).tolist() == [True, True, False, False, False]  # 1.5: "<="
    assert converged(residual, fz_norm, rtol=0.0, atol=1.0).tolist() == [True, False, False, False, False]
    assert converged(residual, fz_norm, rtol=0.2, atol=0.0).tolist() == [True, False, False, False, False]


def _tanh_map(width, contraction=0.9, seed=0, copies=1):
    """f(z) = tanh(W z + x); with copies > 1 the same 16-entry map repeated block-diagonally."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(width, width, generator=g, dtype=D)
    W = contraction * W / torch.linalg.matrix_norm(W, 2)
    x = 0.5 * torch.randn(4, width, generator=g, dtype=D)
    if copies > 1:
        W, x = torch.block_diag(*[W] * copies), x.repeat(1, copies)
    return (lambda z, x: torch.tanh(z @ W.T + x)), x


@pytest.mark.parametrize("name", list(ROOT_FINDERS))
def test_termination_does_not_depend_on_the_state_size(name):
    """The same 16-entry map repeated 1, 8 and 64 times: with the default rms norm every solver takes the same
    steps at an absolute tolerance; with the Euclidean norm the 1024-entry state needs more."""
    steps = {}
    for norm in (pydeq.rms_norm, pydeq.l2_norm):
        for copies in (1, 8, 64):
            f, x = _tanh_map(16, copies=copies)
            solver = ROOT_FINDERS[name](rtol=0.0, atol=1e-6, norm=norm, max_steps=300)
            sol = pydeq.fixed_point(f, x, torch.zeros_like(x), solver=solver, on_failure="return")
            steps[norm.__name__, copies] = sol.steps.tolist()
            assert sol.success or norm is pydeq.l2_norm, (name, copies, sol.summary())
    assert steps["rms_norm", 1] == steps["rms_norm", 8] == steps["rms_norm", 64]
    if name != "NewtonKrylov":  # quadratic convergence jumps the factor sqrt(1024) = 32 in the step it converges
        assert max(steps["l2_norm", 64]) > max(steps["rms_norm", 64])


@pytest.mark.parametrize("name", list(ROOT_FINDERS))
def test_a_norm_that_is_not_per_sample_is_rejected(name):
    with pytest.raises(TypeError, match=r"norm must be a callable .*got str"):
        ROOT_FINDERS[name](norm="l2")
    f, x = _tanh_map(8)
    solver = ROOT_FINDERS[name](norm=lambda v: v.norm())
    with pytest.raises(ValueError, match=r"norm must map \(batch, \*state\) to a real \(batch,\) tensor.*shape \(\)"):
        pydeq.fixed_point(f, x, solver=solver)


# --- stagnation -------------------------------------------------------------------------------------------------

def _shifted(z, x):
    """f(z) = z + x + z^2 / 100: for x > 0 no fixed point, and the residual is smallest (= x) at z = 0, where
    every solve starts, so it can never fall; for x = 0 the start is the fixed point."""
    return z + x + 0.01 * z * z


@pytest.mark.parametrize("name", ["FixedPointIteration", "Anderson", "Broyden", "SteadyState",
                                  "SteadyState-ResidualEuler", "SteadyState-Tsit5", "SteadyState-VCAB3"])
def test_stagnation_is_detected_and_reported_per_sample(name):
    x = torch.zeros(3, 5, dtype=D)
    x[1] = 0.3  # samples 1 and 2 have no fixed point; sample 0 starts at its own
    x[2] = 1e-3
    solver = ROOT_FINDERS[name](rtol=0.0, atol=1e-6, max_steps=500, stagnation=pydeq.Stagnation(patience=7))
    sol = pydeq.fixed_point(_shifted, x, torch.zeros_like(x), solver=solver, on_failure="return")
    assert sol.status.tolist() == [int(Status.SUCCESS), int(Status.STAGNATED), int(Status.STAGNATED)]
    assert sol.steps.tolist() == [0, 7, 7]  # a bounded number of steps instead of max_steps
    torch.testing.assert_close(sol.residual[1:], pydeq.rms_norm(x[1:]))
    with pytest.raises(pydeq.ConvergenceError, match=r"2/3 samples: STAGNATED \(the residual stopped decreasing"):
        pydeq.fixed_point(_shifted, x, torch.zeros_like(x), solver=solver, on_failure="raise")


def test_stagnation_returns_the_best_iterate_and_none_runs_to_max_steps():
    # plain iteration on f(z) = -z + 1 jumps between 0 and 1: the residual is 1 at every iterate
    f = lambda z, x: x - z  # noqa: E731
    x = torch.ones(2, 3, dtype=D)
    rule = pydeq.Stagnation(patience=5)
    sol = pydeq.fixed_point(f, x, torch.zeros_like(x), solver=pydeq.FixedPointIteration(stagnation=rule),
                            on_failure="return")
    assert bool((sol.status == int(Status.STAGNATED)).all()) and sol.steps.tolist() == [5, 5]
    torch.testing.assert_close(sol.z, torch.zeros_like(x))  # the first iterate: later ones were no better
    off = pydeq.fixed_point(f, x, torch.zeros_like(x), solver=pydeq.FixedPointIteration(stagnation=None,
                                                                                        max_steps=30),
                            on_failure="return")
    assert bool((off.status == int(Status.MAX_STEPS)).all()) and off.steps.tolist() == [30, 30]


def test_slow_but_steady_progress_is_not_stagnation():
    # contraction 0.999 per step: 1% in ~10 steps, inside the default 20-step window
    f = lambda z, x: 0.999 * z + x  # noqa: E731
    x = torch.ones(2, 3, dtype=D)
    sol = pydeq.fixed_point(f, x, torch.zeros_like(x), solver=pydeq.FixedPointIteration(max_steps=100),
                            on_failure="return")
    assert bool((sol.status == int(Status.MAX_STEPS)).all())


@pytest.mark.parametrize("bad, match", [
    (dict(patience=0), r"Stagnation.patience must be an int >= 1; got 0"),
    (dict(patience=2.5), r"Stagnation.patience must be an int >= 1; got 2.5"),
    (dict(min_decrease=1.0), r"Stagnation.min_decrease must be in \[0, 1\); got 1.0"),
    (dict(min_decrease=-0.1), r"Stagnation.min_decrease must be a finite number >= 0; got -0.1"),
])
def test_bad_stagnation_rules_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        pydeq.Stagnation(**bad)


def test_stagnation_must_be_a_rule_or_none():
    with pytest.raises(TypeError, match=r"Anderson.stagnation must be pydeq.Stagnation\(.*\) or None .*got int 20"):
        pydeq.Anderson(stagnation=20)


# --- steady-state stepping --------------------------------------------------------------------------------------

def _issue_map(width=128, snorm=1.5, batch=32, dtype=torch.float32):
    """The issue's grid map: f(z) = tanh(W z + x), ||W||_2 = snorm, x = 0.5 N(0, 1)."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(width, width, generator=g)
    W = (W * (snorm / torch.linalg.matrix_norm(W, 2))).to(dtype)
    x = (0.5 * torch.randn(batch, width, generator=g)).to(dtype)
    return (lambda z, x: torch.tanh(z @ W.T + x)), x


@pytest.mark.parametrize("method", [pydeq.Tsit5(rtol=5e-3, atol=5e-3), pydeq.BS3(rtol=5e-3, atol=5e-3),
                                    pydeq.VCAB3(rtol=5e-3, atol=5e-3)], ids=["Tsit5", "BS3", "VCAB3"])
def test_explicit_methods_do_not_stall_at_their_stability_limit(method):
    """The issue's measurement: Tsit5 at 5e-3 on a ||W|| = 1.5 map hit the 50-step cap (300+ f calls) with the
    residual oscillating at its stability limit; the residual guard makes every sample converge."""
    f, x = _issue_map()
    sol = pydeq.fixed_point(f, x, solver=pydeq.SteadyState(method, rtol=5e-3, atol=0.0, max_steps=50),
                            on_failure="return")
    assert sol.success, sol.summary()
    assert sol.nfe <= 120, sol.nfe
    fz = f(sol.z, x)
    assert bool(((fz - sol.z).norm(dim=1) <= 5e-3 * fz.norm(dim=1) * 1.0001).all())  # independent check


def test_tight_tolerances_are_reached_by_the_integrator():
    """The issue's ``SteadyState(Tsit5(), rtol=1e-10, atol=1e-10)`` on a contractive 8-entry map stopped at
    residual 7.6e-4 after 100 steps; it now converges."""
    f, x = _tanh_map(8, contraction=0.8)
    for method in (pydeq.Tsit5(), pydeq.SecantEuler(), pydeq.ResidualEuler()):
        with torch.no_grad():
            sol = pydeq.fixed_point(f, x, solver=pydeq.SteadyState(method, rtol=1e-10, atol=1e-10), on_failure="raise")
            assert float((f(sol.z, x) - sol.z).abs().max()) < 1e-9


@pytest.mark.parametrize("method", [pydeq.SecantEuler(), pydeq.ResidualEuler()], ids=["SecantEuler", "ResidualEuler"])
def test_euler_methods_converge_where_fixed_point_iteration_diverges(method):
    """W = -3 I: plain iteration oscillates and grows (|f'| up to 3), the flow converges (rates 1 to 4)."""
    n = 16
    W = -3.0 * torch.eye(n, dtype=D)
    f = lambda z, x: torch.tanh(z @ W.T + x)  # noqa: E731
    x = 0.5 * torch.randn(8, n, dtype=D)
    plain = pydeq.fixed_point(f, x, solver=pydeq.FixedPointIteration(max_steps=200), on_failure="return")
    assert not bool(plain.converged.any())
    with torch.no_grad():
        sol = pydeq.fixed_point(f, x, solver=pydeq.SteadyState(method, rtol=1e-8, atol=0.0), on_failure="raise")
        assert float((f(sol.z, x) - sol.z).abs().max()) < 1e-7
    assert bool((sol.extras["dt"] < 1).all())  # both damp: the stable Euler steps here are below 2 / 4
    if isinstance(method, pydeq.ResidualEuler):
        assert int(sol.extras["rejected"].sum()) > 0  # it finds the damping by rejecting unit steps


def test_secant_euler_takes_the_least_squares_secant_step():
    """After one accepted unit step on a linear map, the next step is <s, y> / <y, y>, s = r0, y = r0 - r1."""
    g = torch.Generator().manual_seed(3)
    A = 0.6 * torch.randn(6, 6, generator=g, dtype=D) / 6**0.5
    x = torch.randn(4, 6, generator=g, dtype=D)
    f = lambda z, x: z @ A.T + x  # noqa: E731
    z0 = torch.zeros_like(x)
    sol = pydeq.fixed_point(f, x, z0, solver=pydeq.SteadyState(max_steps=1, stagnation=None), on_failure="return")
    r0 = f(z0, x) - z0
    z1 = z0 + r0
    r1 = f(z1, x) - z1
    assert bool((pydeq.l2_norm(r1) <= pydeq.l2_norm(r0)).all())  # accepted
    s, y = r0, r0 - r1
    torch.testing.assert_close(sol.z, z1)
    torch.testing.assert_close(sol.extras["dt"], (s * y).sum(1) / (y * y).sum(1))
    capped = pydeq.fixed_point(f, x, z0, solver=pydeq.SteadyState(pydeq.SecantEuler(dt_max=1.0), max_steps=1,
                                                                    stagnation=None), on_failure="return")
    torch.testing.assert_close(capped.extras["dt"], ((s * y).sum(1) / (y * y).sum(1)).clamp_max(1.0))


def test_secant_euler_beats_fixed_step_growth_where_iteration_is_slow_or_fails():
    """The grid's slowest map (||W|| = 1.5, width 16, spectral radius 0.91) and a skew map (imaginary spectrum)."""
    f, x = _issue_map(width=16)
    S = torch.randn(32, 32, generator=torch.Generator().manual_seed(1))
    S = 2.0 * (S - S.T) / torch.linalg.matrix_norm(S - S.T, 2)
    skew, xs = (lambda z, x: torch.tanh(z @ S.T + x)), 0.5 * torch.randn(16, 32)
    for fn, inp in ((f, x), (skew, xs)):
        nfe = {}
        for method in (pydeq.SecantEuler(), pydeq.ResidualEuler()):
            sol = pydeq.fixed_point(fn, inp, solver=pydeq.SteadyState(method, rtol=1e-4, atol=0.0),
                                    on_failure="raise")
            fz = fn(sol.z, inp)
            assert bool(((fz - sol.z).norm(dim=1) <= 1e-4 * fz.norm(dim=1) * 1.0001).all())  # independent check
            nfe[type(method).__name__] = sol.nfe
        assert nfe["SecantEuler"] < 0.8 * nfe["ResidualEuler"], nfe


@pytest.mark.parametrize("bad, match", [
    (dict(dt0=0.0), r"SecantEuler.dt0 must be a finite number > 0; got 0.0. It is a pseudo-time step"),
    (dict(dt_max=float("inf")), r"SecantEuler.dt_max must be a finite number > 0; got inf. 10.0 is the default"),
    (dict(shrink=0.0), r"SecantEuler.shrink must be in \(0, 1\); got 0.0"),
    (dict(dt0=20.0), r"SecantEuler.dt0 must not exceed dt_max; got dt0=20.0, dt_max=10.0"),
])
def test_bad_secant_euler_settings_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        pydeq.SecantEuler(**bad)


def test_residual_euler_with_unit_steps_is_fixed_point_iteration():
    f, x = _tanh_map(12, contraction=0.7)
    a = pydeq.fixed_point(f, x, solver=pydeq.SteadyState(pydeq.ResidualEuler(grow=1.0), rtol=1e-9, atol=0.0))
    b = pydeq.fixed_point(f, x, solver=pydeq.FixedPointIteration(rtol=1e-9, atol=0.0))
    assert a.steps.tolist() == b.steps.tolist() and a.nfe == b.nfe
    torch.testing.assert_close(a.z, b.z, rtol=0, atol=1e-14)


@pytest.mark.parametrize("bad, exc, match", [
    (dict(dt0=0.0), ValueError, r"ResidualEuler.dt0 must be a finite number > 0; got 0.0"),
    (dict(dt_max=-1.0), ValueError, r"ResidualEuler.dt_max must be a finite number > 0; got -1.0"),
    (dict(grow=0.9), ValueError, r"ResidualEuler.grow must be a number >= 1; got 0.9"),
    (dict(shrink=1.0), ValueError, r"ResidualEuler.shrink must be in \(0, 1\); got 1.0"),
    (dict(dt0=2.0), ValueError, r"ResidualEuler.dt0 must not exceed dt_max; got dt0=2.0, dt_max=1.0"),
])
def test_bad_residual_euler_settings_are_rejected(bad, exc, match):
    with pytest.raises(exc, match=match):
        pydeq.ResidualEuler(**bad)


def test_steady_state_rejects_what_is_not_a_stepping_method():
    with pytest.raises(TypeError, match=r"SteadyState's method must be an ODE method \(SecantEuler \(the default\), "
                                        r"ResidualEuler, VCAB3, Tsit5.*got Anderson, a root finder"):
        pydeq.SteadyState(pydeq.Anderson())


# --- VCAB3 ------------------------------------------------------------------------------------------------------

def _ab_step(h, h1, h2, known, F):
    """One AB step of u' = F(t) from t = 0 with exact past derivatives at -h1 and -h1 - h2."""
    t = lambda v: torch.tensor([v], dtype=D)  # noqa: E731
    b0, b1, b2, e = ab_weights(t(h), t(h1), t(h2), torch.tensor([known]))
    f = [F(0.0), F(-h1), F(-h1 - h2)]
    return float(b0 * f[0] + b1 * f[1] + b2 * f[2]), float(e[0, 0] * f[0] + e[0, 1] * f[1] + e[0, 2] * f[2])


def test_vcab3_weights_integrate_quadratics_exactly_on_uneven_steps():
    for h, h1, h2 in [(0.3, 0.2, 0.5), (1.0, 1.0, 1.0), (0.05, 0.4, 0.01)]:
        F = lambda t: 2.0 - 3.0 * t + 5.0 * t * t  # noqa: E731
        exact = 2.0 * h - 1.5 * h * h + 5.0 * h ** 3 / 3
        step, _ = _ab_step(h, h1, h2, 2, F)
        assert step == pytest.approx(exact, rel=1e-12, abs=1e-14)
    # equal steps: the textbook AB3 weights h (23, -16, 5) / 12
    b0, b1, b2, _ = ab_weights(*(torch.tensor([0.1], dtype=D),) * 3, torch.tensor([2]))
    torch.testing.assert_close(torch.cat([b0, b1, b2]), 0.1 * torch.tensor([23, -16, 5], dtype=D) / 12)


def test_vcab3_local_error_order_is_measured():
    """Local error of one step with exact history ~ h^4 (order 3); the estimate ~ h^3 (the order-2 formula's)."""
    hs = [0.2 / 2 ** k for k in range(5)]
    errs, ests = [], []
    for h in hs:
        step, est = _ab_step(h, 1.3 * h, 0.7 * h, 2, math.exp)
        errs.append(abs(step - math.expm1(h)))
        ests.append(abs(est))
    order = [math.log2(a / b) for a, b in zip(errs, errs[1:], strict=False)]
    est_order = [math.log2(a / b) for a, b in zip(ests, ests[1:], strict=False)]
    assert all(3.8 < p < 4.2 for p in order), order
    assert all(2.8 < p < 3.2 for p in est_order), est_order


def test_vcab3_has_no_fixed_step_mode():
    with pytest.raises(ValueError, match=r"VCAB3 is adaptive and has no fixed-step mode; got dt=0.1"):
        pydeq.VCAB3(dt=0.1)
