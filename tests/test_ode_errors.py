"""Every user-facing error of the ODE engine says what was wrong and how to fix it."""

from __future__ import annotations

import pytest
import torch

from pydeq._ode import BS3, RK4, BacksolveAdjoint, Dopri5, Euler, PIController, Tsit5, odeint
from pydeq._ode.steady_state import SteadyState
from pydeq._root import Anderson
from pydeq.nn.neural_ode import NeuralODE

U0 = torch.zeros(2, 3)


def field(t, u):
    return -u


@pytest.mark.parametrize("t_span", [(1.0, 0.0), (0.0, 0.0), (0.0, float("inf"))])
def test_t_span_must_increase(t_span):
    with pytest.raises(ValueError, match="t_span must be increasing"):
        odeint(field, U0, t_span)


def test_t_span_must_be_a_pair():
    with pytest.raises(ValueError, match="t_span must be a pair"):
        odeint(field, U0, (0.0, 0.5, 1.0))


@pytest.mark.parametrize("cls", [Tsit5, Dopri5, BS3])
@pytest.mark.parametrize("name, value", [("rtol", 0.0), ("atol", -1e-6), ("rtol", float("nan"))])
def test_tolerances_must_be_positive(cls, name, value):
    with pytest.raises(ValueError, match=f"{cls.__name__}.{name} must be a finite number > 0"):
        cls(**{name: value})


@pytest.mark.parametrize("cls", [Euler, RK4, Tsit5])
def test_fixed_step_must_be_positive(cls):
    with pytest.raises(ValueError, match=f"{cls.__name__}.dt must be a finite number > 0"):
        cls(dt=0.0)


def test_root_finder_is_not_an_ode_solver():
    with pytest.raises(TypeError, match="got Anderson, a root finder.*SteadyState"):
        odeint(field, U0, (0, 1), solver=Anderson())
    with pytest.raises(TypeError, match="NeuralODE's solver must be an ODE method"):
        NeuralODE(lambda u, x: u, solver=Anderson())
    with pytest.raises(TypeError, match="SteadyState's method must be an ODE method"):
        SteadyState(Anderson())
    with pytest.raises(TypeError, match="must be an ODE method.*got SteadyState"):
        odeint(field, U0, (0, 1), solver=SteadyState(Tsit5()))


def test_wrong_adjoint_kind():
    from pydeq._adjoint import ImplicitAdjoint

    with pytest.raises(TypeError, match="DirectAdjoint\\(\\), CheckpointAdjoint\\(\\), BacksolveAdjoint\\(\\) or "
                                        "InterpolatingAdjoint\\(\\).*ImplicitAdjoint"):
        odeint(field, U0, (0, 1), adjoint=ImplicitAdjoint())
    with pytest.raises(TypeError, match="BacksolveAdjoint.solver must be an ODE method"):
        BacksolveAdjoint(solver=Anderson())


def test_bad_initial_state():
    with pytest.raises(ValueError, match="u0 contains 1 NaN/Inf"):
        odeint(field, torch.tensor([[0.0, float("nan")]]), (0, 1))
    with pytest.raises(ValueError, match="u0 must be batched"):
        odeint(field, torch.tensor(1.0), (0, 1))
    with pytest.raises(TypeError, match="u0 must be floating point"):
        odeint(field, torch.zeros(2, 3, dtype=torch.long), (0, 1))
    with pytest.raises(ValueError, match="max_steps must be an int >= 1"):
        odeint(field, U0, (0, 1), max_steps=0)
    with pytest.raises(ValueError, match="on_failure must be one of"):
        odeint(field, U0, (0, 1), on_failure="ignore")


def test_controller_and_steady_state_settings():
    with pytest.raises(ValueError, match="factor_max must be > 1"):
        PIController(factor_max=0.5)
    with pytest.raises(ValueError, match="safety must be in \\(0, 1\\]"):
        PIController(safety=1.5)
    with pytest.raises(TypeError, match="controller must be a PIController"):
        Tsit5(controller="pi")
    with pytest.raises(ValueError, match="rtol and atol are both 0"):
        SteadyState(Tsit5(), rtol=0.0, atol=0.0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        Tsit5(rtl=1e-3)  # typos are not swallowed


# ---- the field's output, output times and solver options ------------------------------------------------------

@pytest.mark.parametrize("times", [(0.0, 1.0), torch.linspace(0.0, 1.0, 5)], ids=["endpoint", "output-times"])
def test_field_of_the_wrong_shape_or_dtype_is_an_error_not_a_broadcast(times):
    u0 = torch.ones(2, 2)
    with pytest.raises(ValueError, match=r"fn\(t, u\) must return the shape and dtype of u, \(2, 2\) torch.float32; "
                                         r"got \(2, 1\) torch.float32"):
        odeint(lambda t, u: -u[:, :1], u0, times)
    with pytest.raises(ValueError, match=r"must return the shape and dtype of u, \(2, 2\) torch.float32; got \(2, 2\) "
                                         r"torch.float64.*out.to\(u.dtype\)"):
        odeint(lambda t, u: -u.double(), u0, times)
    with pytest.raises(ValueError, match=r"must return the shape and dtype of u.*got tuple"):
        odeint(lambda t, u: (u,), u0, times)


def test_reversed_end_point_pair_points_to_output_times():
    with pytest.raises(ValueError, match=r"t_span must be increasing.*torch.tensor\(\[1.0, 0.0\]\)"):
        odeint(field, U0, (1.0, 0.0))


@pytest.mark.parametrize("t, message", [
    (torch.tensor([0.0, 0.5, 0.4, 1.0]), r"strictly increasing or strictly decreasing; they change direction or "
                                         r"repeat at index 2: \[0.5, 0.4, 1\]"),
    (torch.tensor([0.0, 0.5, 0.5]), r"repeat at index 2"),
    (torch.tensor([[0.0, 1.0], [0.0, 0.0]]), r"\(row 1\).*index 1"),
    (torch.tensor([0.0, float("nan")]), r"output times t contain 1 NaN/Inf value"),
    (torch.tensor([0, 1]), r"output times t must be floating point; got dtype=torch.int64"),
    (torch.tensor([0.0, 1.0], dtype=torch.float64), r"must have u0's dtype torch.float32.*got torch.float64"),
    (torch.zeros(3, 2), r"\(n_times,\) or per sample \(batch, n_times\) = \(2, n\); got shape \(3, 2\)"),
    (torch.zeros(2, 0), r"output times t is empty"),
    (torch.tensor([0.0, 1.0], device="meta"), r"must be on u0's device cpu; got meta"),
], ids=["non-monotone", "repeated", "row-not-monotone", "nan", "integer", "dtype", "batch", "empty", "device"])
def test_bad_output_times(t, message):
    with pytest.raises((ValueError, TypeError), match=message):
        odeint(field, U0, t)


def test_solver_step_options_are_validated():
    with pytest.raises(ValueError, match="Tsit5.dtmin must be a finite number >= 0"):
        Tsit5(dtmin=-1.0)
    with pytest.raises(ValueError, match=r"Tsit5.dtmax must be a number > dtmin = 0.1 \(math.inf for no cap\)"):
        Tsit5(dtmin=0.1, dtmax=0.05)
    with pytest.raises(ValueError, match=r"Dopri5.dt0 must lie in \[dtmin, dtmax\] = \[0.0, 0.1\]; got 0.5"):
        Dopri5(dt0=0.5, dtmax=0.1)
    with pytest.raises(TypeError, match="Tsit5.norm must be a callable"):
        Tsit5(norm="rms")
    with pytest.raises(ValueError, match=r"Tsit5.norm must map \(batch, \*state\) to a real \(batch,\) tensor"):
        odeint(field, U0, (0.0, 1.0), solver=Tsit5(norm=lambda v: v.abs().max()))


def test_solver_without_a_tableau_is_rejected_by_odeint():
    from dataclasses import dataclass
    from typing import ClassVar

    from pydeq._ode.solvers import AbstractAdaptiveRK

    @dataclass(frozen=True, kw_only=True)
    class Multistep(AbstractAdaptiveRK):
        tableau: ClassVar[None] = None

    with pytest.raises(TypeError, match="Multistep is not a Runge–Kutta method with a tableau"):
        odeint(field, U0, (0.0, 1.0), solver=Multistep())


def test_more_argument_messages():
    from pydeq import CheckpointAdjoint, Event

    with pytest.raises(ValueError, match=r"t_span must be a pair \(t0, t1\) of numbers or a tensor of output times"):
        odeint(field, U0, 1.0)
    with pytest.raises(ValueError, match="only an event solve's end may be infinite"):
        odeint(field, U0, torch.tensor([float("nan"), 1.0]), event=Event(fn=lambda t, u: u[:, 0]))
    with pytest.raises(ValueError, match="Event.max_iters must be an int >= 1"):
        Event(fn=lambda t, u: u[:, 0], max_iters=0)
    with pytest.raises(ValueError, match="CheckpointAdjoint.segment must be an int >= 1"):
        CheckpointAdjoint(segment=0)
    with pytest.raises(TypeError, match="CheckpointAdjoint.recursive must be True or False"):
        CheckpointAdjoint(recursive=1)
