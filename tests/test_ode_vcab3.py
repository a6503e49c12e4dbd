"""VCAB3 in odeint and NeuralODE: accuracy at output times, measured order, its dense output (the step's ends
exactly, measured order 3), gradients, what it refuses."""

from __future__ import annotations

import math

import pytest
import torch

import pydeq
from pydeq._ode.interpolating import _Tape
from pydeq._ode.problem import ODEProblem, solve_forward
from pydeq._ode.times import endpoint_grid
from pydeq._ode.vcab3 import AdamsHistory, ab_interpolate, ab_proposal

D = torch.float64
A = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=D)


def _field(t, u):
    return u @ A.T


def _exact(u0, t, t0=0.0):
    return u0 @ torch.matrix_exp(A * (t - t0)).T


def _u0():
    return torch.tensor([[1.0, 0.0], [0.5, 0.3], [-0.2, 0.7]], dtype=D)


@pytest.mark.parametrize("times", [torch.linspace(0, 2, 10, dtype=D), torch.linspace(2, 0, 10, dtype=D)],
                         ids=["forward", "reversed"])
def test_output_times_match_the_closed_form(times):
    u0 = _u0()
    sol = pydeq.odeint(_field, u0, times, solver=pydeq.VCAB3(rtol=1e-8, atol=1e-8))
    assert sol.success and sol.z.shape == (3, 10, 2)
    for i, t in enumerate(times.tolist()):
        torch.testing.assert_close(sol.z[:, i], _exact(u0, t, float(times[0])), rtol=0, atol=2e-6)


def test_float32_end_point():
    u0 = _u0().float()
    sol = pydeq.odeint(lambda t, u: u @ A.T.float(), u0, (0.0, 2.0), solver=pydeq.VCAB3(rtol=1e-5, atol=1e-5))
    assert sol.z.dtype == torch.float32
    torch.testing.assert_close(sol.z.double(), _exact(_u0(), 2.0), rtol=0, atol=1e-3)


def test_measured_order_is_three():
    """Global error against the mean accepted step over tolerances 1e-4 to 1e-7: slope ~3 (order 3)."""
    u0 = _u0()
    errs, steps = [], []
    for tol in (1e-4, 1e-5, 1e-6, 1e-7):
        sol = pydeq.odeint(_field, u0, (0.0, 2.0), solver=pydeq.VCAB3(rtol=tol, atol=tol))
        errs.append(float((sol.z - _exact(u0, 2.0)).abs().max()))
        steps.append(2.0 / float(sol.extras["accepted"].double().mean()))
    slope = (math.log(errs[0]) - math.log(errs[-1])) / (math.log(steps[0]) - math.log(steps[-1]))
    assert 2.5 < slope < 3.5, (slope, errs, steps)


def test_one_call_of_f_per_step():
    sol = pydeq.odeint(_field, _u0(), (0.0, 2.0), solver=pydeq.VCAB3(rtol=1e-6, atol=1e-6, dt0=0.01))
    attempted = int((sol.extras["accepted"] + sol.extras["rejected"]).max())
    assert sol.nfe == attempted + 1  # the first derivative, then one call per attempted step


def test_gradient_matches_the_closed_form_and_per_sample_times_match_alone():
    u0 = _u0().requires_grad_()
    sol = pydeq.odeint(_field, u0, (0.0, 2.0), solver=pydeq.VCAB3(rtol=1e-10, atol=1e-10))
    (g,) = torch.autograd.grad(sol.z.sum(), u0)
    torch.testing.assert_close(g, torch.ones(3, 2, dtype=D) @ torch.matrix_exp(A * 2.0), rtol=1e-6, atol=1e-7)
    times = torch.stack([torch.linspace(0, 1 + i, 5, dtype=D) for i in range(3)])
    both = pydeq.odeint(_field, _u0(), times, solver=pydeq.VCAB3(rtol=1e-7, atol=1e-7)).z
    for i in range(3):
        alone = pydeq.odeint(_field, _u0()[i:i + 1], times[i], solver=pydeq.VCAB3(rtol=1e-7, atol=1e-7)).z
        torch.testing.assert_close(both[i:i + 1], alone, rtol=0, atol=1e-13)


def test_dense_output_is_the_step_at_its_ends():
    # theta = 1 is the step's own u_{n+1} and theta = 0 its u_n, to the last bit, in the start-up steps (Euler, AB2)
    # and after; per-sample steps and accepts give the samples histories of different lengths
    u = _u0()
    past, t = AdamsHistory.empty(u), torch.zeros(3, dtype=D)
    pattern = torch.tensor([[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    for accept in pattern:
        h = 0.05 + 0.15 * torch.rand(3, dtype=D)
        f0 = _field(t, u)
        step = ab_proposal(u, f0, past, h)
        assert torch.equal(ab_interpolate(u, f0, past, h, torch.ones_like(h)), step.u_new)
        assert torch.equal(ab_interpolate(u, f0, past, h, torch.zeros_like(h)), u)
        inside = ab_interpolate(u, f0, past, h, torch.full_like(h, 0.5))
        assert float((inside - u).abs().min()) > 0 and float((inside - step.u_new).abs().min()) > 0
        past, u, t = past.shift(accept, f0, h), torch.where(accept[:, None], step.u_new, u), t + accept * h
    assert past.known.tolist() == [2, 2, 2] and float(past.h1.std()) > 0


def _mid_step_local_errors(h: float) -> tuple[list[float], float]:
    """VCAB3 at the fixed step ``h`` (a loose tolerance, ``dtmax = h``): per accepted step, the dense output's largest
    error at mid-step against the exact solution through the step's start, read through the interpolating
    adjoint's tape (so ``F_{n-1}, F_{n-2}`` come from the earlier recorded steps); and the error at the end."""
    solver = pydeq.VCAB3(rtol=1e3, atol=1e3, dt0=h, dtmax=h)
    u0 = _u0()
    problem = ODEProblem(fn=_field, solver=solver, grid=endpoint_grid(0.0, 2.0, u0), max_steps=10_000, params=())
    tape = _Tape()
    with torch.no_grad():
        run = solve_forward(problem, u0, observers=(tape,)).run
    trajectory = tape.trajectory(solver, run.u)
    assert run.accepted.tolist() == [round(2.0 / h)] * 3
    errs = []
    for k in range(round(2.0 / h)):
        e = trajectory.entry[:, k]
        got = trajectory(trajectory.s[e] + 0.5 * trajectory.h[e])
        errs.append(float((got - trajectory.u[e] @ torch.matrix_exp(A * 0.5 * h).T).abs().max()))
    end = float((trajectory(torch.full((3,), 2.0, dtype=D)) - run.u).abs().max())
    return errs, end


def test_dense_output_measured_order_is_three():
    """Local error at mid-steps ~ h^4 (order 3) once the history is full, halving the step; the start-up steps'
    own polynomials give the Euler step h^2 and the AB2 step h^3.

    Measured log2 ratios over h = 0.04, 0.02, 0.01: 3.93 and 3.99 (steps 3 on), 1.99/2.00 (Euler), 2.99/2.99 (AB2).
    The first AB3 step (h^3) is left out: its F_{n-2} is the Euler start's, off by that step's O(h^2) error. The
    global error at mid-steps is no measure of the interpolant here: it is the Euler start's, O(h^2), everywhere.
    """
    runs = [_mid_step_local_errors(h) for h in (0.04, 0.02, 0.01)]
    for (coarse, end_c), (fine, end_f) in zip(runs, runs[1:]):
        assert 3.7 < math.log2(max(coarse[3:]) / max(fine[3:])) < 4.3, (coarse, fine)
        assert 1.8 < math.log2(coarse[0] / fine[0]) < 2.2 and 2.8 < math.log2(coarse[1] / fine[1]) < 3.2
        assert end_c < 1e-15 and end_f < 1e-15  # theta = 1 on the last step: its end state
    assert max(runs[-1][0][3:]) < 2e-8


def test_neural_ode_layer_takes_vcab3():
    f = pydeq.DEQVectorField(lambda u, x: torch.tanh(u + x))
    layer = pydeq.NeuralODE(f, solver=pydeq.VCAB3(), state_shape=(4,))
    x = torch.randn(5, 4, dtype=D, requires_grad=True)
    z = layer(x)
    z.sum().backward()
    assert z.shape == (5, 4) and layer.last_solution.success and x.grad is not None


@pytest.mark.parametrize("adjoint", [pydeq.BacksolveAdjoint(), pydeq.CheckpointAdjoint()])
def test_vcab3_refuses_what_its_loop_does_not_do(adjoint):
    with pytest.raises(TypeError, match=rf"VCAB3 \(a multistep method\) is differentiated by DirectAdjoint\(\) "
                                        rf"or InterpolatingAdjoint\(\) only; got {type(adjoint).__name__}"):
        pydeq.odeint(_field, _u0(), (0.0, 1.0), solver=pydeq.VCAB3(), adjoint=adjoint)
    event = pydeq.Event(fn=lambda t, u: u[:, 0])
    with pytest.raises(TypeError, match=r"VCAB3 \(a multistep method\) has no event location"):
        pydeq.odeint(_field, _u0(), (0.0, 1.0), solver=pydeq.VCAB3(), event=event)
