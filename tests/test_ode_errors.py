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

    with pytest.raises(TypeError, match="DirectAdjoint\\(\\), CheckpointAdjoint\\(\\) or BacksolveAdjoint\\(\\).*ImplicitAdjoint"):
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
