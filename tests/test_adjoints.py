"""Gradients through the equilibrium: closed forms, gradcheck, and the ordering of approximations."""

import pytest
import torch
from conftest import linear_problem, linear_solution

import pydeq

TIGHT = dict(rtol=0.0, atol=1e-12)


def _linear_grads(solver, adjoint, d=6, contraction=0.8):
    W, U, x = linear_problem(d=d, contraction=contraction)
    c = torch.randn(4, d, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    ref = torch.autograd.grad((linear_solution(W, U, x) * c).sum(), (W, U, x))
    sol = pydeq.fixed_point(lambda z, x: z @ W.T + x @ U.T, x, solver=solver, adjoint=adjoint, on_failure="raise")
    got = torch.autograd.grad((sol.z * c).sum(), (W, U, x))
    err = max(float((g - r).norm() / r.norm()) for g, r in zip(got, ref))
    return err, sol


@pytest.mark.parametrize("linear_solver", [pydeq.GMRES(rtol=1e-12, atol=0.0), pydeq.GMRES(rtol=1e-12, atol=0, restart=3),
                                           pydeq.Neumann(rtol=1e-12, atol=0.0, max_steps=1000), pydeq.Direct()], ids=repr)
def test_implicit_adjoint_matches_closed_form(linear_solver):
    err, sol = _linear_grads(pydeq.Anderson(**TIGHT), pydeq.ImplicitAdjoint(linear_solver=linear_solver))
    assert err < 1e-9
    assert sol.backward.ran and sol.backward.nfe > 1 and (sol.backward.residual < 1e-10).all()


@pytest.mark.parametrize("solver", [pydeq.FixedPointIteration(rtol=0, atol=1e-13, max_steps=1000),
                                    pydeq.Anderson(**TIGHT)], ids=repr)
def test_direct_adjoint_matches_closed_form(solver):
    err, _ = _linear_grads(solver, pydeq.DirectAdjoint())
    assert err < 1e-8


def test_direct_adjoint_is_one_adjoint_for_fixed_point_and_ode_solves():
    adjoint = pydeq.DirectAdjoint()
    assert isinstance(adjoint, pydeq.AbstractAdjoint) and isinstance(adjoint, pydeq.AbstractODEAdjoint)
    err, _ = _linear_grads(pydeq.Anderson(**TIGHT), adjoint)
    assert err < 1e-8
    u0 = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    rate = torch.tensor(-0.7, dtype=torch.float64, requires_grad=True)
    sol = pydeq.odeint(lambda t, u: rate * u, u0, (0.0, 1.0), solver=pydeq.RK4(dt=0.01), adjoint=adjoint)
    g_u0, g_rate = torch.autograd.grad(sol.z.sum(), (u0, rate))
    e = torch.exp(rate.detach())  # u(1) = exp(rate) u0
    torch.testing.assert_close(g_u0, torch.full_like(u0, float(e)), rtol=1e-9, atol=0)
    torch.testing.assert_close(g_rate, (e * u0.detach()).sum(), rtol=1e-9, atol=0)


def test_unrolled_adjoint_is_a_deprecated_alias_of_direct_adjoint():
    with pytest.warns(DeprecationWarning, match=r"pydeq.UnrolledAdjoint is now pydeq.DirectAdjoint .*next release"):
        old = pydeq.UnrolledAdjoint
    assert old is pydeq.DirectAdjoint
    with pytest.warns(DeprecationWarning, match="pydeq.UnrolledAdjoint is now pydeq.DirectAdjoint"):
        from pydeq import UnrolledAdjoint
    assert UnrolledAdjoint is pydeq.DirectAdjoint
    solver = pydeq.FixedPointIteration(rtol=0, atol=1e-13, max_steps=1000)
    err_old, sol_old = _linear_grads(solver, UnrolledAdjoint())
    err_new, sol_new = _linear_grads(solver, pydeq.DirectAdjoint())
    assert err_old == err_new < 1e-8 and torch.equal(sol_old.z, sol_new.z) and sol_old.nfe == sol_new.nfe
    assert "UnrolledAdjoint" not in pydeq.__all__
    with pytest.raises(AttributeError, match="module 'pydeq' has no attribute 'NoSuchAdjoint'"):
        pydeq.NoSuchAdjoint  # noqa: B018


def test_broyden_reuse_improves_with_refine_steps():
    errs = [_linear_grads(pydeq.Broyden(**TIGHT), pydeq.BroydenReuseAdjoint(refine=r))[0] for r in (0, 1, 3, 10, 60)]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-8
    jfb, _ = _linear_grads(pydeq.Broyden(**TIGHT), pydeq.JacobianFreeAdjoint())
    assert errs[0] < jfb  # the reused inverse-Jacobian estimate beats dropping it


def test_approximate_adjoints_ordered_as_theory_says():
    jfb, _ = _linear_grads(pydeq.Anderson(**TIGHT), pydeq.JacobianFreeAdjoint())
    phantom = [_linear_grads(pydeq.Anderson(**TIGHT), pydeq.PhantomAdjoint(steps=k, damping=0.8))[0] for k in (2, 5, 20, 80)]
    assert jfb > phantom[0] > phantom[1] > phantom[2] > phantom[3]
    assert phantom[-1] < 1e-6
    one_step = _linear_grads(pydeq.Anderson(**TIGHT), pydeq.PhantomAdjoint(steps=1, damping=1.0))[0]
    assert abs(one_step - jfb) < 1e-12  # PhantomAdjoint(1, 1) is JFB


def test_gradcheck_nonlinear_tanh_deq():
    d = 4
    g = torch.Generator().manual_seed(3)
    W = (0.6 * torch.randn(d, d, dtype=torch.float64, generator=g) / d**0.5).requires_grad_()
    b = torch.randn(d, dtype=torch.float64, generator=g).requires_grad_()
    x = torch.randn(3, d, dtype=torch.float64, generator=g).requires_grad_()
    solver = pydeq.Anderson(rtol=0, atol=1e-13, max_steps=200)
    adjoint = pydeq.ImplicitAdjoint(linear_solver=pydeq.GMRES(rtol=1e-13, atol=0))

    def fn(W, b, x):
        return pydeq.fixed_point(lambda z, x: torch.tanh(z @ W.T + x + b), x, solver=solver, adjoint=adjoint,
                                 on_failure="raise").z

    # nondet_tol: reruns of the backward differ at round-off level (multi-threaded reductions in the Krylov solve)
    assert torch.autograd.gradcheck(fn, (W, b, x), eps=1e-6, atol=1e-7, nondet_tol=1e-12)


def test_gradients_reach_module_parameters_and_closures():
    lin = torch.nn.Linear(5, 5).double()
    with torch.no_grad():
        lin.weight.mul_(0.3)
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 5, dtype=torch.float64)
    sol = pydeq.fixed_point(lambda z, x: scale * torch.tanh(lin(z) + x), x)
    sol.z.sum().backward()
    assert lin.weight.grad is not None and scale.grad is not None and scale.grad != 0


def test_all_adjoints_agree_with_direct_on_tanh_deq():
    W, U, x = linear_problem(d=8, contraction=0.7)
    f = lambda z, x: torch.tanh(z @ W.T + x @ U.T)  # noqa: E731
    c = torch.randn(4, 8, dtype=torch.float64)

    def grads(solver, adjoint):
        z = pydeq.fixed_point(f, x, solver=solver, adjoint=adjoint, on_failure="raise").z
        return torch.cat([g.flatten() for g in torch.autograd.grad((z * c).sum(), (W, U, x))])

    ref = grads(pydeq.FixedPointIteration(rtol=0, atol=1e-13, max_steps=500), pydeq.DirectAdjoint())
    for solver, adjoint in [(pydeq.Anderson(**TIGHT), pydeq.ImplicitAdjoint(linear_solver=pydeq.GMRES(rtol=1e-12, atol=0))),
                            (pydeq.Broyden(**TIGHT), pydeq.ImplicitAdjoint(linear_solver=pydeq.Neumann(rtol=1e-12,
                                                                                                        atol=0))),
                            (pydeq.NewtonKrylov(**TIGHT), pydeq.ImplicitAdjoint(linear_solver=pydeq.Direct())),
                            (pydeq.Broyden(**TIGHT), pydeq.BroydenReuseAdjoint(refine=60))]:
        assert torch.allclose(grads(solver, adjoint), ref, rtol=1e-7, atol=1e-9), (solver, adjoint)


def test_no_graph_without_grad_mode():
    W, U, x = linear_problem()
    with torch.no_grad():
        sol = pydeq.fixed_point(lambda z, x: z @ W.T + x @ U.T, x)
    assert not sol.z.requires_grad and not sol.backward.ran
