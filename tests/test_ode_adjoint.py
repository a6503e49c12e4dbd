"""Gradients of fixed-horizon ODE solves: direct back-propagation and the backsolve adjoint agree with each
other, with finite differences (gradcheck) and with the closed form of a linear ODE."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pydeq._ode import RK4, BacksolveAdjoint, DirectAdjoint, Tsit5, odeint
from pydeq._ode.odeint import find_params

D = torch.float64
TIGHT = Tsit5(rtol=1e-10, atol=1e-12)


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def grads(adjoint, net, u0, solver=TIGHT):
    sol = odeint(lambda t, u: net(u), u0, (0.0, 1.0), solver=solver, adjoint=adjoint)
    loss = (sol.z**2).sum() + sol.z[:, 0].sin().sum()
    return torch.autograd.grad(loss, [u0, *net.parameters()]), sol


def test_backsolve_matches_direct_on_a_module():
    net = small_net()
    u0 = torch.randn(4, 3, dtype=D, requires_grad=True)
    g_direct, s_direct = grads(DirectAdjoint(), net, u0)
    g_back, s_back = grads(BacksolveAdjoint(), net, u0)
    for a, b in zip(g_direct, g_back, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)
    assert s_direct.backward.ran and s_direct.backward.nfe == s_direct.nfe - 1  # minus the step-size probe
    assert s_back.backward.ran and s_back.backward.nfe > 0
    assert float(s_back.backward.residual.abs().max()) == 0.0  # every sample reached t0 backward


def test_linear_ode_gradient_is_closed_form():
    # u(1) = expm(A) u0, loss = <c, u(1)>: dL/du0 = expm(A)^T c, dL/dA = sum_b (d/dA) c^T expm(A) u0_b
    torch.manual_seed(1)
    A = (0.5 * torch.randn(3, 3, dtype=D)).requires_grad_(True)
    u0 = torch.randn(2, 3, dtype=D, requires_grad=True)
    c = torch.randn(3, dtype=D)
    ref = torch.autograd.grad((u0 @ torch.linalg.matrix_exp(A).T @ c).sum(), [u0, A])
    for adjoint in (DirectAdjoint(), BacksolveAdjoint()):
        sol = odeint(lambda t, u: u @ A.T, u0, (0.0, 1.0), solver=TIGHT, adjoint=adjoint)  # A found in the closure
        got = torch.autograd.grad((sol.z @ c).sum(), [u0, A])
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("adjoint", [DirectAdjoint(), BacksolveAdjoint()], ids=["direct", "backsolve"])
def test_gradcheck(adjoint):
    torch.manual_seed(2)
    W = (0.5 * torch.randn(2, 2, dtype=D)).requires_grad_(True)
    u0 = torch.randn(2, 2, dtype=D, requires_grad=True)

    def run(u0, W):
        return odeint(lambda t, u: torch.tanh(u @ W.T) + torch.sin(t)[:, None], u0, (0.0, 1.0), solver=TIGHT,
                      adjoint=adjoint, params=[W]).z

    assert torch.autograd.gradcheck(run, (u0, W), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_direct_gradcheck_fixed_step_is_exact():
    torch.manual_seed(3)
    W = (0.5 * torch.randn(2, 2, dtype=D)).requires_grad_(True)
    u0 = torch.randn(3, 2, dtype=D, requires_grad=True)
    run = lambda u0, W: odeint(lambda t, u: torch.tanh(u @ W.T), u0, (0.0, 1.0), solver=RK4(dt=0.25)).z  # noqa: E731
    assert torch.autograd.gradcheck(run, (u0, W), eps=1e-6, atol=1e-8, rtol=1e-7)


def test_backsolve_reaches_input_injected_in_closure_and_per_sample_gradients():
    # gradient of sample i must not change when other samples are added to the batch
    net = small_net(4)
    x = torch.randn(3, 3, dtype=D, requires_grad=True)

    def field_for(xb):
        return lambda t, u: net(u) + xb

    sol = odeint(field_for(x), torch.zeros(3, 3, dtype=D), (0.0, 1.0), solver=Tsit5(rtol=1e-7, atol=1e-9),
                 adjoint=BacksolveAdjoint())
    (gx,) = torch.autograd.grad(sol.z.pow(2).sum(), [x])
    for i in range(3):
        xi = x[i : i + 1].detach().clone().requires_grad_(True)
        si = odeint(field_for(xi), torch.zeros(1, 3, dtype=D), (0.0, 1.0), solver=Tsit5(rtol=1e-7, atol=1e-9),
                    adjoint=BacksolveAdjoint())
        (gi,) = torch.autograd.grad(si.z.pow(2).sum(), [xi])
        # not bitwise: nn.Linear rounds differently at batch 1 and 3, and the first tiny steps have
        # round-off-sized error estimates, so the step sequence shifts slightly (far below rtol)
        torch.testing.assert_close(gi[0], gx[i], rtol=1e-9, atol=1e-10)


def test_find_params_sees_modules_closures_and_partials():
    import functools

    net = small_net()
    W = torch.zeros(3, 3, dtype=D, requires_grad=True)
    closure = lambda t, u: net(u) @ W  # noqa: E731
    assert {id(p) for p in find_params(closure)} == {id(p) for p in [*net.parameters(), W]}
    assert len(find_params(net)) == 4
    assert len(find_params(functools.partial(lambda t, u, m: m(u), m=net))) == 4
    assert find_params(lambda t, u: u) == ()


def test_backsolve_options_are_used():
    net = small_net()
    u0 = torch.randn(2, 3, dtype=D, requires_grad=True)
    loose = odeint(lambda t, u: net(u), u0, (0.0, 1.0), solver=TIGHT, adjoint=BacksolveAdjoint(rtol=1e-4, atol=1e-6))
    loose.z.sum().backward()
    tight = odeint(lambda t, u: net(u), u0, (0.0, 1.0), solver=TIGHT, adjoint=BacksolveAdjoint())
    tight.z.sum().backward()
    assert loose.backward.nfe < tight.backward.nfe
    with pytest.warns(UserWarning, match="backsolve adjoint did not reach t0"):
        s = odeint(lambda t, u: net(u), u0, (0.0, 1.0), solver=TIGHT, adjoint=BacksolveAdjoint(max_steps=2))
        s.z.sum().backward()
