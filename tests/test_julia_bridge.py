"""The Python half of the Julia engine, checked here without Julia.

``FakeJulia`` stands in for the Julia module ``PyDEQ``: it receives exactly what Julia would (flat
tensors plus torch shapes), reads them the way Julia does (dimensions reversed, column-major, via
numpy's Fortran order) and answers a linear DEQ in closed form. So the spec's layout, destination
passing, the custom op and its backward are all exercised; only the Julia solve itself is replaced.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from pydeq import Broyden, ConvergenceError, ConvergenceWarning, NonFiniteError, Status, l2_norm, spec
from pydeq.julia import _runtime, exchange, translate


def _read(t: torch.Tensor, shape) -> np.ndarray:
    """What Julia's ``reshape(from_dlpack(t), reverse(shape))`` sees."""
    return np.reshape(t.numpy(), tuple(reversed(tuple(shape))), order="F")


def _norms(tree: dict, V: np.ndarray) -> np.ndarray:
    """The spec's per-sample norm of each column (sample) of ``V``, as PyDEQ's ``sample_norms!``."""
    l2 = np.linalg.norm(V, axis=0)
    return {"l2": l2, "rms": l2 / np.sqrt(V.shape[0]), "max": np.abs(V).max(axis=0)}[tree["norm"]]


def _write(dest: torch.Tensor, value: np.ndarray) -> None:
    """What Julia's ``copyto!(dest, value)`` does to the torch buffer."""
    dest.numpy()[:] = np.reshape(value, -1, order="F")


class FakeJulia:
    """Linear DEQ z = W z + U x + b in closed form, speaking PyDEQ's Python entry points."""

    def __init__(self):
        self.models: dict[int, dict] = {}
        self.calls: list[str] = []

    def py_build(self, spec_json: str) -> int:
        tree = json.loads(spec_json)
        f = tree["f"]
        inj = f["layers"][0] if f["type"] == "Chain" else f
        rest = f["layers"][1:] if f["type"] == "Chain" else []
        assert inj["type"] == "Injection" and all(b == {"type": "Activation", "function": "identity"} for b in rest)
        handle = len(self.models) + 1
        self.models[handle] = tree
        return handle

    def release(self, handle: int) -> bool:
        return self.models.pop(handle, None) is not None

    def _params(self, tree, theta):
        def arr(block, name):
            slot = next(p for p in block["params"] if p["name"] == name)
            n = int(np.prod(slot["dims"]))
            return np.reshape(theta[slot["offset"]:slot["offset"] + n], slot["dims"], order="F")

        inj = tree["f"]["layers"][0] if tree["f"]["type"] == "Chain" else tree["f"]
        b = arr(inj["x"], "bias")[:, None] if inj["x"]["bias"] else 0.0
        return arr(inj["z"], "weight"), arr(inj["x"], "weight"), b

    def py_forward(self, handle, z, residual, x, theta, zshape, xshape, device):
        assert device == -1  # CPU tensors: Julia selects no CUDA device
        self.calls.append("forward")
        W, U, b = self._params(self.models[handle], theta.numpy())
        X = _read(x, xshape)
        Z, nfe, success, retcode = self._solve(self.models[handle], W, U @ X + b)
        _write(z, Z)
        residual.numpy()[:] = _norms(self.models[handle], W @ Z + U @ X + b - Z)
        return nfe, success, retcode

    def _solve(self, tree, W, inj):
        return np.linalg.solve(np.eye(W.shape[0]) - W, inj), 1, True, "Success"

    def py_vjp(self, handle, gx, gtheta, x, theta, z, gz, zshape, xshape, device):
        assert device == -1
        self.calls.append("vjp")
        tree = self.models[handle]
        W, U, b = self._params(tree, theta.numpy())
        X, Z, G = _read(x, xshape), _read(z, zshape), _read(gz, zshape)
        w = np.linalg.solve((np.eye(W.shape[0]) - W).T, G)
        _write(gx, U.T @ w)
        inj = tree["f"]["layers"][0] if tree["f"]["type"] == "Chain" else tree["f"]
        grads = {("z", "weight"): w @ Z.T, ("x", "weight"): w @ X.T, ("x", "bias"): w.sum(axis=1)}
        out = gtheta.numpy()
        for side in ("z", "x"):
            for slot in inj[side]["params"]:
                n = int(np.prod(slot["dims"]))
                out[slot["offset"]:slot["offset"] + n] = np.reshape(grads[side, slot["name"]], -1, order="F")


class RuleJulia(FakeJulia):
    """Iterates ``z <- W z + U x + b`` from zeros and stops as Julia does: on the batch's worst sample,
    ``max_b norm(r_b) <= abstol`` or ``max_b norm(r_b) <= reltol * max_b norm(r_b + z_b)`` (NormTerminationMode
    with PyDEQ's ``BatchMax`` of the spec's norm), else after ``maxiters`` steps with retcode ``MaxIters``."""

    def _solve(self, tree, W, inj):
        Z = np.zeros_like(inj)
        for step in range(tree["maxiters"] + 1):
            fz = W @ Z + inj
            worst = _norms(tree, fz - Z).max()
            if worst <= tree["abstol"] or worst <= tree["reltol"] * _norms(tree, fz).max():
                return Z, step + 1, True, "Success"
            if step == tree["maxiters"]:
                return Z, step + 1, False, "MaxIters"
            Z = fz


@pytest.fixture
def fake(monkeypatch):
    jl = FakeJulia()
    monkeypatch.setattr(_runtime, "_ENGINE", _runtime.JuliaEngine(jl))
    from pydeq.julia import _op

    monkeypatch.setattr(_op, "_HANDLES", {})
    return jl


def _linear_model(n=4, m=3, kind=spec.DEQSpec, dtype=torch.float64):
    f = spec.Chain(spec.Injection(z=spec.Dense(n, n, bias=False), x=spec.Dense(m, n)), spec.Identity())
    model = spec.build(kind(f), backend="julia").to(dtype)
    torch.manual_seed(0)
    with torch.no_grad():
        model.f.layers[0].z.weight.mul_(0.5)
    return model


def _closed_form(model, x):
    W = model.f.layers[0].z.weight
    lin = model.f.layers[0].x
    rhs = lin(x)  # (batch, n)
    return torch.linalg.solve(torch.eye(W.shape[0], dtype=x.dtype) - W, rhs.T).T


def test_forward_matches_closed_form_and_writes_into_torch_memory(fake):
    model = _linear_model()
    x = torch.randn(5, 3, dtype=torch.float64)
    sol = model(x, return_solution=True)
    torch.testing.assert_close(sol.z, _closed_form(model, x), rtol=1e-10, atol=1e-10)
    assert sol.success and sol.extras["backend"] == "julia"
    assert sol.residual.shape == (5,) and float(sol.residual.max()) < 1e-10
    assert fake.calls == ["forward"]


def test_gradients_cross_through_the_custom_op_gradcheck(fake):
    model = _linear_model()
    names = [k for k, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)

    def run(x, *ps):
        return torch.func.functional_call(model, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(run, (x, *params), eps=1e-6, atol=1e-7)
    assert "vjp" in fake.calls


def test_gradients_match_native_closed_form(fake):
    model = _linear_model()
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(6, 4, dtype=torch.float64)
    grads_julia = torch.autograd.grad((model(x) * g).sum(), (x, *model.parameters()))
    grads_ref = torch.autograd.grad((_closed_form(model, x) * g).sum(), (x, *model.parameters()))
    for a, b in zip(grads_julia, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_float32_and_handles_are_shared_per_spec(fake):
    model = _linear_model(dtype=torch.float32)
    x = torch.randn(3, 3)
    model(x)
    model(x)
    assert len(fake.models) == 1
    torch.testing.assert_close(model(x), _closed_form(model, x), rtol=1e-4, atol=1e-5)


def test_dtype_and_device_mismatch_teaches(fake):
    model = _linear_model(dtype=torch.float32)
    with pytest.raises(TypeError, match=r"model.to\(x.dtype\)"):
        model(torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="float32 or float64"):
        model(torch.randn(2, 3).half())


def test_engine_exposes_zero_copy_helpers(fake):
    fake.py_wrap = lambda flat, shape, device: (flat, shape, device)
    fake.share = lambda a, from_dlpack: from_dlpack(a)
    t = torch.arange(6.0).reshape(2, 3)
    flat, shape, device = _runtime.engine_if_started().to_julia(t)
    assert flat.data_ptr() == t.data_ptr() and shape == (2, 3) and device == -1
    assert _runtime.engine_if_started().from_julia(t).data_ptr() == t.data_ptr()


@pytest.fixture
def rule(monkeypatch):
    jl = RuleJulia()
    monkeypatch.setattr(_runtime, "_ENGINE", _runtime.JuliaEngine(jl))
    from pydeq.julia import _op

    monkeypatch.setattr(_op, "_HANDLES", {})
    return jl


def _diagonal_model(rates, *, rtol, atol, max_steps, on_failure="warn"):
    """``z = diag(rates) z + x`` (no bias): each state entry contracts at its own rate from zeros."""
    n = len(rates)
    f = spec.Chain(spec.Injection(z=spec.Dense(n, n, bias=False), x=spec.Dense(n, n, bias=False)), spec.Identity())
    solver = Broyden(rtol=rtol, atol=atol, max_steps=max_steps, norm=l2_norm)  # Euclidean: the numbers below
    model = spec.build(spec.DEQSpec(f, solver=solver), backend="julia", on_failure=on_failure).double()
    with torch.no_grad():
        model.f.layers[0].z.weight.copy_(torch.diag(torch.tensor(rates, dtype=torch.float64)))
        model.f.layers[0].x.weight.copy_(torch.eye(n, dtype=torch.float64))
    return model


def test_status_is_julias_batch_wide_verdict_when_it_accepts(rule):
    # sample 0 sits on the slow mode (rate 0.9, z* = 10), sample 1 on the fast one (rate 0.1, z* = 1000):
    # after 3 steps the worst residual (sample 1's, 0.9) is below reltol * max ||f(z)|| (1e-3 * 1000), so
    # Julia stops; sample 0 alone (residual 0.73 against 1e-3 * 2.7) would fail a per-sample test
    model = _diagonal_model([0.9, 0.1], rtol=1e-3, atol=1e-12, max_steps=50)
    x = torch.tensor([[1.0, 0.0], [0.0, 900.0]], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = model(x, return_solution=True)
    z0, r0 = float(sol.z[0].detach().norm()), float(sol.residual[0])
    assert r0 > 1e-12 + 1e-3 * z0  # a per-sample rule (the native engine's, the old Julia status) rejects sample 0,
    assert sol.success and sol.status.tolist() == [int(Status.SUCCESS)] * 2  # but Julia's batch verdict holds
    assert sol.extras["julia_retcode"] == "Success" and sol.nfe == 4 and sol.steps.tolist() == [4, 4]


def test_status_is_julias_verdict_when_it_rejects(rule):
    # one mode at rate 0.5 and z* = 1, 8 steps: residual 1.95e-3 passes a per-sample atol + rtol ||z||
    # (1.996e-3) but neither of Julia's tests (1e-3 absolute, 1e-3 * ||f(z)|| relative), so Julia gives up
    model = _diagonal_model([0.5], rtol=1e-3, atol=1e-3, max_steps=8)
    x = torch.tensor([[0.5]], dtype=torch.float64)
    with pytest.warns(ConvergenceWarning, match=r"Julia solve \(stops batch-wide; retcode MaxIters\).*MAX_STEPS"):
        sol = model(x, return_solution=True)
    assert float(sol.residual[0]) <= 1e-3 + 1e-3 * float(sol.z[0].detach().norm())  # per-sample rule: would pass
    assert sol.status.tolist() == [int(Status.MAX_STEPS)] and not sol.success
    assert sol.extras["julia_retcode"] == "MaxIters"


def test_stalling_and_nonfinite_codes():
    from pydeq.julia._op import julia_status

    z, r = torch.ones(3, 2), torch.ones(3)
    assert julia_status(False, "Stalled", z, r).tolist() == [int(Status.STAGNATED)] * 3
    assert julia_status(False, "Failure", z, r).tolist() == [int(Status.MAX_STEPS)] * 3
    z[1, 0] = float("nan")
    assert julia_status(True, "Success", z, r).tolist() == [0, int(Status.NONFINITE), 0]


def _failing_pair(on_failure):
    """The same failing linear DEQ on both engines: a step cap of 1 that neither can meet."""
    julia = _diagonal_model([0.5], rtol=1e-9, atol=1e-12, max_steps=1, on_failure=on_failure)
    native = spec.build(julia.spec, backend="native", on_failure=on_failure).double()
    native.load_state_dict(julia.state_dict())
    return native, julia


def _outcome(model, x):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sol = model(x, return_solution=True)
        except Exception as err:  # noqa: BLE001 - the outcome is what is compared
            return type(err), None
    return None, ([type(w.message) for w in caught], sol.status.tolist())


@pytest.mark.parametrize("on_failure", ["raise", "warn", "return"])
def test_on_failure_behaves_as_on_the_native_engine(rule, on_failure):
    native, julia = _failing_pair(on_failure)
    x = torch.tensor([[0.5]], dtype=torch.float64)
    expected = {"raise": (ConvergenceError, None), "warn": (None, ([ConvergenceWarning], [int(Status.MAX_STEPS)])),
                "return": (None, ([], [int(Status.MAX_STEPS)]))}[on_failure]
    assert _outcome(native, x) == expected
    assert _outcome(julia, x) == expected


@pytest.mark.parametrize("on_failure", ["warn", "raise"])
def test_nonfinite_answers_raise_as_on_the_native_engine(rule, monkeypatch, on_failure):
    monkeypatch.setattr(RuleJulia, "_solve", lambda self, tree, W, inj: (np.full_like(inj, np.nan), 2, False,
                                                                           "Unstable"))
    model = _diagonal_model([0.5], rtol=1e-6, atol=1e-9, max_steps=5, on_failure=on_failure)
    with pytest.raises(NonFiniteError, match="NONFINITE"):
        model(torch.tensor([[0.5]], dtype=torch.float64))
    model.on_failure = "return"
    sol = model(torch.tensor([[0.5]], dtype=torch.float64), return_solution=True)
    assert sol.status.tolist() == [int(Status.NONFINITE)]


def test_on_failure_is_checked_when_the_model_is_built():
    f = spec.Injection(z=spec.Dense(2, 2), x=spec.Dense(2, 2))
    with pytest.raises(ValueError, match="on_failure must be one of"):
        spec.build(spec.DEQSpec(f), on_failure="ignore")


def test_tensors_on_different_devices_are_refused_before_julia_is_called():

    with pytest.raises(TypeError, match="must share one device; got x on cpu, theta on meta"):
        exchange.device_index(x=torch.zeros(2), theta=torch.zeros(2, device="meta"))
    assert exchange.device_index(x=torch.zeros(2), theta=torch.zeros(3)) == -1



def test_the_solvers_norm_crosses_and_residuals_come_back_in_it(rule):
    from pydeq import max_norm, rms_norm

    for norm, name in [(rms_norm, "rms"), (max_norm, "max"), (l2_norm, "l2")]:
        f = spec.Chain(spec.Injection(z=spec.Dense(4, 4, bias=False), x=spec.Dense(3, 4)), spec.Identity())
        solver = Broyden(norm=norm, rtol=1e-12, atol=1e-14, max_steps=2)  # stopped early: residuals are not 0
        model = spec.build(spec.DEQSpec(f, solver=solver), backend="julia", on_failure="return").double()
        assert json.loads(translate.julia_spec(model))["norm"] == name
        x = torch.randn(5, 3, dtype=torch.float64)
        sol = model(x, return_solution=True)
        z = sol.z.detach()
        assert float(sol.residual.min()) > 1e-3
        torch.testing.assert_close(sol.residual, norm(model.f(z, x).detach() - z))
    weighted = spec.build(spec.DEQSpec(f, solver=Broyden(norm=lambda v: v.abs().sum(dim=1))), backend="julia")
    with pytest.raises(ValueError, match="knows the norms pydeq.rms_norm, pydeq.max_norm and pydeq.l2_norm"):
        translate.julia_spec(weighted)


def test_a_continuous_deq_sends_its_methods_integration_tolerances():
    from pydeq import Dopri5, SteadyState, Tsit5

    f = spec.Chain(spec.Injection(z=spec.Dense(4, 4, bias=False), x=spec.Dense(3, 4)), spec.Tanh())
    continuous = spec.build(spec.DEQSpec(f, solver=SteadyState(Dopri5(rtol=1e-5, atol=1e-7), rtol=1e-3, atol=1e-4)))
    tree = json.loads(translate.julia_spec(continuous))
    assert tree["solver"] == {"name": "DP5"} and (tree["reltol"], tree["abstol"]) == (1e-3, 1e-4)
    assert tree["integration"] == {"reltol": 1e-5, "abstol": 1e-7}  # DynamicSS's odesolve_kwargs
    assert json.loads(translate.julia_spec(spec.build(spec.DEQSpec(f, solver=Broyden()))))["integration"] is None
    fixed = spec.build(spec.DEQSpec(f, solver=SteadyState(Tsit5(dt=0.1))))
    with pytest.raises(ValueError, match=r"integrates adaptively; SteadyState\(Tsit5\(dt=0.1\)\) has a fixed step"):
        translate.julia_spec(fixed)
