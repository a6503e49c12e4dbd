"""The Python half of the Julia engine, checked here without Julia.

``FakeJulia`` stands in for the Julia module ``PyDEQ``: it receives exactly what Julia would (flat
tensors plus torch shapes), reads them the way Julia does (dimensions reversed, column-major, via
numpy's Fortran order) and answers a linear DEQ in closed form. So the spec's layout, destination
passing, the custom op and its backward are all exercised; only the Julia solve itself is replaced.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pydeq import spec
from pydeq.julia import _runtime


def _read(t: torch.Tensor, shape) -> np.ndarray:
    """What Julia's ``reshape(from_dlpack(t), reverse(shape))`` sees."""
    return np.reshape(t.numpy(), tuple(reversed(tuple(shape))), order="F")


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

    def py_forward(self, handle, z, residual, x, theta, zshape, xshape):
        self.calls.append("forward")
        W, U, b = self._params(self.models[handle], theta.numpy())
        X = _read(x, xshape)
        Z = np.linalg.solve(np.eye(W.shape[0]) - W, U @ X + b)
        _write(z, Z)
        residual.numpy()[:] = np.linalg.norm(W @ Z + U @ X + b - Z, axis=0)
        return 1

    def py_vjp(self, handle, gx, gtheta, x, theta, z, gz, zshape, xshape):
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


@pytest.fixture
def fake(monkeypatch):
    jl = FakeJulia()
    monkeypatch.setattr(_runtime, "_ENGINE", _runtime.JuliaEngine(jl))
    from pydeq.julia import _op

    monkeypatch.setattr(_op, "_HANDLES", {})
    return jl


def _linear_model(n=4, m=3, kind=spec.DEQ, dtype=torch.float64):
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
    seen = {}
    fake.wrap = lambda flat, shape: seen.setdefault("arg", (flat, shape))
    t = torch.arange(6.0).reshape(2, 3)
    flat, shape = _runtime.engine_if_started().to_julia(t)
    assert flat.data_ptr() == t.data_ptr() and shape == (2, 3)

