"""Gradients with output times and the checkpointed mode: CheckpointAdjoint equals DirectAdjoint (both schedules),
the backsolve and interpolating adjoints agree at tight tolerances, gradcheck passes, the checkpoint count grows like sqrt(steps), and gradients
with respect to the output times match finite differences in every mode."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import pydeq
from pydeq import BacksolveAdjoint, CheckpointAdjoint, DirectAdjoint, InterpolatingAdjoint

D = torch.float64
TIGHT = pydeq.Tsit5(rtol=1e-10, atol=1e-12)
CHECKPOINTED = [CheckpointAdjoint(), CheckpointAdjoint(segment=3), CheckpointAdjoint(recursive=True),
                CheckpointAdjoint(recursive=True, segment=1)]
IDS = ["flat-sqrt", "flat-3", "recursive-4", "recursive-1"]


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _grads(adjoint, net, x, times, solver):
    def field(t, u):
        return net(u) + x + torch.sin(t)[:, None]  # x injected through the closure

    sol = pydeq.odeint(field, torch.zeros_like(x), times, solver=solver, adjoint=adjoint)  # finds net and x
    loss = (sol.z**2).sum() + sol.z.sin().sum()
    return torch.autograd.grad(loss, [x, *net.parameters()]), sol


@pytest.mark.parametrize("adjoint", CHECKPOINTED, ids=IDS)
@pytest.mark.parametrize("times", ["endpoint", "outputs", "per-sample-reversed"])
@pytest.mark.parametrize("solver", [pydeq.Tsit5(rtol=1e-6, atol=1e-8), pydeq.RK4(dt=0.1)], ids=["Tsit5", "RK4"])
def test_checkpointed_equals_direct(adjoint, times, solver):
    net, x = small_net(), torch.randn(4, 3, dtype=D, requires_grad=True)
    t = {"endpoint": (0.0, 2.0), "outputs": torch.linspace(0.0, 2.0, 7, dtype=D),
         "per-sample-reversed": torch.stack([torch.linspace(0.0, -2.0, 5, dtype=D) * (1 + i / 4) for i in range(4)])}
    ref, s_ref = _grads(DirectAdjoint(), net, x, t[times], solver)
    got, sol = _grads(adjoint, net, x, t[times], solver)
    torch.testing.assert_close(sol.z, s_ref.z, rtol=1e-12, atol=1e-13)  # same steps; the two stage paths round apart
    for a, b in zip(ref, got, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)  # the same gradient, up to round-off
    assert sol.backward.ran and sol.backward.nfe >= s_ref.nfe - 1


@pytest.mark.parametrize("adjoint", [BacksolveAdjoint(), InterpolatingAdjoint()], ids=["backsolve", "interpolating"])
@pytest.mark.parametrize("times", ["outputs", "per-sample-reversed"])
def test_continuous_adjoints_with_output_times_agree_with_direct(times, adjoint):
    net, x = small_net(1), torch.randn(3, 3, dtype=D, requires_grad=True)
    t = {"outputs": torch.tensor([0.0, 0.3, 0.35, 1.0, 2.0], dtype=D),
         "per-sample-reversed": torch.stack([torch.linspace(1.0, -1.0, 4, dtype=D) * (i + 1) for i in range(3)])}
    ref, _ = _grads(DirectAdjoint(), net, x, t[times], TIGHT)
    got, sol = _grads(adjoint, net, x, t[times], TIGHT)
    for a, b in zip(ref, got, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)
    assert float(sol.backward.residual.abs().max()) == 0.0


@pytest.mark.parametrize("adjoint", [CheckpointAdjoint(), CheckpointAdjoint(recursive=True, segment=2)],
                         ids=["flat", "recursive"])
def test_checkpointed_gradcheck(adjoint):
    torch.manual_seed(2)
    W = (0.5 * torch.randn(2, 2, dtype=D)).requires_grad_(True)
    u0 = torch.randn(2, 2, dtype=D, requires_grad=True)

    def run(u0, W):
        return pydeq.odeint(lambda t, u: torch.tanh(u @ W.T) + torch.sin(t)[:, None], u0,
                            torch.linspace(0.0, 1.0, 4, dtype=D), solver=pydeq.RK4(dt=0.1), adjoint=adjoint,
                            params=[W]).z

    assert torch.autograd.gradcheck(run, (u0, W), eps=1e-6, atol=1e-8, rtol=1e-7)


@pytest.mark.parametrize("steps", [50, 400])
def test_checkpoint_count_grows_like_sqrt_steps(steps):
    u0 = torch.ones(2, 1, dtype=D, requires_grad=True)
    sol = pydeq.odeint(lambda t, u: -u, u0, (0.0, 1.0), solver=pydeq.Euler(dt=1.0 / steps),
                       adjoint=CheckpointAdjoint())
    held = sol.extras["checkpoints"]
    assert math.sqrt(steps / 2) <= held <= 2 * math.sqrt(2 * steps) + 1, held
    (g,) = torch.autograd.grad(sol.z.sum(), u0)
    torch.testing.assert_close(g, torch.full_like(g, (1 - 1.0 / steps) ** steps), rtol=1e-12, atol=0)
    assert pydeq.odeint(lambda t, u: -u, u0, (0.0, 1.0), solver=pydeq.Euler(dt=1.0 / steps),
                        adjoint=CheckpointAdjoint(recursive=True)).extras["checkpoints"] == 1


@pytest.mark.parametrize("adjoint", [DirectAdjoint(), CheckpointAdjoint(), BacksolveAdjoint(), InterpolatingAdjoint()],
                         ids=["direct", "checkpoint", "backsolve", "interpolating"])
def test_output_time_gradients_match_finite_differences(adjoint):
    torch.manual_seed(4)
    A = torch.randn(3, 3, dtype=D) / 2
    u0 = torch.randn(2, 3, dtype=D)
    c = torch.randn(2, 4, 3, dtype=D)

    def loss(t):
        sol = pydeq.odeint(lambda s, u: torch.tanh(u @ A.T) + torch.cos(s)[:, None], u0, t, solver=TIGHT,
                           adjoint=adjoint)
        return (sol.z * c).sum()

    t = torch.tensor([0.2, 0.5, 1.1, 1.6], dtype=D, requires_grad=True)
    (g,) = torch.autograd.grad(loss(t), t)
    eps = 1e-6
    fd = torch.stack([(loss(t.detach() + eps * e) - loss(t.detach() - eps * e)) / (2 * eps)
                      for e in torch.eye(4, dtype=D)])
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-7)
