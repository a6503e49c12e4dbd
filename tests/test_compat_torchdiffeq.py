"""pydeq.compat.torchdiffeq against torchdiffeq 0.2.5 itself: same shapes and agreement to the tolerance on the
classic problems, every method, forward and reversed; tuples and unbatched states; odeint_adjoint gradients against
autograd through odeint and against torchdiffeq; events; every unsupported argument is an error naming the fix."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pydeq import ConvergenceError
from pydeq.compat import torchdiffeq as pd

torchdiffeq = pytest.importorskip("torchdiffeq")
D = torch.float64
ADAPTIVE = ["dopri5", "bosh3", "adaptive_heun", "fehlberg2"]
FIXED = ["euler", "midpoint", "heun2", "heun3", "rk4"]


def _problems():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g, dtype=D) / 2 - 0.2 * torch.eye(4, dtype=D)
    y0 = torch.randn(3, 4, generator=g, dtype=D)  # one system of 12 entries, as torchdiffeq sees it
    C = 0.7

    def trig_exact(t):
        return t**2 * (C - t**2 * torch.cos(2 * t) / 2 + t * torch.sin(2 * t) / 2 + torch.cos(2 * t) / 4)

    return {
        "linear": (lambda t, y: y @ A.T, y0, lambda t: y0 @ torch.linalg.matrix_exp(t * A).T, (0.0, 2.0)),
        "decay": (lambda t, y: -1.5 * y, y0[0], lambda t: y0[0] * torch.exp(-1.5 * t), (0.0, 2.0)),
        "polynomial-trig": (lambda t, y: 2 * y / t + t**4 * torch.sin(2 * t), trig_exact(torch.tensor(1.0, dtype=D)),
                            trig_exact, (1.0, 3.0)),
    }


PROBLEMS = _problems()


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reversed"])
@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("method", ["tsit5", *ADAPTIVE, *FIXED])
def test_agrees_with_torchdiffeq(method, problem, reverse):
    func, _, exact, (t0, t1) = PROBLEMS[problem]
    t = torch.linspace(t0, t1, 11, dtype=D)
    t = t.flip(0) if reverse else t
    y0 = exact(t[0])
    tol = {"bosh3": 1e-6, "adaptive_heun": 1e-4, "fehlberg2": 1e-4}.get(method, 1e-7)  # where each is meant to be used
    kw = {"rtol": tol, "atol": tol / 100} if method in ["tsit5", *ADAPTIVE] else {}
    ours = pd.odeint(func, y0, t, method=method, **kw)
    theirs = torchdiffeq.odeint(func, y0, t, method="dopri5" if method == "tsit5" else method, **kw)
    assert ours.shape == theirs.shape == (11, *y0.shape) and ours.dtype == theirs.dtype
    ref = torch.stack([exact(tj) for tj in t])
    scale = 1 + float(ref.abs().max())
    if method in FIXED:  # the same tableau stepping output to output: the same numbers
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12 * scale)
        return
    err_ours, err_theirs = (float((y - ref).abs().max()) / scale for y in (ours, theirs))
    gap = float((ours - theirs).abs().max()) / scale
    if method in ("tsit5", "dopri5"):
        assert gap < 10 * tol and err_ours < 10 * tol, (gap, err_ours)
    else:  # low-order pairs miss the tolerance in both codes; pydeq is at least as close to the closed form
        assert err_ours <= 2 * err_theirs + tol and gap <= err_ours + err_theirs, (err_ours, err_theirs, gap)


def test_fixed_step_size_on_the_grid_agrees_and_tuples_and_scalars_work():
    func, y0, _, _ = PROBLEMS["linear"]
    t = torch.linspace(0.0, 1.0, 6, dtype=D)  # on the step_size grid, where torchdiffeq's linear interpolation is exact
    for method in FIXED:
        ours = pd.odeint(func, y0, t, method=method, options={"step_size": 0.05})
        theirs = torchdiffeq.odeint(func, y0, t, method=method, options={"step_size": 0.05})
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)

    def coupled(t, y):
        a, b = y
        return b.sum() * torch.ones_like(a) - a, -a[:3].reshape(3, 1) * torch.cos(t)

    y_tuple = (torch.ones(4, dtype=D), torch.zeros(3, 1, dtype=D))
    ours, theirs = pd.odeint(coupled, y_tuple, t), torchdiffeq.odeint(coupled, y_tuple, t)
    assert isinstance(ours, tuple) and [o.shape for o in ours] == [(6, 4), (6, 3, 1)]
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    scalar = pd.odeint(lambda t, y: -y, torch.tensor(1.0, dtype=D), t)
    assert scalar.shape == (6,)
    torch.testing.assert_close(scalar, torch.exp(-t), rtol=1e-7, atol=1e-9)
    # float32 times with a float64 state are converted, as torchdiffeq does
    torch.testing.assert_close(pd.odeint(lambda t, y: -y, torch.tensor(1.0, dtype=D), t.float()), scalar)


class Field(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 4)).double()

    def forward(self, t, y):
        return self.net(y) * torch.cos(t)


def _gradients(odeint, func, y0, t, **kw):
    ys = odeint(func, y0, t, rtol=1e-10, atol=1e-11, **kw)
    return torch.autograd.grad((ys**2).sum() + ys[-1].sin().sum(), [y0, t, *func.parameters()])


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reversed"])
def test_odeint_adjoint_gradients_match_autograd_through_odeint_and_torchdiffeq(reverse):
    func = Field()
    y0 = torch.randn(2, 4, dtype=D, requires_grad=True)
    t = torch.linspace(0.0, 1.5, 5, dtype=D)
    t = (t.flip(0) if reverse else t).requires_grad_(True)
    adjoint = _gradients(pd.odeint_adjoint, func, y0, t)
    direct = _gradients(pd.odeint, func, y0, t)
    theirs = _gradients(torchdiffeq.odeint_adjoint, func, y0, t)
    for a, b, c in zip(adjoint, direct, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-7)


def test_odeint_adjoint_arguments():
    func = Field()
    y0 = torch.randn(2, 4, dtype=D, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 3, dtype=D)
    with pytest.raises(ValueError, match="func must be an instance of nn.Module.*adjoint_params"):
        pd.odeint_adjoint(lambda t, y: -y, y0, t)
    (g,) = torch.autograd.grad(pd.odeint_adjoint(lambda t, y: -y, y0, t, adjoint_params=()).sum(), y0)
    torch.testing.assert_close(g, torch.full_like(g, 1 + math.exp(-0.5) + math.exp(-1.0)), rtol=1e-7, atol=0)
    ys = pd.odeint_adjoint(func, y0, t, method="rk4", options={"step_size": 0.1}, adjoint_options={"norm": "seminorm"})
    ys.sum().backward()
    with pytest.raises(ValueError, match="adjoint_options\\['norm'\\] is not supported"):
        pd.odeint_adjoint(func, y0, t, adjoint_options={"norm": lambda y: y.abs().max()})
    with pytest.raises(ValueError, match="adjoint_method differs from method.*pass adjoint_options"):
        pd.odeint_adjoint(func, y0, t, options={"first_step": 0.1}, adjoint_method="bosh3")


def test_events_match_torchdiffeq():
    def ball(t, y):
        return torch.stack([y[1], torch.full_like(y[1], -9.81)])

    h = torch.tensor([1.0, 0.5], dtype=D, requires_grad=True)
    out = {}
    for name, mod in (("ours", pd), ("theirs", torchdiffeq)):
        t_hit, ys = mod.odeint_event(ball, h, torch.tensor(0.0, dtype=D), event_fn=lambda t, y: y[0], rtol=1e-9,
                                     atol=1e-11)
        assert ys.shape == (2, 2)
        out[name] = (t_hit, ys, torch.autograd.grad(t_hit, h)[0])
    torch.testing.assert_close(out["ours"][0], out["theirs"][0], rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(out["ours"][1], out["theirs"][1], rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(out["ours"][2], out["theirs"][2], rtol=1e-6, atol=1e-7)
    # odeint with event_fn, backward in time: the ball launched from the ground is found at its start height
    t_hit, _ = pd.odeint(ball, torch.tensor([0.0, 3.0], dtype=D), torch.tensor([0.5, 0.0], dtype=D),
                         event_fn=lambda t, y: y[0] + 1.0, rtol=1e-10, atol=1e-12)
    assert t_hit < 0.5


@pytest.mark.parametrize("kwargs, error, message", [
    ({"method": "dopri8"}, ValueError, r"method 'dopri8' is not supported.*supported: adaptive_heun, bosh3, dopri5"),
    ({"method": "explicit_adams"}, ValueError, r"not supported by pydeq.compat.torchdiffeq"),
    ({"options": {"step_t": torch.tensor([0.5])}}, ValueError, r"option 'step_t' is not supported for adaptive method "
                                                                r"'dopri5': pydeq's steps do not stop"),
    ({"options": {"step_size": 0.1}}, ValueError, r"option 'step_size' is not supported for adaptive.*first_step"),
    ({"method": "rk4", "options": {"interp": "cubic"}}, ValueError, r"'interp' is not supported for fixed-step"),
    ({"method": "rk4", "options": {"first_step": 0.1}}, ValueError, r"Supported options: step_size, max_num_steps"),
    ({"rtol": torch.full((4,), 1e-6)}, ValueError, r"rtol must be a number; got a tensor of shape \(4,\)"),
    ({"options": {"norm": "rms"}}, ValueError, r"options\['norm'\] must be a callable"),
    ({"options": {"max_num_steps": 0}}, ValueError, r"max_num_steps'\] must be an int >= 1"),
])
def test_unsupported_arguments_are_errors_not_ignored(kwargs, error, message):
    with pytest.raises(error, match=message):
        pd.odeint(lambda t, y: -y, torch.ones(4, dtype=D), torch.linspace(0, 1, 3, dtype=D), **kwargs)


def test_bad_input_is_reported_as_in_pydeq():
    t = torch.linspace(0.0, 1.0, 3)
    with pytest.raises(ValueError, match=r"func\(t, y\) must return the shape and dtype of u, \(2, 2\) torch.float32; "
                                         r"got \(2, 1\) torch.float32"):
        pd.odeint(lambda t, y: -y[:, :1], torch.ones(2, 2), t)
    with pytest.raises(ValueError, match=r"got \(2, 2\) torch.float64"):
        pd.odeint(lambda t, y: -y.double(), torch.ones(2, 2), t)
    with pytest.raises(TypeError, match="t must be a floating point Tensor"):
        pd.odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"t must be one-dimensional"):
        pd.odeint(lambda t, y: -y, torch.ones(2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="t must be on y0's device"):
        pd.odeint(lambda t, y: -y, torch.ones(2), torch.zeros(2, device="meta"))
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        pd.odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0, 0.5]))
    with pytest.raises(TypeError, match="y0 must be a tensor or a tuple of tensors"):
        pd.odeint(lambda t, y: -y, [torch.ones(2)], t)
    with pytest.raises(ValueError, match="must return a tuple of 2 tensors"):
        pd.odeint(lambda t, y: y[0], (torch.ones(2), torch.ones(1)), t)
    with pytest.raises(ConvergenceError, match="max steps reached"):
        pd.odeint(lambda t, y: -y, torch.ones(2), t, options={"max_num_steps": 2})

    class WithCallback(nn.Module):
        def forward(self, t, y):
            return -y

        def callback_step(self, t0, y0, dt):
            pass

    with pytest.raises(ValueError, match="func.callback_step is a torchdiffeq callback"):
        pd.odeint(WithCallback(), torch.ones(2), t)


def test_more_drop_in_messages():
    t = torch.linspace(0.0, 1.0, 3)
    with pytest.raises(TypeError, match="func must be callable as func"):
        pd.odeint(3, torch.ones(2), t)
    with pytest.raises(TypeError, match="t must be a torch.Tensor of times; got list"):
        pd.odeint(lambda t, y: -y, torch.ones(2), [0.0, 1.0])
    with pytest.raises(TypeError, match="the tensors of a tuple y0 must share one dtype and device"):
        pd.odeint(lambda t, y: y, (torch.ones(2), torch.ones(2, dtype=D)), t)
    with pytest.raises(TypeError, match="atol must be a number; got str"):
        pd.odeint(lambda t, y: -y, torch.ones(2), t, atol="1e-6")
    with pytest.raises(ValueError, match="with event_fn, t must hold 2 times"):
        pd.odeint(lambda t, y: -y, torch.ones(2), t, event_fn=lambda t, y: y[0])
