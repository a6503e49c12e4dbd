"""Spec -> torch module and Lux translation; the torch -> Julia weight layout checked in numpy's Fortran
(column-major) order, which is how Julia reads the same buffer."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from pydeq import spec
from pydeq.julia import translate


def _fortran(flat: torch.Tensor, dims) -> np.ndarray:
    return np.reshape(flat.detach().numpy(), dims, order="F")


def test_dense_weight_is_transposed_so_julia_reads_the_same_matrix():
    w = torch.randn(5, 3)
    flat, dims = translate.dense_weight_to_julia(w)
    assert dims == [5, 3]
    np.testing.assert_array_equal(_fortran(flat, dims), w.numpy())


def test_dense_matches_lux_semantics_in_julia_layout():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 4)
    x = torch.randn(6, 3)
    wj = _fortran(*translate.dense_weight_to_julia(lin.weight))
    xj = np.reshape(x.numpy().reshape(-1), (3, 6), order="F")  # torch (batch, in) is Julia (in, batch)
    yj = wj @ xj + lin.bias.detach().numpy()[:, None]  # Lux Dense: W * x .+ b
    np.testing.assert_allclose(yj, lin(x).detach().numpy().T, rtol=1e-5, atol=1e-6)


def test_conv_kernel_dims_reverse_and_flip():
    w = torch.randn(4, 2, 3, 5)  # (out, in, kh, kw)
    flat, dims = translate.conv_weight_to_julia(w)
    assert dims == [5, 3, 2, 4]  # (kw, kh, in, out)
    expected = w.numpy()[:, :, ::-1, ::-1].transpose(3, 2, 1, 0)
    np.testing.assert_array_equal(_fortran(flat, dims), expected)


def _true_convolution_whcn(x: np.ndarray, k: np.ndarray, pad: tuple[int, int]) -> np.ndarray:
    """Lux/NNlib Conv (cross_correlation=false) on Julia-layout arrays: the kernel is flipped."""
    x = np.pad(x, ((pad[0], pad[0]), (pad[1], pad[1]), (0, 0), (0, 0)))
    kw, kh, _, cout = k.shape
    W, H, _, N = x.shape
    out = np.zeros((W - kw + 1, H - kh + 1, cout, N))
    kf = k[::-1, ::-1]
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = np.einsum("abcn,abco->on", x[i:i + kw, j:j + kh], kf)
    return out


def test_conv_matches_lux_true_convolution_with_flipped_kernel():
    torch.manual_seed(1)
    block = spec.Conv2d(2, 3, (3, 2), padding=(1, 0), bias=False)
    conv = block.module().double()
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64)
    node, flats = translate.lux_node(block, conv, 0)
    k = _fortran(flats[0], node["params"][0]["dims"])
    xj = np.reshape(x.numpy().reshape(-1), tuple(reversed(x.shape)), order="F")  # NCHW -> WHCN
    yj = _true_convolution_whcn(xj, k, tuple(node["pad"]))
    expected = conv(x).detach().numpy()
    np.testing.assert_allclose(np.reshape(yj, -1, order="F"), expected.reshape(-1), rtol=1e-10, atol=1e-12)
    assert node["kernel"] == [2, 3] and node["pad"] == [0, 1]
    assert tuple(expected.shape[1:]) == block.out_shape((2, 5, 4))


def _deq(kind=spec.DEQSpec, **kw):
    f = spec.Chain(spec.Injection(z=spec.Dense(4, 4, bias=False), x=spec.Dense(3, 4)), spec.Tanh())
    return spec.build(kind(f, **kw))


def test_json_offsets_are_contiguous_and_in_spec_order():
    init = spec.Chain(spec.Dense(3, 4), spec.ReLU())
    f = spec.Chain(spec.Injection(z=spec.Dense(4, 4, bias=False), x=spec.Dense(3, 4)), spec.Tanh())
    model = spec.build(spec.SkipDEQSpec(f, init=init))
    tree = json.loads(translate.julia_spec(model))
    inj = tree["f"]["layers"][0]
    slots = inj["z"]["params"] + inj["x"]["params"] + tree["init"]["layers"][0]["params"]
    assert [s["offset"] for s in slots] == [0, 16, 28, 32, 44]
    assert tree["num_parameters"] == sum(p.numel() for p in model.parameters()) == 48
    assert tree["kind"] == "SkipDEQ" and tree["format"] == 1
    assert tree["f"]["layers"][1] == {"type": "Activation", "function": "tanh"}
    theta = translate.julia_parameters(model)
    np.testing.assert_array_equal(_fortran(theta[16:28], [4, 3]), model.f.layers[0].x.weight.detach().numpy())


def test_parameters_vector_backpropagates_to_torch_parameters():
    model = _deq()
    theta = translate.julia_parameters(model)
    (theta * torch.arange(theta.numel(), dtype=theta.dtype)).sum().backward()
    wz = model.f.layers[0].z.weight
    expected = torch.arange(16, dtype=torch.float32).reshape(4, 4).t()  # column-major position of W[i, j]
    torch.testing.assert_close(wz.grad, expected)


def test_nested_chains_flatten_and_shapes_follow():
    c = spec.Chain(spec.Chain(spec.Dense(3, 5), spec.Tanh()), spec.Dense(5, 2))
    assert len(c.layers) == 3 and c.out_shape((3,)) == (2,)
    conv = spec.Conv2d(3, 8, 3, stride=2, padding=1)
    assert conv.out_shape((3, 9, 9)) == (8, 5, 5)
    model = _deq()
    assert model.state_shape((3,)) == (4,)


def test_solvers_map_to_julia_names():
    from pydeq import Broyden, NewtonKrylov
    from pydeq._ode import Dopri5, Tsit5
    from pydeq._ode.steady_state import SteadyState

    cases = [(Broyden(rtol=1e-7, atol=1e-9, max_steps=30), "Broyden"), (NewtonKrylov(), "NewtonKrylov"),
             (SteadyState(Tsit5()), "Tsit5"), (SteadyState(Dopri5()), "DP5")]
    for solver, name in cases:
        tree = json.loads(translate.julia_spec(_deq(solver=solver)))
        assert tree["solver"] == {"name": name}
        assert tree["reltol"] == solver.rtol and tree["abstol"] == solver.atol and tree["maxiters"] == solver.max_steps


def test_errors_teach():
    from pydeq import Anderson

    with pytest.raises(TypeError, match="Injection"):
        spec.DEQSpec(spec.Dense(3, 3))
    with pytest.raises(TypeError, match="init="):
        spec.SkipDEQSpec(spec.Injection(z=spec.Dense(2, 2), x=spec.Dense(2, 2)))
    with pytest.raises(TypeError, match="spec blocks"):
        spec.Chain(torch.nn.Tanh())
    with pytest.raises(ValueError, match="no counterpart of Anderson"):
        translate.julia_spec(_deq(solver=Anderson()))
    with pytest.raises(ValueError, match="backend must be one of"):
        spec.build(spec.DEQSpec(spec.Injection(z=spec.Dense(2, 2), x=spec.Dense(2, 2))), backend="jax")
    with pytest.raises(ValueError, match=r"per-sample shape \(3,\)"):
        spec.Dense(3, 2).out_shape((4,))


def test_backend_from_environment(monkeypatch):
    monkeypatch.setenv(spec.BACKEND_ENV, "julia")
    assert _deq().backend == "julia"
    monkeypatch.setenv(spec.BACKEND_ENV, "native")
    assert _deq().backend == "native"
    with pytest.warns(DeprecationWarning, match=r"backend='torch' is now spelled backend='native'"):
        assert spec.build(_deq().spec, backend="torch").backend == "native"


def test_state_dict_and_pickle_need_no_julia(tmp_path):
    model = _deq(kind=spec.SkipRegDEQSpec)
    model.backend = "julia"
    clone = pickle.loads(pickle.dumps(model))
    assert clone.backend == "julia" and clone.spec == model.spec
    fresh = _deq(kind=spec.SkipRegDEQSpec)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(translate.julia_parameters(fresh), translate.julia_parameters(model))
    code = (
        "import pickle, sys, torch; from pydeq import spec; "
        f"m = pickle.load(open({str(tmp_path / 'm.pkl')!r}, 'rb')); m.state_dict(); "
        "assert 'juliacall' not in sys.modules"
    )
    with open(tmp_path / "m.pkl", "wb") as fh:
        pickle.dump(model, fh)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_native_backend_solves_the_linear_deq():
    from pydeq import Broyden

    f = spec.Injection(z=spec.Dense(4, 4, bias=False), x=spec.Dense(3, 4))
    model = spec.build(spec.DEQSpec(f, solver=Broyden(rtol=1e-10, atol=1e-12, max_steps=100))).double()
    with torch.no_grad():
        model.f.z.weight.mul_(0.5)
    x = torch.randn(5, 3, dtype=torch.float64)
    W = model.f.z.weight
    expected = torch.linalg.solve(torch.eye(4, dtype=torch.float64) - W, model.f.x(x).T).T
    torch.testing.assert_close(model(x), expected, rtol=1e-7, atol=1e-8)
    skip = spec.build(spec.SkipRegDEQSpec(f, solver=Broyden(rtol=1e-10, atol=1e-12, max_steps=100))).double()
    skip.load_state_dict(model.state_dict())
    torch.testing.assert_close(skip(x), expected, rtol=1e-7, atol=1e-8)


def test_old_spec_names_are_deprecated_aliases():
    for old, new in (("DEQ", spec.DEQSpec), ("SkipDEQ", spec.SkipDEQSpec), ("SkipRegDEQ", spec.SkipRegDEQSpec)):
        with pytest.warns(DeprecationWarning, match=rf"pydeq.spec.{old} is now pydeq.spec.{new.__name__}"):
            assert getattr(spec, old) is new


def test_a_backend_without_a_registered_engine_says_how_to_get_one(monkeypatch):
    from pydeq.spec import models

    monkeypatch.setattr(models, "_ENGINES", {})
    model = _deq()
    model.backend = "julia"
    with pytest.raises(RuntimeError, match=r"backend='julia' has no engine registered: import pydeq.julia first"):
        model(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"register_engine takes one of \('julia',\); got 'native'"):
        spec.register_engine("native", lambda model, x: None)
