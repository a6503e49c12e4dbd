"""Weight/spectral normalisation cached per step, variational dropout, fixed-point correction loss."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import pydeq
from pydeq.nn.dropout import VariationalDropout, resample_each_call, reset_dropout
from pydeq.nn.losses import correction_loss, deq_correction_loss, solver_states
from pydeq.nn.norm import SpectralNorm, WeightNorm, apply_norm, norm_cached, remove_norm

W = 6


class Cell(nn.Module):
    def __init__(self, dropout: nn.Module | None = None):
        super().__init__()
        self.lin = nn.Linear(W, W)
        self.inj = nn.Linear(W, W)
        self.drop = dropout if dropout is not None else nn.Identity()
        with torch.no_grad():
            self.lin.weight.mul_(0.6 / torch.linalg.matrix_norm(self.lin.weight, 2))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.drop(0.9 * self.lin(z)) + self.inj(x))


def data(n: int = 5) -> torch.Tensor:
    return torch.randn(n, W, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def deq_with(cell: nn.Module, **kw) -> pydeq.DEQ:
    solver = kw.pop("solver", pydeq.Anderson(rtol=1e-10, atol=1e-12, max_steps=100))
    adjoint = kw.pop("adjoint", pydeq.ImplicitAdjoint(linear_solver=pydeq.GMRES(rtol=1e-12, atol=1e-14)))
    return pydeq.DEQ(cell, solver=solver, adjoint=adjoint, **kw).double()


def count_calls(modules: list[nn.Module]) -> list[int]:
    counter = [0]
    for m in modules:
        m.register_forward_hook(lambda *a: counter.__setitem__(0, counter[0] + 1))
    return counter


def parametrization_modules(model: nn.Module) -> list[nn.Module]:
    return [p for sub in model.modules() if parametrize.is_parametrized(sub)
            for plist in sub.parametrizations.values() for p in plist]


# --- normalisation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", [WeightNorm(), SpectralNorm()], ids=["weight", "spectral"])
def test_norm_is_computed_once_per_forward_not_per_solver_step(norm) -> None:
    torch.manual_seed(0)
    deq = deq_with(Cell())
    names = apply_norm(deq, norm)
    assert names == ["f.lin.weight", "f.inj.weight"]
    calls = count_calls(parametrization_modules(deq))
    deq(data()).sum().backward()
    assert deq.last_solution.nfe > 5  # many f calls ...
    assert calls[0] == 2  # ... one computation of each of the two normalised weights
    assert parametrize._cache_enabled == 0 and not parametrize._cache  # the cache is closed after the call


def test_weight_norm_gradient_equals_the_uncached_parametrisation() -> None:
    """Caching changes the cost, not the gradient: same grads as torch's recompute-every-call weight_norm."""
    torch.manual_seed(0)
    cached = deq_with(Cell())
    apply_norm(cached, WeightNorm())
    plain = copy.deepcopy(cached)
    remove_norm(plain)  # bake, then re-parametrise without the cache hooks
    for lin in (plain.f.lin, plain.f.inj):
        nn.utils.parametrizations.weight_norm(lin)
    plain.load_state_dict(cached.state_dict())
    x = data()
    yc, yp = cached(x), plain(x)
    torch.testing.assert_close(yc, yp, atol=1e-12, rtol=0)
    yc.square().sum().backward()
    yp.square().sum().backward()
    for (k, a), b in zip(cached.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-10, rtol=1e-8, msg=k)


def test_spectral_norm_advances_the_power_iteration_once_per_step_and_bounds_the_norm() -> None:
    torch.manual_seed(0)
    deq = deq_with(Cell())
    apply_norm(deq, SpectralNorm(n_power_iterations=1))
    u = deq.f.lin.parametrizations.weight[0]._u
    history = [u.clone()]
    for _ in range(3):
        deq(data())
        history.append(u.clone())
    assert all(not torch.equal(a, b) for a, b in zip(history, history[1:]))
    deq.eval()
    assert float(torch.linalg.matrix_norm(deq.f.lin.weight.detach(), 2)) == pytest.approx(1.0, rel=1e-2)


def test_spectral_norm_gradient_matches_the_same_map_without_power_iteration() -> None:
    """In training mode the cached weight uses the advanced (u, v); eval mode reuses them without advancing."""
    torch.manual_seed(0)
    train = deq_with(Cell())
    apply_norm(train, SpectralNorm())
    x = data()
    y = train(x)
    frozen = copy.deepcopy(train).eval()  # same (u, v) buffers, no further power step
    y.square().sum().backward()
    ye = frozen(x)
    torch.testing.assert_close(ye, y.detach(), atol=1e-12, rtol=0)
    ye.square().sum().backward()
    for (k, a), b in zip(train.named_parameters(), frozen.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-10, rtol=1e-8, msg=k)


def test_normalised_layer_state_dict_round_trip_and_copies() -> None:
    torch.manual_seed(0)
    a = deq_with(Cell())
    apply_norm(a, SpectralNorm())
    x = data()
    a(x)  # advance the power iteration so the buffers matter
    torch.manual_seed(1)
    b = deq_with(Cell())
    apply_norm(b, SpectralNorm())
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))
    c = copy.deepcopy(a)
    assert torch.equal(c(x), a(x))
    remove_norm(c)  # the copy owns its hooks: removing them leaves the original normalised
    assert parametrize.is_parametrized(a.f.lin) and not parametrize.is_parametrized(c.f.lin)
    with pytest.raises(RuntimeError, match="state_dict"):  # torch refuses to pickle parametrised modules
        pickle.dumps(a)


def test_cache_closes_after_a_failed_forward_and_under_no_grad() -> None:
    deq = deq_with(Cell(), solver=pydeq.FixedPointIteration(rtol=1e-14, atol=0, max_steps=2), on_failure="raise")
    apply_norm(deq, WeightNorm())
    with pytest.raises(pydeq.ConvergenceError):
        deq(data())
    assert parametrize._cache_enabled == 0
    deq.on_failure = "return"
    with torch.no_grad():
        assert not deq(data()).requires_grad
    with norm_cached(deq):
        deq(data())
        assert parametrize._cache_enabled == 1  # still open: the outer block owns it
    assert parametrize._cache_enabled == 0


def test_remove_norm_keeps_the_function() -> None:
    torch.manual_seed(0)
    deq = deq_with(Cell())
    apply_norm(deq, WeightNorm())
    x = data()
    before = deq(x).detach()
    remove_norm(deq)
    assert not parametrize.is_parametrized(deq.f.lin) and not deq._forward_pre_hooks
    torch.testing.assert_close(deq(x), before, atol=1e-12, rtol=0)


def test_norm_errors_teach() -> None:
    deq = deq_with(Cell())
    with pytest.raises(TypeError, match="WeightNorm\\(\\) or SpectralNorm\\(\\)"):
        apply_norm(deq, "weight_norm")
    with pytest.raises(TypeError, match="nn.Module"):
        apply_norm(lambda z, x: z, WeightNorm())
    with pytest.raises(ValueError, match="found no parameter"):
        apply_norm(deq, WeightNorm(), types=(nn.Conv2d,))
    apply_norm(deq, WeightNorm(), exclude=("f.inj",))
    assert not parametrize.is_parametrized(deq.f.inj)
    with pytest.raises(ValueError, match="already normalised"):
        apply_norm(deq, SpectralNorm())
    remove_norm(deq)
    with pytest.raises(ValueError, match="no normalisation"):
        remove_norm(deq)
    with pytest.raises(ValueError, match="n_power_iterations"):
        SpectralNorm(n_power_iterations=0)


# --- variational dropout ---------------------------------------------------------------------------------------


def test_variational_dropout_mask_is_fixed_across_solver_iterations() -> None:
    """One mask per call: the solve converges to a fixed point of one map; ordinary dropout cannot converge."""
    torch.manual_seed(0)
    drop = VariationalDropout(0.3)
    deq = resample_each_call(deq_with(Cell(drop), on_failure="return"))
    masks = []
    drop.register_forward_hook(lambda m, i, o: masks.append(m.mask))
    z = deq(data())
    assert deq.last_solution.success
    assert len(masks) == deq.last_solution.nfe and all(m is masks[0] for m in masks)
    first = masks[0]
    deq(data())
    assert masks[-1] is not first  # a new step draws a new mask
    torch.manual_seed(0)
    unstable = deq_with(Cell(nn.Dropout(0.3)), on_failure="return")
    unstable(data())
    assert not unstable.last_solution.converged.any()  # flagged, never silently accepted
    assert z.shape == (5, W)


def test_variational_dropout_gradient_is_that_of_the_masked_map() -> None:
    """Implicit gradient with a held mask == DirectAdjoint (back-propagation through the iterations) of the same
    fixed map (long solve)."""
    drop = VariationalDropout(0.5)
    torch.manual_seed(0)
    implicit = resample_each_call(deq_with(Cell(drop)))
    direct = copy.deepcopy(implicit)
    direct.adjoint = pydeq.DirectAdjoint()
    direct.solver = pydeq.FixedPointIteration(rtol=1e-13, atol=1e-14, max_steps=400)
    x = data()
    torch.manual_seed(5)
    yi = implicit(x)
    torch.manual_seed(5)  # the same mask draw
    yu = direct(x)
    torch.testing.assert_close(yu, yi, atol=1e-9, rtol=0)
    yi.square().sum().backward()
    yu.square().sum().backward()
    for (k, a), b in zip(implicit.named_parameters(), direct.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-8, rtol=1e-6, msg=k)


def test_variational_dropout_modes_shapes_and_errors() -> None:
    drop = VariationalDropout(0.5, shared_dims=(2, 3))
    z = torch.ones(64, 3, 4, 4)
    out = drop(z)
    assert set(out.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(out, out[:, :, :1, :1].expand_as(out))  # whole channels dropped
    assert 0 < float((out == 0).float().mean()) < 1
    with pytest.raises(ValueError, match="not reset"):
        drop(torch.ones(8, 3, 4, 4))
    reset_dropout(nn.Sequential(drop))
    assert drop(torch.ones(8, 3, 4, 4)).shape == (8, 3, 4, 4)
    drop.eval()
    assert torch.equal(drop(z), z)
    assert pickle.loads(pickle.dumps(drop)).mask is None
    with pytest.raises(ValueError, match="p must be in \\[0, 1\\)"):
        VariationalDropout(1.0)
    with pytest.raises(ValueError, match="shared_dims"):
        VariationalDropout(0.1, shared_dims=(0,))
    with pytest.raises(TypeError, match="nn.Module"):
        resample_each_call(lambda z: z)


# --- fixed-point correction loss -------------------------------------------------------------------------------


def test_solver_states_are_the_damped_iterates() -> None:
    f = Cell().double()
    x, z0 = data(), torch.zeros(5, W, dtype=torch.float64)
    states = solver_states(f, x, z0, count=3, every=2, damping=0.5)
    z, expect = z0, []
    with torch.no_grad():
        for k in range(6):
            z = z + 0.5 * (f(z, x) - z)
            if k % 2 == 1:
                expect.append(z)
    assert len(states) == 3 and not any(s.requires_grad for s in states)
    for s, e in zip(states, expect, strict=True):
        torch.testing.assert_close(s, e, atol=0, rtol=0)


def test_correction_loss_weights_and_gradients() -> None:
    """Closed form on a linear loss: sum_i gamma^(n-1-i) L(f(z_i)) / sum_i gamma^(n-1-i), grads to f and x only."""
    f = Cell().double()
    x = data().requires_grad_()
    states = [torch.randn(5, W, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    loss = correction_loss(f, x, states, lambda z: z.sum(), gamma=0.5)
    with torch.no_grad():
        expect = sum(w * f(s, x).sum() for w, s in zip([0.25, 0.5, 1.0], states, strict=True)) / 1.75
    torch.testing.assert_close(loss, expect)
    loss.backward()
    assert x.grad is not None and f.lin.weight.grad is not None
    assert all(s.grad is None for s in states)  # sampled states are detached: gradients start at the phantom step


def test_correction_loss_at_the_fixed_point_is_the_task_loss() -> None:
    torch.manual_seed(0)
    deq = deq_with(Cell())
    x = data()
    z = deq(x)
    target = torch.zeros_like(z)

    def task(v: torch.Tensor) -> torch.Tensor:
        return (v - target).square().mean()

    loss = correction_loss(deq.f, x, [z, z], task, steps=3, damping=0.5)
    torch.testing.assert_close(loss, task(z).detach(), atol=1e-9, rtol=0)
    aux = deq_correction_loss(deq, task, count=2, every=1)
    states = solver_states(deq.f, x, torch.zeros_like(z), count=2, every=1)  # from the layer's zero start
    assert aux.requires_grad
    torch.testing.assert_close(aux, correction_loss(deq.f, x, states, task))


def test_correction_loss_errors_teach() -> None:
    f = Cell().double()
    with pytest.raises(ValueError, match="at least one state"):
        correction_loss(f, data(), [], lambda z: z.sum())
    with pytest.raises(ValueError, match="gamma"):
        correction_loss(f, data(), [data()], lambda z: z.sum(), gamma=0.0)
    with pytest.raises(RuntimeError, match="call the layer"):
        deq_correction_loss(deq_with(Cell()), lambda z: z.sum())
