"""Output times: the classic closed-form problems at 10 output times, forward and reversed, float32 and float64,
every method; the dense output's conditions and measured order; per-sample output times equal solving each sample
alone; output times in NeuralODE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pydeq
from pydeq._ode import tableau as T
from pydeq._ode.dense import interpolate
from pydeq._ode.step import rk_stages

D = torch.float64
ADAPTIVE = [pydeq.Tsit5, pydeq.Dopri5, pydeq.BS3, pydeq.HeunEuler, pydeq.Fehlberg2]
FIXED = [pydeq.Euler, pydeq.Midpoint, pydeq.Heun2, pydeq.Heun3, pydeq.RK4, pydeq.RK38]
TABLEAUX = [T.EULER, T.MIDPOINT, T.HEUN2, T.HEUN3, T.RK4, T.RK38, T.HEUN_EULER, T.FEHLBERG2, T.BS3, T.DOPRI5,
            T.TSIT5]


# ---- the classic problems: (field, exact(t) -> (batch, *state) in float64, t0, t1) -------------------------

def _linear(reverse):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g, dtype=D) / 2 - 0.2 * torch.eye(4, dtype=D)
    u0 = torch.randn(3, 4, generator=g, dtype=D)
    return (lambda t, u: u @ A.T.to(u.dtype)), (lambda t: u0 @ torch.linalg.matrix_exp(t * A).T), 0.0, 2.0


def _decay(reverse):
    lam = torch.tensor([0.5, 1.0, 3.0], dtype=D)
    u0 = torch.tensor([[1.0], [-2.0], [0.5]], dtype=D)
    return (lambda t, u: -lam.to(u.dtype)[:, None] * u), (lambda t: u0 * torch.exp(-lam[:, None] * t)), 0.0, 2.0


def _constant_with_pull(reverse):
    # u' = a - k (u - (a t + b)): the exact solution a t + b is a line every consistent method keeps, and any
    # error is pulled back at rate 20 (stiff-ish for the explicit methods' step sizes) in the direction of
    # integration (k = -20 when integrating backward, or the pull would push)
    a, b = torch.tensor([[0.2], [-1.0]], dtype=D), torch.tensor([[3.0], [0.5]], dtype=D)
    k = -20.0 if reverse else 20.0
    return ((lambda t, u: a.to(u.dtype) - k * (u - (a.to(u.dtype) * t[:, None] + b.to(u.dtype)))),
            (lambda t: a * t + b), 0.0, 2.0)


def _polynomial_trig(reverse):
    # u' = 2u/t + t^4 sin 2t: (u/t^2)' = t^2 sin 2t, so u = t^2 (C - t^2 cos 2t / 2 + t sin 2t / 2 + cos 2t / 4)
    C = torch.tensor([[1.0], [-0.5]], dtype=D)

    def exact(t):
        return t**2 * (C - t**2 * math.cos(2 * t) / 2 + t * math.sin(2 * t) / 2 + math.cos(2 * t) / 4)

    def field(t, u):
        t = t[:, None]
        return 2 * u / t + t**4 * torch.sin(2 * t)

    return field, exact, 1.0, 3.0


PROBLEMS = {"linear": _linear, "decay": _decay, "constant-with-pull": _constant_with_pull,
            "polynomial-trig": _polynomial_trig}


# tolerances where each method is meant to be used (higher order, tighter), in float64 and float32
TOLS = {pydeq.Tsit5: (1e-8, 1e-5), pydeq.Dopri5: (1e-8, 1e-5), pydeq.BS3: (1e-6, 1e-4), pydeq.HeunEuler: (1e-4, 1e-3),
        pydeq.Fehlberg2: (1e-5, 1e-3)}


def _solver(cls, dtype):
    if cls in ADAPTIVE:
        tol = TOLS[cls][0 if dtype == D else 1]
        return cls(rtol=tol, atol=tol / 100), tol  # relative control: the decay solved backward grows 400x
    # dt such that dt^order is about the tolerance, so the fixed methods are held to the same bound
    dt = {1: 1e-3, 2: 4e-3, 3: 1e-2, 4: 1e-2}[cls.tableau.order] if dtype == D else 1e-2
    return cls(dt=dt), max(dt**cls.tableau.order, 1e-7 if dtype == D else 1e-4)


@pytest.mark.parametrize("dtype", [D, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reversed"])
@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("cls", ADAPTIVE + FIXED, ids=lambda c: c.__name__)
def test_output_times_match_closed_form(cls, problem, reverse, dtype):
    field, exact, t0, t1 = PROBLEMS[problem](reverse)
    times = np.linspace(t0, t1, 10)[::-1 if reverse else 1].copy()
    ref = torch.stack([exact(float(t)) for t in times], dim=1)  # (batch, 10, *state)
    solver, tol = _solver(cls, dtype)
    sol = pydeq.odeint(field, ref[:, 0].to(dtype), torch.tensor(times, dtype=dtype), solver=solver,
                       max_steps=100_000)
    assert sol.z.shape == ref.shape and sol.z.dtype == dtype and sol.success
    torch.testing.assert_close(sol.z[:, 0], ref[:, 0].to(dtype), rtol=0, atol=0)  # the start is u0 itself
    scale = 1.0 + float(ref.abs().max())
    err = float((sol.z.double() - ref).abs().max()) / scale
    floor = 2e-6 if dtype == torch.float32 else 1e-13  # round-off of the state
    # Fehlberg2's embedded estimate measures its order-1 companion, not the order-2 answer it propagates, so the
    # answer's error is ~100x the tolerance (torchdiffeq's fehlberg2: ~300x on the linear problem)
    factor = 300 if cls is pydeq.Fehlberg2 else 10
    assert err < factor * tol + floor, (err, tol)


def _order_residual(tab, b, theta, order):
    s = tab.stages
    A = np.zeros((s, s))
    for i, row in enumerate(tab.a):
        A[i + 1, : len(row)] = row
    c, C = np.array(tab.c), np.diag(tab.c)
    conds = {1: [(b.sum(), theta)], 2: [(b @ c, theta**2 / 2)],
             3: [(b @ c**2, theta**3 / 3), (b @ A @ c, theta**3 / 6)],
             4: [(b @ c**3, theta**4 / 4), (b @ C @ A @ c, theta**4 / 8), (b @ A @ c**2, theta**4 / 12),
                 (b @ A @ A @ c, theta**4 / 24)]}
    return max(abs(v - r) for k in range(1, order + 1) for v, r in conds[k])


@pytest.mark.parametrize("tab", TABLEAUX, ids=lambda t: f"{len(t.b)}stages-order{t.order}-dense{t.dense_order}")
def test_dense_weights_satisfy_continuous_order_conditions(tab):
    """``sum_i b_i(θ) Φ_i(τ) = θ^ρ(τ) / γ(τ)`` for every tree up to the dense order, and ``b_i(1) = b_i``."""
    D_ = np.array(tab.dense)
    for theta in (0.1, 0.5, 0.9, 1.0):
        weights = D_ @ theta ** np.arange(1, D_.shape[1] + 1)
        assert _order_residual(tab, weights, theta, tab.dense_order) < 1e-13
    np.testing.assert_allclose(D_.sum(axis=1), tab.b, rtol=0, atol=2e-14)


@pytest.mark.parametrize("tab", TABLEAUX, ids=lambda t: f"{len(t.b)}stages-order{t.order}-dense{t.dense_order}")
def test_dense_output_order_is_measured(tab):
    """One step from the exact state of a forced pendulum: the interpolant's error at θ = 0.3 and 0.7 falls like
    ``h^(dense_order + 1)`` (local error); the reference is a Tsit5 solve at tolerance 1e-13."""
    def field(t, u):
        return torch.stack([u[:, 1], -torch.sin(u[:, 0]) + torch.cos(2 * t)], dim=1)

    u0, t0 = torch.tensor([[0.7, -0.4]], dtype=D), 0.3
    hs = [0.2, 0.1, 0.05, 0.025]
    errs = []
    for h in hs:
        t, hh = torch.tensor([t0], dtype=D), torch.tensor([h], dtype=D)
        with torch.no_grad():
            step = rk_stages(tab, field, t, u0, hh, field(t, u0))
        worst = 0.0
        for theta in (0.3, 0.7):
            got = interpolate(tab, u0, hh, step.stages, torch.tensor([theta], dtype=D))
            ref = pydeq.odeint(field, u0, (t0, t0 + theta * h), solver=pydeq.Tsit5(rtol=1e-13, atol=1e-15)).z
            worst = max(worst, float((got - ref).abs().max()))
        errs.append(worst)
    measured = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert abs(measured - (tab.dense_order + 1)) < 0.2, (errs, measured)


def test_dense_output_paths_agree():
    """The stage-buffer (no autograd) and stage-list (autograd) interpolations compute the same numbers."""
    u0, t, h = torch.randn(5, 3, dtype=D), torch.zeros(5, dtype=D), torch.linspace(0.1, 0.5, 5, dtype=D)
    theta = torch.linspace(0.0, 1.0, 5, dtype=D)

    def field(t, u):
        return torch.sin(u) + t[:, None]

    for tab in TABLEAUX:
        with torch.no_grad():
            fast = interpolate(tab, u0, h, rk_stages(tab, field, t, u0, h, field(t, u0)).stages, theta)
        u_grad = u0.clone().requires_grad_(True)  # autograd needs the stages: the stage-list path
        slow = interpolate(tab, u_grad, h, rk_stages(tab, field, t, u_grad, h, field(t, u_grad)).stages, theta)
        assert slow.requires_grad
        torch.testing.assert_close(fast, slow.detach(), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("cls", [pydeq.Tsit5, pydeq.RK4], ids=["Tsit5", "RK4"])
def test_per_sample_output_times_equal_solving_each_sample_alone(cls):
    u0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(3), dtype=D)

    def field(t, u):  # elementwise, so only the stage products' BLAS kernels depend on the batch size
        return torch.tanh(u.roll(1, dims=1)) - 0.1 * u + torch.sin(t)[:, None]

    times = torch.stack([torch.linspace(0.0, 1.0, 6, dtype=D), torch.linspace(0.5, -2.0, 6, dtype=D),
                         torch.tensor([0.0, 0.1, 0.15, 2.0, 2.5, 4.0], dtype=D)])
    solver = cls(rtol=1e-8, atol=1e-10) if cls is pydeq.Tsit5 else cls(dt=0.05)
    batch = pydeq.odeint(field, u0, times, solver=solver)
    assert batch.z.shape == (3, 6, 4) and batch.success
    for i in range(3):
        alone = pydeq.odeint(field, u0[i : i + 1], times[i], solver=solver)
        torch.testing.assert_close(alone.z[0], batch.z[i], rtol=1e-14, atol=1e-15)  # round-off
        assert int(alone.steps[0]) == int(batch.steps[i])


def test_output_times_do_not_change_the_steps_and_cost_no_evaluations():
    field, exact, t0, t1 = _linear(False)
    u0 = exact(t0)
    end = pydeq.odeint(field, u0, (t0, t1), solver=pydeq.Tsit5(rtol=1e-8, atol=1e-8))
    many = pydeq.odeint(field, u0, torch.linspace(t0, t1, 50, dtype=D), solver=pydeq.Tsit5(rtol=1e-8, atol=1e-8))
    assert many.nfe == end.nfe and torch.equal(many.steps, end.steps)
    torch.testing.assert_close(many.z[:, -1], end.z, rtol=0, atol=0)


def test_single_output_time_is_the_start():
    u0 = torch.randn(2, 3, dtype=D)
    sol = pydeq.odeint(lambda t, u: -u, u0, torch.tensor([0.5], dtype=D))
    assert sol.z.shape == (2, 1, 3) and torch.equal(sol.z[:, 0], u0) and sol.success


def test_neural_ode_output_times_and_per_call_times():
    A = torch.tensor([[0.0, 1.0], [-1.0, -0.1]], dtype=D)
    x = torch.randn(3, 2, dtype=D)
    t = torch.linspace(0.0, 2.0, 5, dtype=D)
    layer = pydeq.NeuralODE(lambda u, x: u @ A.T, t_span=t, solver=pydeq.Tsit5(rtol=1e-10, atol=1e-12))
    ref = torch.stack([x @ torch.linalg.matrix_exp(tj * A).T for tj in t], dim=1)
    torch.testing.assert_close(layer(x), ref, rtol=1e-8, atol=1e-9)
    per_sample = torch.stack([t, t / 2, -t])
    ref2 = torch.stack([torch.stack([x[i] @ torch.linalg.matrix_exp(tj * A).T for tj in per_sample[i]])
                        for i in range(3)])
    torch.testing.assert_close(layer(x, t=per_sample), ref2, rtol=1e-8, atol=1e-9)
    assert layer.double().t_eval.dtype == D
