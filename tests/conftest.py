import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def linear_problem(d=6, batch=4, contraction=0.8, seed=0):
    """z = W z + U x with ||W||_2 = contraction; returns (W, U, x) in float64 with grad."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, d, dtype=torch.float64, generator=g)
    W = (contraction * W / torch.linalg.matrix_norm(W, 2)).requires_grad_()
    U = torch.randn(d, d, dtype=torch.float64, generator=g).requires_grad_()
    x = torch.randn(batch, d, dtype=torch.float64, generator=g).requires_grad_()
    return W, U, x


def linear_solution(W, U, x):
    A = torch.eye(W.shape[0], dtype=W.dtype) - W
    return torch.linalg.solve(A, (x @ U.T).T).T
