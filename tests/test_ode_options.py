"""The step options users of the peers reach for: first step, smallest and largest step, the error norm, and the
step cap's raise/warn/return policy."""

from __future__ import annotations

import math

import pytest
import torch

import pydeq
from pydeq import ConvergenceError, ConvergenceWarning, Status

D = torch.float64


class Clock:
    """A vector field that records the times it is called at."""

    def __init__(self, fn):
        self.fn, self.times = fn, []

    def __call__(self, t, u):
        self.times.append(t.clone())
        return self.fn(t, u)


def test_first_step_is_used_without_the_probe_call():
    f = Clock(lambda t, u: -u)
    pydeq.odeint(f, torch.ones(1, 1, dtype=D), (0.0, 1.0), solver=pydeq.Tsit5(dt0=0.01))
    # k1 at t0, then the second stage at t0 + c2 * dt0 (no initial-step probe in between)
    torch.testing.assert_close(f.times[1], torch.tensor([0.161 * 0.01], dtype=D), rtol=1e-14, atol=0)


def test_largest_step_caps_every_step():
    sol = pydeq.odeint(lambda t, u: -u, torch.ones(2, 1, dtype=D), (0.0, 1.0),
                       solver=pydeq.Tsit5(rtol=1e-3, atol=1e-6, dtmax=0.05))
    free = pydeq.odeint(lambda t, u: -u, torch.ones(2, 1, dtype=D), (0.0, 1.0), solver=pydeq.Tsit5(rtol=1e-3, atol=1e-6))
    assert int(free.extras["accepted"][0]) < 20 <= int(sol.extras["accepted"][0])
    torch.testing.assert_close(sol.z, torch.full_like(sol.z, math.exp(-1.0)), rtol=1e-6, atol=0)


def test_smallest_step_stops_a_sample_that_needs_smaller_steps():
    # u' = -2000 (u - cos t): stable explicit steps are below 3.3 / 2000; dtmin = 0.01 cannot hold the error
    stiff = lambda t, u: -2000.0 * (u - torch.cos(t)[:, None])
    u0 = torch.tensor([[1.0], [0.0]], dtype=D)
    sol = pydeq.odeint(stiff, u0, (0.0, 1.0), solver=pydeq.Tsit5(dtmin=1e-2), on_failure="return")
    assert bool((sol.status == int(Status.STEP_TOO_SMALL)).all()) and float(sol.extras["t"].max()) < 1.0
    with pytest.raises(ConvergenceError, match="STEP_TOO_SMALL.*lower dtmin"):
        pydeq.odeint(stiff, u0, (0.0, 1.0), solver=pydeq.Tsit5(dtmin=1e-2), on_failure="raise")
    ok = pydeq.odeint(stiff, u0, (0.0, 1.0), solver=pydeq.Tsit5(dtmin=1e-5))
    assert ok.success


def test_error_norm_is_an_argument():
    """max_norm holds every entry to the tolerance, so it takes at least as many steps as the RMS norm on a state
    whose entries differ in scale; both meet the tolerance."""
    A = torch.diag(torch.tensor([-0.1, -1.0, -3.0, -0.5], dtype=D)) + torch.diag(torch.ones(3, dtype=D), 1)
    u0 = torch.tensor([[1.0, 0.1, 0.01, 2.0]], dtype=D)
    exact = u0 @ torch.linalg.matrix_exp(2 * A).T
    steps = {}
    for norm in (pydeq.rms_norm, pydeq.max_norm, pydeq.l2_norm):
        sol = pydeq.odeint(lambda t, u: u @ A.T, u0, (0.0, 2.0), solver=pydeq.Dopri5(rtol=1e-6, atol=1e-9, norm=norm))
        assert float((sol.z - exact).abs().max()) < 1e-5
        steps[norm.__name__] = int(sol.extras["accepted"][0])
    assert steps["rms_norm"] <= steps["max_norm"] <= steps["l2_norm"], steps


def test_step_cap_policies():
    args = (lambda t, u: -u, torch.ones(2, 1, dtype=D), torch.linspace(0.0, 1.0, 5, dtype=D))
    sol = pydeq.odeint(*args, solver=pydeq.RK4(dt=0.1), max_steps=4, on_failure="return")
    assert bool((sol.status == int(Status.MAX_STEPS)).all())
    # steps land on 0.1, 0.2, the output time 0.25, then 0.3: 0.7 left
    torch.testing.assert_close(sol.residual, torch.full((2,), 0.7, dtype=D))
    with pytest.raises(ConvergenceError, match="max steps reached"):
        pydeq.odeint(*args, solver=pydeq.RK4(dt=0.1), max_steps=4, on_failure="raise")
    with pytest.warns(ConvergenceWarning, match="ODE solve did not converge"):
        pydeq.odeint(*args, solver=pydeq.RK4(dt=0.1), max_steps=4)
