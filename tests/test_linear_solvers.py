"""The backward pass's linear solvers against dense solves of (I - K) w = b, one matrix per sample."""

import pytest
import torch

import pydeq


def _problem(batch=5, n=12, radius=0.9, seed=0, skew=0.0):
    """Per-sample K (batch, n, n) with spectral radius ``radius``; ``skew > 0`` makes it non-normal, ||K||_2 > 1."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(batch, n, n, generator=g, dtype=torch.float64))[0]
    eig = radius * (2 * torch.rand(batch, n, generator=g, dtype=torch.float64) - 1)
    T = torch.diag_embed(eig)
    T = T + skew * torch.triu(torch.randn(batch, n, n, generator=g, dtype=torch.float64), 1)  # same eigenvalues
    K = Q @ T @ Q.mT
    b = torch.randn(batch, n, generator=g, dtype=torch.float64)
    return K, b


def _apply(K):
    return lambda v: (K @ v[..., None])[..., 0]


def _exact(K, b):
    return torch.linalg.solve(torch.eye(K.shape[-1], dtype=K.dtype) - K, b)


@pytest.mark.parametrize("solver", [pydeq.GMRES(rtol=1e-13, atol=0.0), pydeq.GMRES(rtol=1e-13, atol=0.0, restart=4,
                                                                                     max_steps=400),
                                    pydeq.Neumann(rtol=1e-13, atol=0.0, max_steps=2000), pydeq.Direct()], ids=repr)
def test_matches_dense_solve(solver):
    K, b = _problem()
    sol = solver.solve(_apply(K), b)
    torch.testing.assert_close(sol.w, _exact(K, b), rtol=0, atol=1e-10)


def test_gmres_terminates_in_n_steps_on_an_n_dimensional_problem():
    """Full GMRES is exact after n matvecs in exact arithmetic: checks the Arnoldi relation and the rotations."""
    K, b = _problem(n=8, radius=0.95, skew=1.0)
    sol = pydeq.GMRES(rtol=1e-12, atol=0.0, restart=8, max_steps=9).solve(_apply(K), b)
    assert sol.matvecs <= 9  # 8 Arnoldi steps and the check of b - A w
    err = (sol.w - _exact(K, b)).norm(dim=1) / _exact(K, b).norm(dim=1)
    assert (err < 1e-8).all(), err


def test_gmres_on_a_non_normal_ill_conditioned_system():
    """||K|| ~ 4 (Neumann diverges) and cond(I - K) up to 2e5: orthogonality must be kept (DGKS second passes)."""
    K, b = _problem(n=30, radius=0.999, skew=0.5, seed=3)
    A = torch.eye(30, dtype=K.dtype) - K
    assert torch.linalg.cond(A).max() > 1e5 and (torch.linalg.matrix_norm(K, 2) > 2).all()
    sol = pydeq.GMRES(rtol=1e-12, atol=0.0, restart=30, max_steps=200).solve(_apply(K), b)
    true_res = (b - (A @ sol.w[..., None])[..., 0]).norm(dim=1)
    assert (true_res / b.norm(dim=1) < 1e-10).all(), true_res
    # the reported residual is b - A w, up to the rounding of forming it
    torch.testing.assert_close(sol.residual, true_res, rtol=1e-3, atol=1e-11 * float(b.norm(dim=1).max()))


def test_gmres_reports_the_true_residual_when_its_estimate_is_wrong():
    """cond(I - K) ~ 1e13: the Givens estimate collapses to ~1e-14 while b - A w stays ~1e-5; the report must not."""
    K, b = _problem(n=60, radius=0.999, skew=0.7, seed=3)
    A = torch.eye(60, dtype=K.dtype) - K
    sol = pydeq.GMRES(rtol=1e-12, atol=0.0, restart=60, max_steps=180).solve(_apply(K), b)
    true_res = (b - (A @ sol.w[..., None])[..., 0]).norm(dim=1)
    torch.testing.assert_close(sol.residual, true_res, rtol=0.2, atol=0)  # |w| ~ 4e11: rounding of b - A w
    assert (sol.residual > 1e-6 * b.norm(dim=1)).any()  # honestly not converged


def test_per_sample_zero_right_hand_side():
    K, b = _problem()
    b[2] = 0
    sol = pydeq.GMRES(rtol=1e-12, atol=0.0).solve(_apply(K), b)
    assert torch.equal(sol.w[2], torch.zeros_like(sol.w[2]))
    torch.testing.assert_close(sol.w[[0, 1, 3, 4]], _exact(K, b)[[0, 1, 3, 4]], rtol=0, atol=1e-10)
