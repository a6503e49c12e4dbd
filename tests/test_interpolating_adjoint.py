"""InterpolatingAdjoint: the continuous adjoint on the forward pass's dense output agrees with finite differences
(gradcheck), with back-propagation through the solver and with the backsolve adjoint, with closed forms of linear
ODEs (end point, output times, per-sample step grids; comparisons with DirectAdjoint at output times, in events
and for time gradients are in test_ode_gradients.py and test_ode_events.py), tightens with its tolerance, stays accurate where the
backsolve adjoint's backward re-integration of u is unstable, takes VCAB3 forward and backward (its dense output and
the Adams parameter quadrature), and refuses bad settings and methods without a dense output."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

import pydeq
from pydeq import BacksolveAdjoint, DirectAdjoint, InterpolatingAdjoint
from pydeq._ode.problem import ODEProblem
from pydeq._ode.quadrature import AdamsQuadrature
from pydeq._ode.times import endpoint_grid

D = torch.float64
TIGHT = pydeq.Tsit5(rtol=1e-10, atol=1e-12)
NINE = pydeq.Tsit5(rtol=1e-9, atol=1e-9)
VCAB3_9 = pydeq.VCAB3(rtol=1e-9, atol=1e-9)


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def rel_err(got, ref) -> float:
    """Largest relative error (2-norm) over a list of gradients."""
    return max(float((a - b).norm() / b.norm()) for a, b in zip(got, ref, strict=True))


def grads(adjoint, net, x, times, solver):
    """Gradients wrt the injected input ``x`` and the parameters of a small neural ODE from ``u0 = 0``."""
    sol = pydeq.odeint(lambda t, u: net(u) + x + torch.sin(t)[:, None], torch.zeros_like(x), times, solver=solver,
                       adjoint=adjoint)
    loss = (sol.z**2).sum() + sol.z.sin().sum()
    return torch.autograd.grad(loss, [x, *net.parameters()]), sol


def tiny_run(adjoint, solver, times):
    torch.manual_seed(2)
    W = (0.5 * torch.randn(2, 2, dtype=D)).requires_grad_(True)
    u0 = torch.randn(2, 2, dtype=D, requires_grad=True)

    def run(u0, W):
        return pydeq.odeint(lambda t, u: torch.tanh(u @ W.T) + torch.sin(t)[:, None], u0, times, solver=solver,
                            adjoint=adjoint, params=[W]).z

    return run, (u0, W)


def test_gradcheck_fixed_step():
    # the continuous adjoint is not the derivative of the discrete RK4 map: they differ by O(dt^4) (measured
    # 3.1e-8 at most per Jacobian entry at dt = 0.05, 3e-8 relative, 16x less at half the step), 40x below the
    # tolerance gradcheck applies here
    run, inputs = tiny_run(InterpolatingAdjoint(), pydeq.RK4(dt=0.05), torch.linspace(0.0, 1.0, 4, dtype=D))
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_gradcheck_adaptive_tsit5_at_tight_tolerance():
    # adaptive steps make the solve piecewise smooth in its inputs, so the comparison is at a tolerance
    run, inputs = tiny_run(InterpolatingAdjoint(), TIGHT, (0.0, 1.0))
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("solver, other, other_solver, bound", [
    # Tsit5: three gradients of one solve, each with O(tol) error of its own: measured Interpolating-Direct 1.9e-9,
    # Backsolve-Direct 1.9e-9, Interpolating-Backsolve 6.6e-10
    (NINE, BacksolveAdjoint(), NINE, 2e-8),
    # VCAB3 forward and backward: measured 1.4e-7 from Direct through VCAB3's steps and from InterpolatingAdjoint on
    # Tsit5. VCAB3's share is its Euler first step (no error estimate, an error ~tol^(2/3)) in each backward
    # interval; a dt0 of 1e-6 brings it to 1.6e-8
    (VCAB3_9, InterpolatingAdjoint(), NINE, 1.5e-6),
], ids=["tsit5", "vcab3"])
def test_agrees_with_direct_and_another_adjoint_on_a_neural_ode(solver, other, other_solver, bound):
    # float64 at rtol = atol = 1e-9; largest relative 2-norm error over x and the parameters. A wrong term of the
    # adjoint is off by 1e-3 or more
    net, x = small_net(), torch.randn(4, 3, dtype=D, requires_grad=True)
    ref, _ = grads(DirectAdjoint(), net, x, (0.0, 1.0), solver)
    second, _ = grads(other, net, x, (0.0, 1.0), other_solver)
    got, sol = grads(InterpolatingAdjoint(), net, x, (0.0, 1.0), solver)
    assert rel_err(got, ref) < bound and rel_err(got, second) < bound
    assert sol.backward.ran and sol.backward.nfe > 0 and float(sol.backward.residual.abs().max()) == 0.0
    assert sol.extras["recorded_steps"] == int(sol.extras["accepted"].sum())  # every accepted step, no other
    with torch.no_grad():  # nothing to differentiate: nothing recorded, the same answer
        quiet = pydeq.odeint(lambda t, u: net(u) + x + torch.sin(t)[:, None], torch.zeros_like(x), (0.0, 1.0),
                             solver=solver, adjoint=InterpolatingAdjoint())
    assert quiet.extras["recorded_steps"] == 0 and torch.equal(quiet.z, sol.z.detach())


def test_vcab3_as_the_backward_method():
    # measured: a VCAB3 backward on a Tsit5 forward 1.4e-7 (Interpolating) and 7.4e-8 (Backsolve) from Direct on
    # Tsit5 at 1e-12, mostly from VCAB3's Euler first step (no error estimate: an error ~tol^(2/3)) at the start;
    # each takes its own loop and Adams quadrature
    net, x = small_net(), torch.randn(4, 3, dtype=D, requires_grad=True)
    ref, _ = grads(DirectAdjoint(), net, x, (0.0, 1.0), pydeq.Tsit5(rtol=1e-12, atol=1e-12))
    for adjoint in (InterpolatingAdjoint(solver=VCAB3_9), BacksolveAdjoint(solver=VCAB3_9)):
        got, sol = grads(adjoint, net, x, (0.0, 1.0), NINE)
        assert rel_err(got, ref) < 1.5e-6 and sol.backward.nfe > 0


def test_vcab3_forward_with_a_tsit5_backward():
    # measured 1.0e-8 from Direct through VCAB3's steps: the forward's dense output and the RK quadrature
    net, x = small_net(), torch.randn(4, 3, dtype=D, requires_grad=True)
    direct, _ = grads(DirectAdjoint(), net, x, (0.0, 1.0), VCAB3_9)
    got, _ = grads(InterpolatingAdjoint(solver=NINE), net, x, (0.0, 1.0), VCAB3_9)
    assert rel_err(got, direct) < 1e-7


class Cell(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.W, self.U = nn.Linear(3, 3).double(), nn.Linear(2, 3).double()

    def forward(self, u, x):
        return torch.tanh(self.W(u) + self.U(x))


def test_neural_ode_layer_takes_it_for_parameters_input_and_initial_state():
    cell = Cell()
    x = torch.randn(3, 2, dtype=D, requires_grad=True)
    z0 = torch.randn(3, 3, dtype=D, requires_grad=True)
    out = []
    for adjoint in (DirectAdjoint(), InterpolatingAdjoint()):
        layer = pydeq.NeuralODE(cell, solver=TIGHT, adjoint=adjoint)
        z = layer(x, z0=z0)
        out.append(torch.autograd.grad(z.pow(2).sum(), [z0, x, *cell.parameters()]))
    assert rel_err(out[1], out[0]) < 1e-8 and layer.last_solution.backward.nfe > 0


@pytest.mark.parametrize("solver, rtol, atol", [(TIGHT, 1e-8, 1e-9), (VCAB3_9, 2e-6, 2e-6)], ids=["tsit5", "vcab3"])
def test_linear_ode_end_point_and_output_times_are_closed_form(solver, rtol, atol):
    # u(t) = expm(A (t - t0)) u0, loss = sum_j <c_j, u(t_j)>: the reference goes through matrix_exp. An end point,
    # five shared output times (two close together), and per-sample times, one row running backward. VCAB3 at 1e-9
    # forward and backward: measured 1.8e-7 at most, over max(|exact|, 1) (Direct through its steps 1.5e-7)
    torch.manual_seed(1)
    A = (0.5 * torch.randn(3, 3, dtype=D)).requires_grad_(True)
    u0 = torch.randn(2, 3, dtype=D, requires_grad=True)
    shared = torch.tensor([0.0, 0.4, 0.45, 1.0, 1.7], dtype=D)
    rows = torch.stack([shared, torch.tensor([0.5, 0.2, -0.3, -0.35, -1.2], dtype=D)])
    c = torch.randn(5, 3, dtype=D)
    for t in ((0.0, 1.7), shared, rows):
        sol = pydeq.odeint(lambda t, u: u @ A.T, u0, t, solver=solver, adjoint=InterpolatingAdjoint())  # finds A
        if isinstance(t, tuple):
            loss, exact = sol.z @ c[-1], u0 @ torch.linalg.matrix_exp(A * t[1]).T @ c[-1]
        else:
            elapsed = t.expand(2, 5) - t.expand(2, 5)[:, :1]
            expm = torch.linalg.matrix_exp(A * elapsed[:, :, None, None])  # (batch, n, 3, 3)
            loss, exact = sol.z * c, (expm @ u0[:, None, :, None]).squeeze(-1) * c
        got = torch.autograd.grad(loss.sum(), [u0, A])
        ref = torch.autograd.grad(exact.sum(), [u0, A])
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
        assert sol.backward.nfe > 0


def test_per_sample_step_grids_rotation_closed_form():
    # du/dt = w_b J u rotates sample b at its own rate, so the samples take very different forward steps and the
    # backward pass must read each one's own step grid. loss = sum_b <c_b, R(w_b) u0_b>:
    # dL/du0_b = R(w_b)^T c_b, dL/dw_b = <c_b, J R(w_b) u0_b>
    w = torch.tensor([0.5, 5.0, 20.0], dtype=D, requires_grad=True)
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=D)
    u0 = torch.tensor([[1.0, 0.0], [0.3, -2.0], [-1.0, 1.0]], dtype=D, requires_grad=True)
    c = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.7, 0.2]], dtype=D)
    solver = pydeq.Tsit5(rtol=1e-9, atol=1e-11)
    sol = pydeq.odeint(lambda t, u: w[:, None] * (u @ J.T), u0, (0.0, 1.0), solver=solver,
                       adjoint=InterpolatingAdjoint())
    accepted = sol.extras["accepted"]
    assert int(accepted[2]) > 5 * int(accepted[0]), accepted  # the grids really differ
    g_u0, g_w = torch.autograd.grad((sol.z * c).sum(), [u0, w])
    R = torch.linalg.matrix_exp(w.detach()[:, None, None] * J)
    Ru0 = (R @ u0.detach()[:, :, None]).squeeze(2)
    torch.testing.assert_close(g_u0, (R.transpose(1, 2) @ c[:, :, None]).squeeze(2), rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(g_w, (c * (Ru0 @ J.T)).sum(1), rtol=1e-7, atol=1e-8)


def test_gradient_error_falls_with_the_backward_tolerance():
    # forward at 1e-10, so the interpolant's error is far below these; measured relative errors against Direct
    # 1.6e-4, 9.5e-6 and 4.5e-8 at backward tolerances 1e-3, 1e-5 and 1e-7, for 16, 30 and 44 VJPs
    net, x = small_net(2), torch.randn(3, 3, dtype=D, requires_grad=True)
    ref, _ = grads(DirectAdjoint(), net, x, (0.0, 1.0), TIGHT)
    errs, nfes = [], []
    for tol in (1e-3, 1e-5, 1e-7):
        got, sol = grads(InterpolatingAdjoint(rtol=tol, atol=tol), net, x, (0.0, 1.0), TIGHT)
        errs.append(rel_err(got, ref))
        nfes.append(sol.backward.nfe)
    assert errs[0] > 5 * errs[1] > 50 * errs[2], errs
    assert errs[2] < 1e-6 and nfes[0] < nfes[1] < nfes[2], (errs, nfes)


def test_accurate_where_backsolve_is_unstable():
    # strongly contracting modes (rates 20 and 40): re-integrated backward, u grows the forward error by e^40;
    # read from the forward pass it does not. Measured relative errors 0.31 (backsolve, 1934 VJPs) and 5.5e-8
    # (interpolating, 954 VJPs; the tolerance is 1e-8)
    torch.manual_seed(0)
    W = (0.5 * torch.randn(3, 3, dtype=D)).requires_grad_(True)
    rate = torch.tensor([1.0, 20.0, 40.0], dtype=D)
    u0 = torch.randn(2, 3, dtype=D, requires_grad=True)

    def run(adjoint):
        sol = pydeq.odeint(lambda t, u: -rate * u + torch.tanh(u @ W.T), u0, (0.0, 1.0),
                           solver=pydeq.Tsit5(rtol=1e-8, atol=1e-10), adjoint=adjoint, params=[W])
        return torch.autograd.grad(sol.z.pow(2).sum() + sol.z.sum(), [u0, W]), sol

    ref, _ = run(DirectAdjoint())
    back, _ = run(BacksolveAdjoint())
    got, sol = run(InterpolatingAdjoint())
    assert rel_err(got, ref) < 1e-6 and rel_err(back, ref) > 0.1


def test_backward_nfe_counts_the_vjps_and_a_second_backward_repeats_the_gradient():
    net, x = small_net(), torch.randn(2, 3, dtype=D, requires_grad=True)
    calls = {"n": 0, "backward": False}

    def field(t, u):
        calls["n"] += calls["backward"]
        return net(u) + x

    sol = pydeq.odeint(field, torch.zeros_like(x), (0.0, 1.0), solver=pydeq.Tsit5(rtol=1e-6, atol=1e-8),
                       adjoint=InterpolatingAdjoint())
    calls["backward"] = True
    first = torch.autograd.grad(sol.z.sum(), [x, *net.parameters()], retain_graph=True)
    assert sol.backward.nfe == calls["n"] > 0  # one call of fn (and one VJP) per backward evaluation
    again = torch.autograd.grad(sol.z.sum(), [x, *net.parameters()])
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_vcab3_gradcheck():
    # the continuous adjoint against finite differences of the discrete VCAB3 solve: measured 1.0e-6 at most per
    # Jacobian entry (entries up to 1.3) at rtol = atol = 1e-8
    run, inputs = tiny_run(InterpolatingAdjoint(), pydeq.VCAB3(rtol=1e-8, atol=1e-8), (0.0, 1.0))
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-5, rtol=1e-5)


def test_vcab3_per_sample_step_grids_closed_form_and_batch_independent():
    # rotations at rates c w_b with a shared c: the samples take 84, 359 and 993 VCAB3 steps, and dL/dc sums the
    # samples' parameter quadratures, each on its own backward steps. Batched equals alone to round-off (measured
    # 0 for u0, 2e-15 for c); against the closed form measured 1.7e-6 (u0) and 2.4e-5 (c, of 1.48) at 1e-7
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=D)
    w = torch.tensor([0.5, 2.0, 6.0], dtype=D)
    u0 = torch.tensor([[1.0, 0.0], [0.3, -2.0], [-1.0, 1.0]], dtype=D)
    k = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.7, 0.2]], dtype=D)

    def run(rows):
        c, start = torch.tensor(1.0, dtype=D, requires_grad=True), u0[rows].clone().requires_grad_(True)
        sol = pydeq.odeint(lambda t, u: c * w[rows, None] * (u @ J.T), start, (0.0, 1.0),
                           solver=pydeq.VCAB3(rtol=1e-7, atol=1e-7), adjoint=InterpolatingAdjoint())
        return torch.autograd.grad((sol.z * k[rows]).sum(), [start, c]), sol

    (g_u0, g_c), sol = run(slice(None))
    accepted = sol.extras["accepted"]
    assert int(accepted[2]) > 10 * int(accepted[0]), accepted  # the grids really differ
    R = torch.linalg.matrix_exp(w[:, None, None] * J)
    Ru0 = (R @ u0[:, :, None]).squeeze(2)
    torch.testing.assert_close(g_u0, (R.transpose(1, 2) @ k[:, :, None]).squeeze(2), rtol=0, atol=2e-5)
    torch.testing.assert_close(g_c, (w * (k * (Ru0 @ J.T)).sum(1)).sum(), rtol=2e-4, atol=0)
    alone = [run(slice(i, i + 1))[0] for i in range(3)]
    torch.testing.assert_close(g_u0, torch.cat([a[0] for a in alone]), rtol=0, atol=1e-14)
    torch.testing.assert_close(g_c, sum(a[1] for a in alone), rtol=0, atol=1e-13)


def test_vcab3_quadrature_holds_few_graphs(monkeypatch):
    # each backward evaluation's graph waits until no sample can add to its weight; a sample that stopped adds to
    # nothing, so 3 are held at most here although the samples finish at different passes (9 if they kept theirs)
    peak = [0]
    accumulate = AdamsQuadrature.accumulate

    def watched(self, rec):
        accumulate(self, rec)
        peak[0] = max(peak[0], len(self.held))

    monkeypatch.setattr(AdamsQuadrature, "accumulate", watched)
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=D)
    w = torch.tensor([0.5, 2.0, 6.0], dtype=D, requires_grad=True)
    sol = pydeq.odeint(lambda t, u: w[:, None] * (u @ J.T), torch.ones(3, 2, dtype=D), (0.0, 1.0), solver=NINE,
                       adjoint=InterpolatingAdjoint(solver=pydeq.VCAB3(rtol=1e-5, atol=1e-5)))
    sol.z.sum().backward()
    assert 1 <= peak[0] <= 3 and w.grad is not None


def test_neural_ode_with_vcab3_and_interpolating_adjoint_trains_a_step():
    # the paper's neural-ODE baseline (VCAB3 + InterpolatingAdjoint): one SGD step lowers the loss, with the gradient
    # of Direct through VCAB3's steps (measured 8.7e-5 apart at rtol = atol = 1e-6)
    x, target = torch.randn(3, 2, dtype=D), torch.randn(3, 3, dtype=D)
    out = []
    for adjoint in (DirectAdjoint(), InterpolatingAdjoint()):
        layer = pydeq.NeuralODE(Cell(), solver=pydeq.VCAB3(rtol=1e-6, atol=1e-6), adjoint=adjoint, state_shape=(3,))
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        loss = (layer(x) - target).pow(2).mean()
        loss.backward()
        assert layer.last_solution.backward.nfe > 0
        out.append([q.grad.clone() for q in layer.parameters()])
        opt.step()
        with torch.no_grad():
            assert float((layer(x) - target).pow(2).mean()) < float(loss) - 0.05
    assert rel_err(out[1], out[0]) < 1e-3


def test_bad_arguments():
    with pytest.raises(TypeError, match="InterpolatingAdjoint.solver must be an ODE method such as Tsit5\\(\\); "
                                        "got Anderson"):
        InterpolatingAdjoint(solver=pydeq.Anderson())
    for name in ("rtol", "atol"):
        for bad in (0.0, -1e-6, math.nan, "1e-6"):
            with pytest.raises(ValueError, match=f"InterpolatingAdjoint.{name} must be a finite number > 0; got"):
                InterpolatingAdjoint(**{name: bad})
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="InterpolatingAdjoint.max_steps must be an int >= 1; got"):
            InterpolatingAdjoint(max_steps=bad)
    with pytest.raises(TypeError, match="DEQ adjoint must be .*got InterpolatingAdjoint.*finite-horizon ODE"):
        pydeq.DEQ(lambda z, x: 0.5 * z + x, adjoint=InterpolatingAdjoint())


def test_too_few_backward_steps_warn_and_report_the_time_left():
    net, x = small_net(), torch.randn(2, 3, dtype=D, requires_grad=True)
    sol = pydeq.odeint(lambda t, u: net(u) + x, torch.zeros_like(x), (0.0, 1.0), solver=TIGHT,
                       adjoint=InterpolatingAdjoint(max_steps=2))
    with pytest.warns(pydeq.ConvergenceWarning, match="interpolating adjoint did not reach t0 for 2 sample\\(s\\).*"
                                                      "raise InterpolatingAdjoint\\(max_steps=...\\)"):
        sol.z.sum().backward()
    assert bool((sol.backward.residual > 0).all())


class NoDense(pydeq.Tsit5):
    """Tsit5 with its continuous extension removed."""

    tableau = dataclasses.replace(pydeq.Tsit5.tableau, dense=((0.0,),) * 7)


def test_methods_without_dense_output_are_refused():
    # every method pydeq has a dense output (VCAB3's is its own polynomial); a tableau without one is refused
    u0 = torch.ones(1, 2, dtype=D)
    need = "InterpolatingAdjoint evaluates u\\(t\\) backward from the forward method's dense output, and {} has none"
    with pytest.raises(TypeError, match=need.format("NoDense") + ".*Tsit5, Dopri5.*RK38, VCAB3.*DirectAdjoint\\(\\)"):
        pydeq.odeint(lambda t, u: -u, u0, (0.0, 1.0), solver=NoDense(), adjoint=InterpolatingAdjoint())
    with pytest.raises(TypeError, match=need.format("NoDense")):
        pydeq.NeuralODE(lambda u, x: -u, solver=NoDense(), adjoint=InterpolatingAdjoint())
    problem = ODEProblem(fn=lambda t, u: -u, solver=NoDense(), grid=endpoint_grid(0.0, 1.0, u0), max_steps=10,
                         params=())
    with pytest.raises(TypeError, match=need.format("NoDense")):  # the adjoint's own check, without odeint's
        InterpolatingAdjoint().solve(problem, u0)
    assert pydeq.odeint(lambda t, u: -u, u0, (0.0, 1.0), solver=NoDense(), adjoint=BacksolveAdjoint()).success
