"""Bad input gets an error naming what was wrong, what was received, and the fix."""

import warnings

import pytest
import torch

import pydeq

f_ok = lambda z, x: 0.5 * torch.tanh(z + x)  # noqa: E731
x = torch.randn(3, 4)


def test_f_not_callable():
    with pytest.raises(TypeError, match="f must be callable as f\\(z, x\\); got int"):
        pydeq.fixed_point(3, x)


def test_f_changes_shape():
    with pytest.raises(ValueError, match=r"must return the shape of z; got \(3, 2\) for z of shape \(3, 4\)"):
        pydeq.fixed_point(lambda z, x: z[:, :2], x)


def test_f_changes_dtype():
    with pytest.raises(TypeError, match="returned dtype torch.float64 for z of dtype torch.float32"):
        pydeq.fixed_point(lambda z, x: z.double(), x)


@pytest.mark.parametrize("bad, match", [(torch.ones(3, 4, dtype=torch.int64), "must be floating point; got dtype=torch.int64"),
                                        (torch.ones(3, 4, dtype=torch.complex64), "real floating point; got complex")])
def test_bad_dtypes(bad, match):
    with pytest.raises(TypeError, match=match):
        pydeq.fixed_point(f_ok, bad)


def test_x_not_tensor_without_z0():
    with pytest.raises(ValueError, match="z0 is required when x is not a tensor"):
        pydeq.fixed_point(lambda z, x: z, [1, 2])


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_input(value):
    bad = x.clone()
    bad[1, 2] = value
    with pytest.raises(ValueError, match="x contains 1 NaN/Inf value"):
        pydeq.fixed_point(f_ok, bad)


def test_nonfinite_during_solve_raises():
    with pytest.raises(pydeq.NonFiniteError, match="NONFINITE"):
        pydeq.fixed_point(lambda z, x: z * 1e30 + 1e30, x, solver=pydeq.FixedPointIteration(max_steps=50))


def test_nonfinite_returned_with_status_when_asked():
    sol = pydeq.fixed_point(lambda z, x: torch.where(x > 0, z * 1e30 + 1e30, 0.5 * z), x,
                            solver=pydeq.FixedPointIteration(max_steps=50), on_failure="return")
    assert (sol.status == int(pydeq.Status.NONFINITE)).any()


@pytest.mark.parametrize("field, value, match", [
    ("rtol", -1.0, "rtol must be a finite number >= 0; got -1.0"),
    ("atol", float("nan"), "atol must be a finite number >= 0"),
    ("max_steps", 0, "max_steps must be an int >= 1; got 0"),
    ("max_steps", 2.5, "max_steps must be an int >= 1; got 2.5"),
])
@pytest.mark.parametrize("cls", [pydeq.FixedPointIteration, pydeq.Anderson, pydeq.Broyden, pydeq.NewtonKrylov])
def test_bad_solver_settings(cls, field, value, match):
    with pytest.raises(ValueError, match=match):
        cls(**{field: value})


def test_zero_tolerances():
    with pytest.raises(ValueError, match="rtol and atol are both 0"):
        pydeq.Anderson(rtol=0, atol=0)


@pytest.mark.parametrize("make, match", [
    (lambda: pydeq.Anderson(history=0), "history must be an int >= 1"),
    (lambda: pydeq.Anderson(damping=1.5), "damping must be in \\(0, 1\\]"),
    (lambda: pydeq.PhantomAdjoint(steps=0), "steps must be an int >= 1"),
    (lambda: pydeq.BroydenReuseAdjoint(refine=-1), "refine must be an int >= 0"),
    (lambda: pydeq.GMRES(rtol=-1), "GMRES.rtol must be"),
    (lambda: pydeq.ImplicitAdjoint(linear_solver="gmres"), "must be GMRES\\(\\), Neumann\\(\\) or Direct\\(\\); got str"),
])
def test_bad_component_settings(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_wrong_solver_and_adjoint_types():
    with pytest.raises(TypeError, match="solver must be a root finder"):
        pydeq.fixed_point(f_ok, x, solver=pydeq.GMRES())
    with pytest.raises(TypeError, match="adjoint must be one of ImplicitAdjoint, .*, DirectAdjoint; got Anderson"):
        pydeq.fixed_point(f_ok, x, adjoint=pydeq.Anderson())


def test_broyden_reuse_needs_broyden_solver():
    with pytest.raises(ValueError, match="BroydenReuseAdjoint needs the inverse-Jacobian factors.*solver=Broyden"):
        pydeq.fixed_point(f_ok, x, solver=pydeq.Anderson(), adjoint=pydeq.BroydenReuseAdjoint())


def test_policy_value():
    with pytest.raises(ValueError, match="on_failure must be one of"):
        pydeq.fixed_point(f_ok, x, on_failure="ignore")


def test_batch_mismatch():
    with pytest.raises(ValueError, match="same batch size"):
        pydeq.fixed_point(f_ok, x, z0=torch.zeros(2, 4))


def test_nonconvergence_policies():
    hard = lambda z, x: torch.tanh(3 * z + x)  # noqa: E731
    solver = pydeq.FixedPointIteration(max_steps=3)
    with pytest.raises(pydeq.ConvergenceError, match="MAX_STEPS.*raise `max_steps`"):
        pydeq.fixed_point(hard, x, solver=solver, on_failure="raise")
    with pytest.warns(pydeq.ConvergenceWarning, match="did not converge for [123]/3 samples"):
        pydeq.fixed_point(hard, x, solver=solver)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = pydeq.fixed_point(hard, x, solver=solver, on_failure="return")
    assert not sol.success and set(sol.failures()) == {pydeq.Status.MAX_STEPS}


def test_deq_layer_errors():
    with pytest.raises(TypeError, match="f must be an nn.Module or callable"):
        pydeq.DEQ(None)
    deq = pydeq.SkipDEQ(f_ok, torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"initial-state network returned \(3, 3\), but the DEQ state is \(3, 4\)"):
        deq(x)
    with pytest.raises(RuntimeError, match="no solution yet"):
        pydeq.DEQ(f_ok).skip_loss()


def test_deq_rejects_solvers_of_the_wrong_kind_at_construction():
    with pytest.raises(TypeError, match="DEQ solver must be a root finder.*got Tsit5.*wrap it in SteadyState"):
        pydeq.DEQ(f_ok, solver=pydeq.Tsit5())
    with pytest.raises(TypeError, match="DEQ eval_solver must be a root finder.*got GMRES"):
        pydeq.DEQ(f_ok, eval_solver=pydeq.GMRES())
    with pytest.raises(TypeError, match=r"DEQ adjoint must be a pydeq adjoint of an equilibrium \(.*DirectAdjoint\); "
                                        r"got BacksolveAdjoint\. .*finite-horizon ODE solve \(NeuralODE\)"):
        pydeq.DEQ(f_ok, adjoint=pydeq.BacksolveAdjoint())
    with pytest.raises(TypeError, match="DEQ adjoint must be a pydeq adjoint of an equilibrium.*got CheckpointAdjoint"):
        pydeq.DEQ(f_ok, adjoint=pydeq.CheckpointAdjoint())
