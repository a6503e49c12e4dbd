"""Events: a bouncing ball against its closed-form impact times, per sample, in every gradient mode, with the event
time's gradient against finite differences and its closed form; directions, backward time, misuse."""

from __future__ import annotations

import math

import pytest
import torch

import pydeq
from pydeq import BacksolveAdjoint, CheckpointAdjoint, DirectAdjoint, Event, InterpolatingAdjoint

D = torch.float64
G = 9.81
SOLVER = pydeq.Tsit5(rtol=1e-10, atol=1e-12)


def fall(t, u):
    """``u = (height, velocity)``: ``h' = v, v' = -g``."""
    return torch.stack([u[:, 1], torch.full_like(u[:, 1], -G)], dim=1)


def impact_time(h0, v0):
    return (v0 + math.sqrt(v0**2 + 2 * G * h0)) / G


GROUND = Event(fn=lambda t, u: u[:, 0], direction=-1)
START = [(1.0, 0.5), (2.0, -1.0), (0.3, 3.0)]


@pytest.mark.parametrize("adjoint", [DirectAdjoint(), CheckpointAdjoint(), BacksolveAdjoint(), InterpolatingAdjoint()],
                         ids=["direct", "checkpoint", "backsolve", "interpolating"])
def test_ball_hits_the_ground_at_the_closed_form_time_with_its_gradient(adjoint):
    u0 = torch.tensor(START, dtype=D, requires_grad=True)
    sol = pydeq.odeint(fall, u0, (0.0, math.inf), solver=SOLVER, event=GROUND, adjoint=adjoint)
    t_hit = sol.extras["t_event"]
    exact = torch.tensor([impact_time(h, v) for h, v in START], dtype=D)
    torch.testing.assert_close(t_hit.detach(), exact, rtol=1e-11, atol=1e-12)
    assert bool(sol.extras["event"].all()) and sol.success
    torch.testing.assert_close(sol.z[:, 0].detach(), torch.zeros(3, dtype=D), rtol=0, atol=1e-11)
    torch.testing.assert_close(sol.z[:, 1].detach(), u0[:, 1].detach() - G * exact, rtol=1e-10, atol=1e-10)
    # d t*/d h0 = 1 / sqrt(v0^2 + 2 g h0), d t*/d v0 = (1 + v0 / sqrt(...)) / g
    (g,) = torch.autograd.grad(t_hit.sum(), u0, retain_graph=True)
    root = torch.tensor([math.sqrt(v**2 + 2 * G * h) for h, v in START], dtype=D)
    closed = torch.stack([1 / root, (1 + u0[:, 1].detach() / root) / G], dim=1)
    torch.testing.assert_close(g, closed, rtol=1e-8, atol=1e-9)
    # the state at the impact moves with the impact time: d v*/d h0 = -g d t*/d h0
    (gv,) = torch.autograd.grad(sol.z[:, 1].sum(), u0)
    torch.testing.assert_close(gv, torch.stack([-G * closed[:, 0], 1 - G * closed[:, 1]], dim=1), rtol=1e-8,
                               atol=1e-9)


def test_event_time_gradient_matches_finite_differences_for_event_and_field_parameters():
    floor = torch.tensor(0.25, dtype=D, requires_grad=True)
    drag = torch.tensor(0.3, dtype=D, requires_grad=True)
    u0 = torch.tensor([[1.0, 0.5], [2.0, 0.0]], dtype=D)

    def t_hit(floor, drag):
        field = lambda t, u: torch.stack([u[:, 1], -G - drag * u[:, 1] * u[:, 1].abs()], dim=1)
        event = Event(fn=lambda t, u: u[:, 0] - floor, direction=-1)
        return pydeq.odeint(field, u0, (0.0, 10.0), solver=SOLVER, event=event).extras["t_event"].sum()

    got = torch.autograd.grad(t_hit(floor, drag), [floor, drag])
    eps = 1e-6
    # the differences run with the same code path as the gradient (stages kept for autograd): at tolerance 1e-10
    # the error estimate is near round-off, and the other path's rounding would pick another step sequence
    for i, g in enumerate(got):
        plus = [floor.detach().requires_grad_(), drag.detach().requires_grad_()]
        minus = [floor.detach().requires_grad_(), drag.detach().requires_grad_()]
        plus[i], minus[i] = plus[i] + eps, minus[i] - eps
        fd = (t_hit(*plus) - t_hit(*minus)) / (2 * eps)
        torch.testing.assert_close(g, fd.detach(), rtol=1e-6, atol=1e-8)


def test_bouncing_ball_restarts_at_each_impact():
    """Three bounces with restitution 0.8, each a fresh event solve from the rebounded state."""
    u, t, times = torch.tensor([[1.0, 0.0]], dtype=D), 0.0, []
    for _ in range(3):
        sol = pydeq.odeint(fall, u, (t, math.inf), solver=SOLVER, event=GROUND)
        t = float(sol.extras["t_event"])
        times.append(t)
        u = torch.stack([torch.zeros(1, dtype=D), -0.8 * sol.z[:, 1]], dim=1)
    first = math.sqrt(2 / G)
    expected = [first, first + 2 * 0.8 * first, first + 2 * 0.8 * first + 2 * 0.64 * first]
    assert max(abs(a - b) for a, b in zip(times, expected)) < 1e-9


def test_direction_time_limit_and_backward_time():
    u0 = torch.tensor([[1.0, 0.0]], dtype=D)
    up_only = pydeq.odeint(fall, u0, (0.0, 0.3), solver=SOLVER, event=Event(fn=lambda t, u: u[:, 0], direction=1))
    assert not bool(up_only.extras["event"].any()) and up_only.success
    assert float(up_only.extras["t_event"]) == 0.3  # no event: the time limit
    # a time event, integrated backward: t* = -0.7 exactly on the clock
    back = pydeq.odeint(fall, u0, torch.tensor([0.0, -5.0], dtype=D), solver=SOLVER,
                        event=Event(fn=lambda t, u: t + 0.7))
    torch.testing.assert_close(back.extras["t_event"], torch.tensor([-0.7], dtype=D), rtol=0, atol=1e-13)
    torch.testing.assert_close(back.z[:, 0], torch.tensor([1.0 - G * 0.49 / 2], dtype=D), rtol=1e-12, atol=0)


def test_event_misuse_is_reported():
    u0 = torch.tensor([[1.0, 0.0]], dtype=D)
    with pytest.raises(ValueError, match=r"Event.fn\(t, u\) must return one real value per sample, shape \(1,\)"):
        pydeq.odeint(fall, u0, (0.0, 1.0), event=Event(fn=lambda t, u: u))
    with pytest.raises(ValueError, match="Event.direction must be -1, 0 or \\+1"):
        Event(fn=lambda t, u: u[:, 0], direction=2)
    with pytest.raises(TypeError, match="Event.fn must be callable"):
        Event(fn=3.0)
    with pytest.raises(ValueError, match="an event solve runs from t0 until the event"):
        pydeq.odeint(fall, u0, torch.linspace(0, 1, 3, dtype=D), event=GROUND)
    with pytest.raises(TypeError, match="event must be a pydeq.Event"):
        pydeq.odeint(fall, u0, (0.0, 1.0), event=lambda t, u: u[:, 0])
    with pytest.raises(ValueError, match="t_span must be increasing and finite"):
        pydeq.odeint(fall, u0, (0.0, math.inf))  # only an event solve may run to infinity
