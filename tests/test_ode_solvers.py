"""Numerics of the Runge–Kutta engine: tableaux, measured convergence orders, adaptive accuracy, torchdiffeq
agreement, per-sample independence, statuses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pydeq._ode import BS3, RK4, Dopri5, Euler, PIController, Tsit5, odeint
from pydeq._ode.tableau import BS3 as BS3_TAB
from pydeq._ode.tableau import DOPRI5, EULER, TSIT5
from pydeq._ode.tableau import RK4 as RK4_TAB
from pydeq._solution import ConvergenceError, ConvergenceWarning, NonFiniteError, Status

D = torch.float64


def linear_problem(batch: int = 3, n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=D) / math.sqrt(n) - 0.3 * torch.eye(n, dtype=D)
    u0 = torch.randn(batch, n, generator=g, dtype=D)
    exact = u0 @ torch.linalg.matrix_exp(A).T  # u(1) = expm(A) u0

    def fn(t, u):
        return u @ A.T

    return fn, u0, exact


def _order_residuals(tab, order):
    """Max violation of the RK order conditions (rooted trees) up to ``order``."""
    s = tab.stages
    A = np.zeros((s, s))
    for i, row in enumerate(tab.a):
        A[i + 1, : len(row)] = row
    c, C = np.array(tab.c), np.diag(tab.c)
    conds = {
        1: lambda b: [(b.sum(), 1)],
        2: lambda b: [(b @ c, 1 / 2)],
        3: lambda b: [(b @ c**2, 1 / 3), (b @ A @ c, 1 / 6)],
        4: lambda b: [(b @ c**3, 1 / 4), (b @ C @ A @ c, 1 / 8), (b @ A @ c**2, 1 / 12), (b @ A @ A @ c, 1 / 24)],
        5: lambda b: [(b @ c**4, 1 / 5), (b @ C @ C @ A @ c, 1 / 10), (b @ (A @ c) ** 2, 1 / 20),
                      (b @ C @ A @ c**2, 1 / 15), (b @ C @ A @ A @ c, 1 / 30), (b @ A @ c**3, 1 / 20),
                      (b @ A @ C @ A @ c, 1 / 40), (b @ A @ A @ c**2, 1 / 60), (b @ A @ A @ A @ c, 1 / 120)],
    }
    return A, c, (lambda b: [max(abs(v - r) for v, r in conds[k](np.asarray(b))) for k in range(1, order + 1)])


@pytest.mark.parametrize("tab", [EULER, RK4_TAB, BS3_TAB, DOPRI5, TSIT5], ids=lambda t: str(t.order))
def test_tableau_satisfies_order_conditions(tab):
    A, c, viol = _order_residuals(tab, tab.order)
    np.testing.assert_allclose(A.sum(1), c, atol=1e-15)  # c_i = sum_j a_ij
    assert max(viol(tab.b)) < 1e-14
    if tab.b_err is not None:
        b_hat = np.array(tab.b) - np.array(tab.b_err)
        _, _, viol_hat = _order_residuals(tab, tab.error_order)
        assert max(viol_hat(b_hat)) < 1e-14
    if tab.fsal:
        assert tuple(tab.a[-1]) == tuple(tab.b[:-1]) and tab.b[-1] == 0 and tab.c[-1] == 1


def rotation_problem(horizon: float = 10.0):
    """u' = A u with A skew plus 0.05 I: |eigenvalues| ~ 1, the solution neither decays nor explodes, so the
    truncation error stays far above round-off at the step sizes where every method is in its asymptotic
    regime (Tsit5's h^6 term is large next to its small h^5 constant on linear problems)."""
    g = torch.Generator().manual_seed(0)
    S = torch.randn(4, 4, generator=g, dtype=D)
    A = (S - S.T) / 2
    A = A / torch.linalg.matrix_norm(A, 2) + 0.05 * torch.eye(4, dtype=D)
    u0 = torch.randn(3, 4, generator=g, dtype=D)
    return (lambda t, u: u @ A.T), u0, u0 @ torch.linalg.matrix_exp(horizon * A).T


@pytest.mark.parametrize(
    "solver_cls, order, steps",
    [(Euler, 1, [400, 800, 1600]), (RK4, 4, [100, 200, 400]), (Tsit5, 5, [200, 400, 800]),
     (Dopri5, 5, [200, 400, 800]), (BS3, 3, [100, 200, 400])],
    ids=["Euler", "RK4", "Tsit5", "Dopri5", "BS3"],
)
@pytest.mark.parametrize("grad", [True, False], ids=["stages-as-tensors", "stage-buffer"])
def test_fixed_step_convergence_order(solver_cls, order, steps, grad):
    horizon = 10.0
    fn, u0, exact = rotation_problem(horizon)
    errs = []
    u0 = u0.requires_grad_(grad)  # rk_step keeps the stages as tensors when autograd needs them, else one buffer
    for n in steps:
        with torch.set_grad_enabled(grad):
            sol = odeint(fn, u0, (0.0, horizon), solver=solver_cls(dt=horizon / n))
        assert int(sol.steps[0]) == n and bool((sol.extras["t"] == horizon).all())
        errs.append(float((sol.z.detach() - exact).abs().max() / exact.abs().max()))
    measured = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(measured - order) < 0.5, (errs, measured)


@pytest.mark.parametrize("solver_cls", [Tsit5, Dopri5, BS3])
def test_adaptive_meets_tolerance(solver_cls):
    fn, u0, exact = linear_problem()
    nfes, errs = [], []
    for tol in (1e-5, 1e-8):
        sol = odeint(fn, u0, (0.0, 1.0), solver=solver_cls(rtol=tol, atol=tol))
        err = float((sol.z - exact).abs().max())
        assert sol.success and err < 20 * tol * (1 + float(exact.abs().max()))
        nfes.append(sol.nfe)
        errs.append(err)
    assert nfes[1] > nfes[0] and errs[1] < errs[0]


def test_agrees_with_torchdiffeq_dopri5():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    fn, u0, exact = linear_problem(batch=1)
    tol = 1e-7
    ours = odeint(fn, u0, (0.0, 1.0), solver=Dopri5(rtol=tol, atol=tol))
    theirs = torchdiffeq.odeint(lambda t, u: fn(t, u), u0, torch.tensor([0.0, 1.0], dtype=D),
                                method="dopri5", rtol=tol, atol=tol)[-1]
    assert float((ours.z - theirs).abs().max()) < 10 * tol
    assert float((ours.z - exact).abs().max()) < 10 * tol


def test_sample_result_does_not_depend_on_batch():
    g = torch.Generator().manual_seed(1)
    scales = torch.tensor([0.1, 1.0, 3.0, 8.0], dtype=D)  # very different stiffness -> different step sequences
    W = torch.randn(5, 5, generator=g, dtype=D) / 3
    u0 = torch.randn(4, 5, generator=g, dtype=D)

    def make_fn(k):
        return lambda t, u: -k[:, None] * torch.tanh(u @ W.T) + torch.sin(t)[:, None]

    batch = odeint(make_fn(scales), u0, (0.0, 2.0), solver=Tsit5(rtol=1e-6, atol=1e-8))
    assert len(set(batch.steps.tolist())) > 1  # the samples really took different steps
    for i in range(4):
        alone = odeint(make_fn(scales[i : i + 1]), u0[i : i + 1], (0.0, 2.0), solver=Tsit5(rtol=1e-6, atol=1e-8))
        torch.testing.assert_close(alone.z[0], batch.z[i], rtol=1e-13, atol=1e-14)
        assert int(alone.steps[0]) == int(batch.steps[i])
        assert int(alone.extras["rejected"][0]) == int(batch.extras["rejected"][i])


def test_non_autonomous_field_gets_per_sample_time():
    u0 = torch.zeros(2, 1, dtype=D)
    sol = odeint(lambda t, u: torch.cos(t)[:, None].expand_as(u), u0, (0.5, 2.0), solver=Tsit5(rtol=1e-9, atol=1e-12))
    torch.testing.assert_close(sol.z, torch.full_like(u0, math.sin(2.0) - math.sin(0.5)), rtol=0, atol=1e-8)
    assert bool((sol.residual == 0).all()) and bool((sol.extras["t"] == 2.0).all())


def test_max_steps_status_and_policies():
    fn, u0, _ = linear_problem()
    sol = odeint(fn, u0, (0.0, 1.0), solver=RK4(dt=0.1), max_steps=3, on_failure="return")
    assert bool((sol.status == int(Status.MAX_STEPS)).all())
    torch.testing.assert_close(sol.extras["t"], torch.full((3,), 0.3, dtype=D))
    torch.testing.assert_close(sol.residual, torch.full((3,), 0.7, dtype=D))
    with pytest.raises(ConvergenceError, match="max steps reached"):
        odeint(fn, u0, (0.0, 1.0), solver=RK4(dt=0.1), max_steps=3, on_failure="raise")
    with pytest.warns(ConvergenceWarning, match="ODE solve did not converge"):
        odeint(fn, u0, (0.0, 1.0), solver=RK4(dt=0.1), max_steps=3)


def test_blow_up_is_reported_as_nonfinite():
    u0 = torch.ones(2, 1, dtype=D)
    with pytest.raises(NonFiniteError, match="NONFINITE"):
        odeint(lambda t, u: u**2, u0, (0.0, 2.0), solver=Tsit5())  # u = 1/(1-t) blows up at t = 1
    sol = odeint(lambda t, u: u**2, u0, (0.0, 2.0), solver=Tsit5(), on_failure="return")
    assert bool((sol.status == int(Status.NONFINITE)).all()) and float(sol.extras["t"].max()) < 1.0


def test_pi_and_i_controllers_both_meet_tolerance():
    fn, u0, exact = linear_problem()
    for ctrl in (PIController(), PIController(pcoeff=0.0, icoeff=1.0)):
        sol = odeint(fn, u0, (0.0, 1.0), solver=Dopri5(rtol=1e-7, atol=1e-7, controller=ctrl))
        assert float((sol.z - exact).abs().max()) < 1e-6


def test_float32_runs_and_lands_on_t1():
    fn, u0, exact = linear_problem()
    sol = odeint(lambda t, u: fn(t, u.double()).float(), u0.float(), (0.0, 1.0), solver=RK4(dt=0.1))
    assert sol.z.dtype == torch.float32 and bool((sol.extras["t"] == 1.0).all()) and int(sol.steps[0]) == 10
    assert float((sol.z.double() - exact).abs().max()) < 1e-5


@pytest.mark.parametrize("tab", [EULER, RK4_TAB, BS3_TAB, DOPRI5, TSIT5], ids=lambda t: str(t.order))
def test_rk_step_paths_agree(tab):
    """The no-grad stage-buffer step and the differentiable stage-by-stage step compute the same numbers."""
    from pydeq._ode.integrate import rk_step

    fn, u0, _ = linear_problem(batch=5)
    t, h = torch.zeros(5, dtype=D), torch.linspace(0.05, 0.3, 5, dtype=D)
    with torch.no_grad():
        fast = rk_step(tab, fn, t, u0, h, fn(t, u0))
    u0 = u0.requires_grad_(True)  # the stage-by-stage path runs when autograd needs the stages
    slow = rk_step(tab, fn, t, u0, h, fn(t, u0))
    assert slow[0].requires_grad
    for a, b in zip(fast, slow, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
