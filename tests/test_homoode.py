"""HomoODE: the shared learnable initial point is trained on its own loss and cuts NFE; both gradient modes agree.
AugmentedNeuralODE: the baseline integrates [x, 0]."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pydeq._ode import BacksolveAdjoint, DirectAdjoint, Tsit5
from pydeq.nn.homoode import AugmentedNeuralODE, HomoODE
from pydeq.nn.neural_ode import NeuralODE

D = torch.float64
TIGHT = Tsit5(rtol=1e-10, atol=1e-12)


class G(nn.Module):
    """g(z, x) = MLP([z, x])."""

    def __init__(self, n=4, m=2, h=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n + m, h), nn.Tanh(), nn.Linear(h, n))

    def forward(self, z, x):
        return self.net(torch.cat([z, x], 1))


def toy_batch(n, gen):
    """Targets cluster around 3: a shared start near 3 is much closer than 0 to every z(1)."""
    x = torch.randn(n, 2, generator=gen)
    mix = torch.tensor([[1.0, -2.0, 0.5, 1.5], [0.7, 1.0, -1.0, 0.3]])
    return x, 3.0 + 0.5 * torch.sin(x @ mix)


def train(shared_init: bool, steps: int = 80, every: int = 2):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    homo = HomoODE(G(), (4,), shared_init=shared_init)
    main_opt = torch.optim.Adam(homo.main_parameters(), lr=1e-2)
    init_opt = torch.optim.Adam(homo.initial_point_parameters(), lr=2e-2) if shared_init else None
    for step in range(steps):
        x, y = toy_batch(32, gen)
        loss = ((homo(x) - y) ** 2).mean()
        main_opt.zero_grad()
        loss.backward()
        main_opt.step()
        if shared_init and step % every == 0:
            homo.update_initial_point(init_opt)
    x, y = toy_batch(256, torch.Generator().manual_seed(1))
    with torch.no_grad():
        z, sol = homo(x, return_solution=True)
    return homo, float(((z - y) ** 2).mean()), sol.nfe


def test_shared_initial_point_cuts_nfe_at_equal_accuracy():
    homo, mse_shared, nfe_shared = train(shared_init=True)
    _, mse_zero, nfe_zero = train(shared_init=False)
    assert nfe_shared <= 0.6 * nfe_zero, (nfe_shared, nfe_zero)  # measured: 14 vs 50 on this toy
    assert mse_shared < 1.5 * mse_zero + 1e-3, (mse_shared, mse_zero)
    assert float((homo.initial_point().detach() - 3.0).abs().max()) < 1.0  # z0 moved to the cluster of z(1)


def test_initial_point_is_detached_from_the_main_loss_and_trained_by_its_own():
    torch.manual_seed(0)
    homo = HomoODE(G(), (4,))
    with pytest.raises(RuntimeError, match="call the model on a batch first"):
        homo.initial_point_loss()
    x = torch.randn(8, 2)
    homo(x).sum().backward()
    assert all(p.grad is None for p in homo.initial_point_parameters())
    assert all(p.grad is not None for p in homo.main_parameters())
    homo.zero_grad(set_to_none=True)
    homo.initial_point_loss().backward()
    assert all(p.grad is None for p in homo.main_parameters())
    assert any(float(p.grad.abs().sum()) > 0 for p in homo.initial_point_parameters())
    z0 = homo.initial_point().detach()
    assert z0.shape == (1, 4) and float(z0.abs().max()) == 0.0  # the default z0_net starts at 0


def test_disabled_shared_point_is_zero_start_neural_ode():
    torch.manual_seed(0)
    g = G().double()
    x = torch.randn(5, 2, dtype=D)
    homo = HomoODE(g, (4,), shared_init=False, solver=TIGHT)
    ref = NeuralODE(g, state_shape=(4,), solver=TIGHT)(x)
    torch.testing.assert_close(homo(x), ref, rtol=0, atol=0)
    assert list(homo.initial_point_parameters()) == []
    with pytest.raises(RuntimeError, match="shared_init=False"):
        homo.initial_point_loss()
    with pytest.raises(ValueError, match="z0_net was given but shared_init=False"):
        HomoODE(g, (4,), shared_init=False, z0_net=nn.Linear(16, 4))


def test_direct_and_backsolve_gradients_agree():
    torch.manual_seed(0)
    x = torch.randn(4, 2, dtype=D, requires_grad=True)
    grads = []
    for adjoint in (DirectAdjoint(), BacksolveAdjoint()):
        torch.manual_seed(1)
        homo = HomoODE(G(), (4,), solver=TIGHT, adjoint=adjoint).double()
        with torch.no_grad():  # a non-zero shared start
            homo.z0_net[2].bias.fill_(0.5)
        z = homo(x)
        grads.append(torch.autograd.grad((z**2).sum(), [x, *homo.main_parameters()]))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)


def test_augmented_neural_ode_integrates_padded_input():
    A = torch.tensor([[0.0, 1.0, 0.5], [-1.0, 0.0, 0.0], [0.2, 0.0, -0.3]], dtype=D)
    x = torch.randn(3, 2, dtype=D)
    anode = AugmentedNeuralODE(lambda u: u @ A.T, augment_dim=1, solver=TIGHT)
    z = anode(x)
    padded = torch.cat([x, torch.zeros(3, 1, dtype=D)], 1)
    torch.testing.assert_close(z, padded @ torch.linalg.matrix_exp(A).T, rtol=1e-9, atol=1e-10)
    assert anode.last_solution.success
    with pytest.raises(ValueError, match="augment_dim must be an int >= 0"):
        AugmentedNeuralODE(lambda u: u, augment_dim=-1)
    with pytest.raises(ValueError, match="x must be \\(batch, channels, ...\\)"):
        anode(torch.zeros(3, dtype=D))


def test_augmented_neural_ode_gradients_agree():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 5)).double()
    x = torch.randn(4, 3, dtype=D, requires_grad=True)
    grads = []
    for adjoint in (DirectAdjoint(), BacksolveAdjoint()):
        z = AugmentedNeuralODE(f, augment_dim=2, solver=TIGHT, adjoint=adjoint)(x)
        assert z.shape == (4, 5)
        grads.append(torch.autograd.grad(z.pow(2).sum(), [x, *f.parameters()]))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)
