"""Every root finder reaches the analytic fixed point of a linear DEQ; per-sample behaviour."""

import pytest
import torch
from conftest import linear_problem, linear_solution

import pydeq

TIGHT = dict(rtol=0.0, atol=1e-11)
SOLVERS = [
    pydeq.FixedPointIteration(**TIGHT, max_steps=400),
    pydeq.FixedPointIteration(**TIGHT, max_steps=800, damping=0.7),
    pydeq.Anderson(**TIGHT),
    pydeq.Anderson(**TIGHT, history=2, damping=0.8),
    pydeq.Anderson(**TIGHT, regularisation=0.0),
    pydeq.Broyden(**TIGHT),
    pydeq.Broyden(**TIGHT, line_search=True),
    pydeq.NewtonKrylov(**TIGHT),
]


@pytest.mark.parametrize("solver", SOLVERS, ids=repr)
def test_linear_fixed_point_matches_linalg_solve(solver):
    W, U, x = linear_problem()
    with torch.no_grad():
        sol = pydeq.fixed_point(lambda z, x: z @ W.T + x @ U.T, x, solver=solver, on_failure="raise")
        exact = linear_solution(W, U, x)
    assert torch.allclose(sol.z, exact, rtol=0, atol=1e-8)
    assert sol.success and (sol.residual <= 1e-11).all()


@pytest.mark.parametrize("solver", SOLVERS[2:], ids=repr)
def test_nonlinear_tanh_fixed_point(solver):
    W, U, x = linear_problem(d=10, contraction=0.9)
    f = lambda z, x: torch.tanh(z @ W.T + x @ U.T)  # noqa: E731
    with torch.no_grad():
        sol = pydeq.fixed_point(f, x, solver=solver, on_failure="raise")
        assert torch.allclose(f(sol.z, x), sol.z, atol=1e-9)


def test_acceleration_beats_picard_iteration():
    W, U, x = linear_problem(d=20)
    S = W.detach() + W.detach().T
    Q = 0.95 * S / torch.linalg.matrix_norm(S, 2)  # symmetric, spectral radius 0.95: Picard needs hundreds of steps
    f = lambda z, x: torch.tanh(z @ Q.T + 0.1 * x @ U.T)  # noqa: E731
    with torch.no_grad():
        nfe = {type(s).__name__: pydeq.fixed_point(f, x, solver=s, on_failure="raise").nfe
               for s in [pydeq.FixedPointIteration(**TIGHT, max_steps=2000), pydeq.Anderson(**TIGHT, max_steps=200),
                         pydeq.Broyden(**TIGHT, max_steps=200)]}
    assert nfe["Anderson"] < nfe["FixedPointIteration"] / 3
    assert nfe["Broyden"] < nfe["FixedPointIteration"] / 3


@pytest.mark.parametrize("solver", [pydeq.FixedPointIteration(rtol=0, atol=1e-10, max_steps=500),
                                    pydeq.Anderson(rtol=0, atol=1e-10), pydeq.Broyden(rtol=0, atol=1e-10)], ids=repr)
def test_easy_samples_stop_early_and_stay_unchanged(solver):
    d = 8
    g = torch.Generator().manual_seed(1)
    W = torch.randn(d, d, dtype=torch.float64, generator=g)
    W = W / torch.linalg.matrix_norm(W, 2)
    # per-sample contraction: sample 0 easy (0.1), sample 1 hard (0.95)
    scale = torch.tensor([0.1, 0.95], dtype=torch.float64)[:, None]
    x = torch.randn(2, d, dtype=torch.float64, generator=g)
    f = lambda z, x: scale * torch.tanh(z @ W.T) + x  # noqa: E731
    with torch.no_grad():
        both = pydeq.fixed_point(f, x, solver=solver, on_failure="raise", trace=True)
    assert both.steps[0] < both.steps[1]
    # after sample 0 stopped, its residual trace is constant: it is frozen while sample 1 continues
    frozen = torch.stack(both.trace)[int(both.steps[0]):, 0]
    assert (frozen == frozen[0]).all()


def test_sample_result_independent_of_batch():
    W, U, x = linear_problem(d=8, batch=5, contraction=0.9)
    f = lambda z, x: torch.tanh(z @ W.T + x @ U.T)  # noqa: E731
    solver = pydeq.FixedPointIteration(rtol=0, atol=1e-10, max_steps=500)
    with torch.no_grad():
        full = pydeq.fixed_point(f, x, solver=solver).z
        single = torch.cat([pydeq.fixed_point(f, x[i:i + 1], solver=solver).z for i in range(5)])
    assert torch.allclose(full, single, rtol=0, atol=1e-13)  # same steps per sample; BLAS rounding only


def test_best_iterate_is_returned_when_not_converged():
    W, U, x = linear_problem(d=8, contraction=0.99)
    f = lambda z, x: torch.tanh(z @ W.T + x @ U.T) * 1.3  # noqa: E731  (not contractive)
    with torch.no_grad():
        sol = pydeq.fixed_point(f, x, solver=pydeq.FixedPointIteration(max_steps=30), on_failure="return", trace=True)
    trace = torch.stack(sol.trace)
    assert torch.allclose(sol.residual, trace.min(0).values)


def test_broyden_keeps_inverse_jacobian_factors():
    W, U, x = linear_problem(d=6)
    with torch.no_grad():
        sol = pydeq.fixed_point(lambda z, x: z @ W.T + x @ U.T, x, solver=pydeq.Broyden(rtol=0, atol=1e-12, history=30))
    H = sol.extras["broyden"]
    exact_inv = torch.linalg.inv(W - torch.eye(6, dtype=W.dtype))
    v = torch.randn(4, 6, dtype=torch.float64)
    # H acts as (J_f - I)^{-1}: far from the Jacobian-free guess -I, close to the true inverse
    err = (H.apply(v) - v @ exact_inv.T).norm() / (v @ exact_inv.T).norm()
    naive = (-v - v @ exact_inv.T).norm() / (v @ exact_inv.T).norm()
    assert err < 0.5 * naive


def test_trace_and_statistics():
    W, U, x = linear_problem()
    with torch.no_grad():
        sol = pydeq.fixed_point(lambda z, x: z @ W.T + x @ U.T, x, solver=pydeq.Anderson(), trace=True)
    assert len(sol.trace) == int(sol.steps.max()) + 1
    assert sol.nfe == int(sol.steps.max()) + 1
    assert sol.status.dtype == torch.int64 and sol.success
    assert "converged" in sol.summary()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes(dtype):
    W, U, x = linear_problem()
    W, U, x = (t.detach().to(dtype) for t in (W, U, x))
    sol = pydeq.fixed_point(lambda z, x: torch.tanh(z @ W.T + x @ U.T), x, on_failure="raise")
    assert sol.z.dtype == dtype


@pytest.mark.parametrize("norm", [pydeq.rms_norm, pydeq.l2_norm, pydeq.max_norm])
def test_anderson_gram_matrix_is_updated_incrementally(norm):
    """The Gram matrix kept one row and column at a time equals G G^T of the stored residuals, ring wrap included;
    the residual read off its diagonal is the solver's norm of f(z) - z."""
    W, U, x = linear_problem(d=10, contraction=0.9)
    solver = pydeq.Anderson(history=3, rtol=0.0, atol=1e-30, max_steps=50, norm=norm)
    fn = lambda z: torch.tanh(z @ W.T + x @ U.T)  # noqa: E731
    active = torch.ones(x.shape[0], dtype=torch.bool)
    with torch.no_grad():
        state = solver.init(fn, torch.zeros_like(x))
        for _ in range(7):  # past two wraps of the 3-slot ring
            n = min(state.k, 3)  # slots not yet written are never read
            G = state.G[:, :n]
            torch.testing.assert_close(state.GG[:, :n, :n], G @ G.transpose(1, 2), rtol=1e-12, atol=1e-14)
            assert torch.equal(state.G[:, (state.k - 1) % 3], state.fz - state.z)
            # the residual is read off the Gram diagonal, not recomputed
            torch.testing.assert_close(solver.residual(state), norm(state.fz - state.z), rtol=1e-14, atol=0)
            state = solver.step(fn, state, active)


def test_anderson_in_place_and_recorded_paths_agree():
    """The no-grad path (buffers written in place, cached views) and the unrolled path (out of place, recorded
    for autograd) run the same iteration: same iterates, residuals and step counts, ring wrap included."""
    W, U, x = linear_problem(d=10, batch=6, contraction=0.9)
    f = lambda z, x: torch.tanh(z @ W.T + x @ U.T)  # noqa: E731
    solver = pydeq.Anderson(history=3, rtol=0.0, atol=1e-12, max_steps=40)
    with torch.no_grad():
        fast = pydeq.fixed_point(f, x, solver=solver, on_failure="raise", trace=True)
    recorded = pydeq.fixed_point(f, x, solver=solver, adjoint=pydeq.DirectAdjoint(), on_failure="raise", trace=True)
    assert recorded.z.requires_grad and int(fast.steps.max()) > 6  # the ring of 3 wrapped
    torch.testing.assert_close(fast.z, recorded.z.detach(), rtol=0, atol=1e-13)
    assert torch.equal(fast.steps, recorded.steps) and fast.nfe == recorded.nfe
    torch.testing.assert_close(torch.stack(fast.trace), torch.stack(recorded.trace).detach(), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("solver", [pydeq.FixedPointIteration(rtol=0, atol=1e-10, max_steps=200),
                                    pydeq.Anderson(rtol=0, atol=1e-10)], ids=repr)
def test_a_sample_turning_nan_mid_solve_is_flagged_alone(solver):
    """While every sample still runs, the driver checks for stops with one host read; a NaN appearing in one
    sample at step 3 must still be caught there, with the other samples solved as if alone."""
    W, U, x = linear_problem(d=8, batch=4, contraction=0.9)
    calls = [0]

    def f(z, x):
        calls[0] += 1
        out = torch.tanh(z @ W.T + x @ U.T)
        if calls[0] == 4:
            out = out.clone()
            out[2, 0] = float("nan")
        return out

    with torch.no_grad():
        sol = pydeq.fixed_point(f, x, solver=solver, on_failure="return")
        calls[0] = -10**6  # no more NaN
        alone = pydeq.fixed_point(f, x[[0, 1, 3]], solver=solver, on_failure="raise")
    assert sol.status.tolist() == [int(pydeq.Status.SUCCESS)] * 2 + [int(pydeq.Status.NONFINITE), int(pydeq.Status.SUCCESS)]
    assert int(sol.steps[2]) == 3
    torch.testing.assert_close(sol.z[[0, 1, 3]], alone.z, rtol=0, atol=1e-9)


def test_anderson_without_regularisation_survives_parallel_residuals():
    """f(z) = z/2 + b from 0 gives residuals b, b/2 (parallel, singular Gram matrix); the exact answer is 2b."""
    b = torch.randn(4, 6, dtype=torch.float64)
    solver = pydeq.Anderson(regularisation=0.0, rtol=0.0, atol=1e-10, max_steps=20)
    with torch.no_grad():
        sol = pydeq.fixed_point(lambda z, b: 0.5 * z + b, b, solver=solver, on_failure="raise")
    torch.testing.assert_close(sol.z, 2 * b, rtol=0, atol=1e-9)
