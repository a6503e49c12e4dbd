"""SteadyState: the continuous DEQ solver reaches the analytic fixed point and matches a discrete DEQ."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pydeq
from pydeq._ode import BS3, RK4, VCAB3, Dopri5, Euler, ResidualEuler, SecantEuler, Tsit5
from pydeq._ode.steady_state import SteadyState
from pydeq._root._base import solve
from pydeq._solution import Status

D = torch.float64


def linear_deq(batch=5, n=6, seed=0, contraction=0.8):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=g, dtype=D)
    W = contraction * W / torch.linalg.matrix_norm(W, 2)
    U = torch.randn(n, n, generator=g, dtype=D)
    x = torch.randn(batch, n, generator=g, dtype=D)
    exact = torch.linalg.solve(torch.eye(n, dtype=D) - W, (x @ U.T).T).T  # z = W z + U x
    return (lambda z: z @ W.T + x @ U.T), x, exact


METHODS = [SecantEuler(), ResidualEuler(), Tsit5(), Dopri5(), BS3(), VCAB3(), RK4(dt=0.5), Euler(dt=0.5)]
METHOD_IDS = ["SecantEuler", "ResidualEuler", "Tsit5", "Dopri5", "BS3", "VCAB3", "RK4", "Euler"]


@pytest.mark.parametrize("method", METHODS, ids=METHOD_IDS)
def test_linear_fixed_point_matches_linalg_solve(method):
    fn, x, exact = linear_deq()
    sol = solve(SteadyState(method, rtol=1e-9, atol=1e-9, max_steps=2000), fn, torch.zeros_like(x))
    assert sol.success
    assert float((sol.z - exact).abs().max()) < 1e-7
    # the documented termination test: rms(f(z) - z) <= atol + rtol * rms(f(z)), and that is the residual reported
    torch.testing.assert_close(sol.residual, pydeq.rms_norm(fn(sol.z) - sol.z), rtol=1e-10, atol=1e-14)
    assert bool((sol.residual <= 1e-9 + 1e-9 * pydeq.rms_norm(fn(sol.z))).all())
    assert bool((sol.extras["t"] > 0).all())


@pytest.mark.parametrize("method", [SecantEuler(), ResidualEuler(), Tsit5()], ids=["SecantEuler", "ResidualEuler", "Tsit5"])
def test_termination_is_relative_to_f_of_the_state(method):
    fn, x, _ = linear_deq()
    loose = solve(SteadyState(method, rtol=1e-3, atol=0.0), fn, torch.zeros_like(x))
    tight = solve(SteadyState(method, rtol=1e-8, atol=0.0, max_steps=1000), fn, torch.zeros_like(x))
    assert loose.success and tight.success and int(loose.steps.max()) < int(tight.steps.max())
    # relative mode (atol = 0): ||du|| <= rtol ||du + u||, the paper's rel_norm; rms and l2 agree on it
    du = fn(loose.z) - loose.z
    assert bool((du.norm(dim=1) <= 1e-3 * (du + loose.z).norm(dim=1) * (1 + 1e-12)).all())
    assert bool((loose.residual > 1e-8 * pydeq.rms_norm(fn(loose.z))).any())  # and it did stop early


def test_max_steps_and_per_sample_stop():
    fn, x, _ = linear_deq()
    sol = solve(SteadyState(Tsit5(), rtol=1e-9, atol=1e-9, max_steps=5), fn, torch.zeros_like(x))
    assert bool((sol.status == int(Status.MAX_STEPS)).all()) and int(sol.steps.max()) == 5
    # one sample already at its fixed point stops at once; the others keep going
    fn2, x2, exact2 = linear_deq(batch=3)
    z0 = torch.zeros_like(x2)
    z0[1] = exact2[1]
    sol2 = solve(SteadyState(Tsit5(), rtol=1e-8, atol=1e-8), fn2, z0)
    assert int(sol2.steps[1]) == 0 and int(sol2.steps[0]) > 0 and sol2.success


class TanhCell(nn.Module):
    """f(z, x) = tanh(W z + U x + b), ||W||_2 = 0.7: a contraction."""

    def __init__(self, n=5, m=3):
        super().__init__()
        torch.manual_seed(0)
        self.W = nn.Linear(n, n, bias=False).double()
        with torch.no_grad():
            self.W.weight.mul_(0.7 / torch.linalg.matrix_norm(self.W.weight, 2))
        self.U = nn.Linear(m, n).double()

    def forward(self, z, x):
        return torch.tanh(self.W(z) + self.U(x))


def _fixed_point_api():
    return pytest.importorskip("pydeq.fixed_point")


def test_continuous_and_discrete_deq_agree_in_value_and_gradient():
    fp = _fixed_point_api()
    from pydeq._adjoint import ImplicitAdjoint
    from pydeq._linear import Direct
    from pydeq._root import Anderson

    f = TanhCell()
    x = torch.randn(4, 3, dtype=D, requires_grad=True)
    results = []
    for solver in (Anderson(rtol=1e-12, atol=1e-12, max_steps=200),
                   SteadyState(Tsit5(), rtol=1e-11, atol=1e-11, max_steps=2000),
                   SteadyState(rtol=1e-11, atol=1e-11, max_steps=2000),
                   SteadyState(ResidualEuler(), rtol=1e-11, atol=1e-11, max_steps=2000),
                   SteadyState(VCAB3(), rtol=1e-11, atol=1e-11, max_steps=2000)):
        sol = fp.fixed_point(f, x, torch.zeros(4, 5, dtype=D), solver=solver,
                             adjoint=ImplicitAdjoint(linear_solver=Direct()))
        assert sol.success
        loss = (sol.z**2).sum() + sol.z[:, 0].sum()
        results.append((sol.z.detach(), torch.autograd.grad(loss, [x, *f.parameters()])))
    (z_a, g_a), *continuous = results
    for z_c, g_c in continuous:
        torch.testing.assert_close(z_c, z_a, rtol=0, atol=1e-9)
        for a, c in zip(g_a, g_c, strict=True):
            torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5)


def test_backprop_through_secant_euler_steps_matches_the_implicit_gradient():
    """The secant step sizes are data-dependent but not differentiated (like an error controller's): unrolling
    the converged steps gives the implicit-function gradient of the fixed point."""
    fp = _fixed_point_api()
    f = TanhCell()
    x = torch.randn(4, 3, dtype=D, requires_grad=True)
    grads = []
    for adjoint in (pydeq.ImplicitAdjoint(linear_solver=pydeq.Direct()), pydeq.DirectAdjoint()):
        sol = fp.fixed_point(f, x, torch.zeros(4, 5, dtype=D), solver=SteadyState(rtol=1e-12, atol=0.0),
                             adjoint=adjoint)
        assert sol.success
        grads.append(torch.autograd.grad((sol.z**2).sum(), [x, *f.parameters()]))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9)


def test_deq_layer_with_steady_state_is_a_continuous_deq():
    pydeq_nn = pytest.importorskip("pydeq.nn")
    f = TanhCell()
    x = torch.randn(4, 3, dtype=D)
    deq = pydeq_nn.DEQ(f, solver=SteadyState(Tsit5(), rtol=1e-10, atol=1e-10, max_steps=2000), state_shape=(5,))
    z = deq(x)
    torch.testing.assert_close(z, f(z, x), rtol=0, atol=1e-8)
    assert deq.last_solution.success and "t" in deq.last_solution.extras
    z.sum().backward()
    assert f.W.weight.grad is not None and float(f.W.weight.grad.abs().sum()) > 0
