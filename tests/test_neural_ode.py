"""NeuralODE layer: the output is the ODE solution, both gradient modes agree, and the DEQ vector field shares
parameters with a DEQ."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pydeq._ode import BacksolveAdjoint, DirectAdjoint, Tsit5
from pydeq.nn.neural_ode import DEQVectorField, NeuralODE

D = torch.float64
TIGHT = Tsit5(rtol=1e-10, atol=1e-12)


class Cell(nn.Module):
    def __init__(self, n=4, m=3):
        super().__init__()
        torch.manual_seed(0)
        self.W, self.U = nn.Linear(n, n).double(), nn.Linear(m, n).double()

    def forward(self, u, x):
        return torch.tanh(self.W(u) + self.U(x))


def test_linear_field_matches_matrix_exponential_and_records_solution():
    A = torch.tensor([[0.0, 1.0], [-1.0, -0.1]], dtype=D)
    x = torch.randn(3, 2, dtype=D)
    layer = NeuralODE(lambda u, x: u @ A.T, t_span=(0.0, 2.0), solver=TIGHT)
    z, sol = layer(x, return_solution=True)  # u0 = x by default
    torch.testing.assert_close(z, x @ torch.linalg.matrix_exp(2.0 * A).T, rtol=1e-9, atol=1e-10)
    assert layer.last_solution is sol and sol.success and bool((sol.extras["t"] == 2.0).all())


def test_state_shape_and_z0():
    cell = Cell()
    x = torch.randn(5, 3, dtype=D)
    layer = NeuralODE(cell, state_shape=(4,), solver=TIGHT)
    z = layer(x)
    assert z.shape == (5, 4)
    z_again = layer(x, z0=torch.zeros(5, 4, dtype=D))
    torch.testing.assert_close(z_again, z, rtol=0, atol=0)
    assert not torch.equal(layer(x, z0=torch.ones(5, 4, dtype=D)), z)
    with pytest.raises(ValueError, match="must return the shape and dtype of u"):
        NeuralODE(lambda u, x: u[:, :2], solver=TIGHT)(torch.randn(2, 3, dtype=D))
    with pytest.raises(ValueError, match="same batch size"):
        layer(x, z0=torch.zeros(2, 4, dtype=D))


def test_direct_and_backsolve_gradients_agree_for_input_and_parameters():
    cell = Cell()
    x = torch.randn(4, 3, dtype=D, requires_grad=True)
    grads = []
    for adjoint in (DirectAdjoint(), BacksolveAdjoint()):
        layer = NeuralODE(DEQVectorField(cell), state_shape=(4,), solver=TIGHT, adjoint=adjoint)
        z = layer(x)
        grads.append(torch.autograd.grad((z**2).sum(), [x, *cell.parameters()]))
        assert layer.last_solution.backward.ran and layer.last_solution.backward.nfe > 0
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)


def test_deq_vector_field_is_f_minus_u_and_shares_parameters():
    cell = Cell()
    field = DEQVectorField(cell)
    u, x = torch.randn(2, 4, dtype=D), torch.randn(2, 3, dtype=D)
    torch.testing.assert_close(field(u, x), cell(u, x) - u)
    assert {id(p) for p in field.parameters()} == {id(p) for p in cell.parameters()}
    # integrated long enough, the DEQ flow settles at the fixed point f(z) = z
    z = NeuralODE(field, t_span=(0.0, 40.0), state_shape=(4,), solver=Tsit5(rtol=1e-8, atol=1e-10))(x)
    torch.testing.assert_close(cell(z, x), z, rtol=0, atol=1e-7)


def test_bad_arguments():
    with pytest.raises(ValueError, match="t_span must be increasing"):
        NeuralODE(Cell(), t_span=(1.0, 0.0))
    with pytest.raises(TypeError, match="f must be an nn.Module or callable"):
        NeuralODE(3)
    with pytest.raises(TypeError, match="x must be floating point"):
        NeuralODE(Cell())(torch.zeros(2, 3, dtype=torch.long))
