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


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny ops on a shared 2-core machine run 10-100x slower with more)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def random_images_ctx(monkeypatch):
    """A factory of benchmark contexts whose data are ``n`` random images per split (never the cache).

    ``make(suite="quick", n=8, quick_sizes=False, **fields)``: ``quick_sizes=True`` makes ``ctx.scale`` pick the
    quick size in any suite (the paper suite's rows, at the quick suite's sizes); ``fields`` go to
    :class:`~pydeq.bench.BenchContext` (progress bars and fetching are off).
    """
    from pydeq.bench import BenchContext

    def make(suite="quick", n=8, *, quick_sizes=False, **fields):
        ctx = BenchContext(suite=suite, progress=False, fetch=False, **fields)

        def data(name, split="train", limit=None):
            g = torch.Generator().manual_seed(len(name) + len(split))
            shape = (1, 28, 28) if name == "mnist" else (3, 32, 32)
            return torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)

        monkeypatch.setattr(ctx, "data", data)
        if quick_sizes:
            monkeypatch.setattr(ctx, "scale", lambda *, quick, paper: quick)
        return ctx

    return make

