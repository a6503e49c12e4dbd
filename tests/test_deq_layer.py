"""The DEQ module family: shapes, Skip/Skip Reg initial states, losses, pretraining, eval solver."""

import pytest
import torch
from torch import nn

import pydeq


class TanhCell(nn.Module):
    def __init__(self, d_state=12, d_in=5):
        super().__init__()
        self.W = nn.Linear(d_state, d_state, bias=False)
        self.U = nn.Linear(d_in, d_state)
        with torch.no_grad():
            self.W.weight.mul_(0.5 / torch.linalg.matrix_norm(self.W.weight, 2))

    def forward(self, z, x):
        return torch.tanh(self.W(z) + self.U(x))


def test_state_shape_differs_from_input_and_training_step():
    f = TanhCell()
    deq = pydeq.DEQ(f, state_shape=(12,), solver=pydeq.Anderson(rtol=1e-6, atol=1e-6))
    x = torch.randn(7, 5)
    z, sol = deq(x, return_solution=True)
    assert z.shape == (7, 12) and deq.last_solution is sol and sol.success
    assert torch.allclose(f(z, x), z, atol=1e-6)
    opt = torch.optim.SGD(deq.parameters(), lr=0.1)
    loss = z.pow(2).mean()
    loss.backward()
    assert sol.backward.ran and sol.backward.nfe > 0
    opt.step()


def test_explicit_z0_and_warm_start_saves_work():
    deq = pydeq.DEQ(TanhCell(), state_shape=(12,), solver=pydeq.Anderson(rtol=1e-6, atol=1e-6))
    x = torch.randn(7, 5)
    with torch.no_grad():
        z = deq(x)
        cold = deq.last_solution.nfe
        deq(x, z0=z)
        assert deq.last_solution.nfe < cold


def test_skip_deq_predictor_is_trained_by_skip_loss():
    torch.manual_seed(0)
    f = TanhCell()
    deq = pydeq.SkipDEQ(f, nn.Linear(5, 12), state_shape=(12,))
    x = torch.randn(32, 5)
    opt = torch.optim.Adam(deq.init.parameters(), lr=0.05)
    losses = []
    for _ in range(40):
        deq(x)
        loss = deq.skip_loss()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.3 * losses[0]
    # a better initial state means fewer solver steps
    with torch.no_grad():
        deq(x)
        skip_nfe = deq.last_solution.nfe
        plain = pydeq.DEQ(f, state_shape=(12,))
        plain(x)
    assert skip_nfe < plain.last_solution.nfe


def test_skip_reg_deq_starts_at_f_of_zero():
    f = TanhCell()
    deq = pydeq.SkipRegDEQ(f, state_shape=(12,), skip_weight=0.5)
    x = torch.randn(4, 5)
    deq(x)
    z0 = deq.last_solution.extras["z0"]
    assert torch.allclose(z0, f(torch.zeros(4, 12), x))
    aux = deq.aux_loss()
    assert torch.allclose(aux, 0.5 * deq.skip_loss())
    aux.backward()
    assert f.U.weight.grad is not None


def test_jacobian_loss_matches_exact_frobenius_in_expectation():
    torch.manual_seed(0)
    f = TanhCell(d_state=6, d_in=3).double()
    x = torch.randn(2, 3, dtype=torch.float64)
    z = torch.randn(2, 6, dtype=torch.float64)
    exact = torch.stack([torch.autograd.functional.jacobian(lambda zz: f(zz[None], x[i:i + 1])[0], z[i]).pow(2).sum()
                         for i in range(2)])
    est = pydeq.jacobian_frobenius(lambda zz: f(zz, x), z, probes=4000, create_graph=False)
    assert torch.allclose(est, exact, rtol=0.05)
    deq = pydeq.DEQ(f, state_shape=(6,), jacobian_weight=2.0)
    deq(x)
    assert deq.jacobian_loss(probes=8).requires_grad


def test_pretraining_switch_unrolls_then_returns_to_solving():
    f = TanhCell()
    deq = pydeq.DEQ(f, state_shape=(12,))
    x = torch.randn(3, 5)
    with deq.pretraining(4):
        z = deq(x)
        assert deq.last_solution.nfe == 4
        manual = torch.zeros(3, 12)
        for _ in range(4):
            manual = f(manual, x)
        assert torch.equal(z, manual)
    assert deq.unrolled_steps is None
    deq(x)
    assert deq.last_solution.success


def test_pretraining_status_is_the_solvers_stop_test():
    # the last unrolled step z_{n-1} -> z_n is judged as the driver judges an iterate:
    # norm(z_n - z_{n-1}) <= atol + rtol * norm(z_n), with the layer solver's norm and tolerances
    f = TanhCell()
    x = torch.randn(3, 5)
    z_prev = f(torch.zeros(3, 12), x)
    z = f(z_prev, x)
    res, size = pydeq.max_norm(z - z_prev).detach(), pydeq.max_norm(z).detach()
    i = int(res.argmax())

    def status(solver):
        deq = pydeq.DEQ(f, state_shape=(12,), solver=solver)
        with deq.pretraining(2):
            deq(x)
        assert torch.equal(deq.last_solution.residual, res)
        return deq.last_solution.status

    loose = pydeq.FixedPointIteration(rtol=0.0, atol=float(res[i]), norm=pydeq.max_norm)  # <= : the worst one passes
    assert (status(loose) == int(pydeq.Status.SUCCESS)).all()
    tight = pydeq.FixedPointIteration(rtol=0.0, atol=float(res[i]) * (1 - 1e-6), norm=pydeq.max_norm)
    assert int(status(tight)[i]) == int(pydeq.Status.MAX_STEPS)
    ratio = float((res / size).max())
    relative = pydeq.FixedPointIteration(rtol=ratio * (1 + 1e-3), atol=0.0, norm=pydeq.max_norm)
    assert (status(relative) == int(pydeq.Status.SUCCESS)).all()
    relative = pydeq.FixedPointIteration(rtol=ratio * (1 - 1e-3), atol=0.0, norm=pydeq.max_norm)
    assert (status(relative) == int(pydeq.Status.MAX_STEPS)).any()


def test_eval_solver_used_in_eval_mode():
    f = TanhCell()
    deq = pydeq.DEQ(f, state_shape=(12,), solver=pydeq.FixedPointIteration(max_steps=2),
                    eval_solver=pydeq.Anderson(rtol=1e-6, atol=1e-6), on_failure="return")
    x = torch.randn(3, 5)
    deq(x)
    assert not deq.last_solution.success
    deq.eval()
    with torch.no_grad():
        deq(x)
    assert deq.last_solution.success


@pytest.mark.parametrize("adjoint", [pydeq.ImplicitAdjoint(), pydeq.JacobianFreeAdjoint(), pydeq.PhantomAdjoint(),
                                     pydeq.DirectAdjoint()], ids=repr)
def test_layer_with_every_adjoint_trains(adjoint):
    torch.manual_seed(1)
    deq = pydeq.DEQ(TanhCell(), state_shape=(12,), adjoint=adjoint)
    head = nn.Linear(12, 1)
    x, y = torch.randn(64, 5), torch.randn(64, 1)
    opt = torch.optim.Adam([*deq.parameters(), *head.parameters()], lr=0.02)
    losses = []
    for _ in range(30):
        loss = (head(deq(x)) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
