"""The GroupNorm and Residual spec blocks: torch modules, JSON nodes and parameter layout, with Lux's semantics
checked in numpy's Fortran (column-major) order, which is how Julia reads the same buffers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pydeq import spec
from pydeq.julia import translate


def _fortran(t: torch.Tensor, dims) -> np.ndarray:
    return np.reshape(t.detach().numpy().reshape(-1), tuple(dims), order="F")


def _lux_group_norm_whcn(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, groups: int, eps: float) -> np.ndarray:
    """Lux GroupNorm on a (W, H, C, N) array: each sample over contiguous channel groups and all positions."""
    W, H, C, N = x.shape
    g = x.reshape(W, H, C // groups, groups, N, order="F")
    mean = g.mean(axis=(0, 1, 2), keepdims=True)
    var = g.var(axis=(0, 1, 2), keepdims=True)
    y = ((g - mean) / np.sqrt(var + eps)).reshape(W, H, C, N, order="F")
    return y * scale[None, None, :, None] + bias[None, None, :, None]


def test_group_norm_matches_lux_semantics_in_julia_layout():
    torch.manual_seed(0)
    block = spec.GroupNorm(2, 6)
    gn = block.module().double()
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    x = torch.randn(3, 6, 4, 5, dtype=torch.float64)
    node, flats = translate.lux_node(block, gn, 7)
    assert [p["name"] for p in node["params"]] == ["scale", "bias"]  # Lux's order
    assert node["params"] == [{"name": "scale", "offset": 7, "dims": [6]}, {"name": "bias", "offset": 13, "dims": [6]}]
    assert node["groups"] == 2 and node["channels"] == 6 and node["epsilon"] == 1e-5
    xj = _fortran(x, tuple(reversed(x.shape)))  # NCHW -> WHCN
    yj = _lux_group_norm_whcn(xj, flats[0].detach().numpy(), flats[1].detach().numpy(), 2, 1e-5)
    np.testing.assert_allclose(np.reshape(yj, -1, order="F"), gn(x).detach().numpy().reshape(-1), rtol=1e-10,
                               atol=1e-12)
    assert block.out_shape((6, 4, 5)) == (6, 4, 5)


def test_residual_adds_the_state_and_keeps_its_blocks_parameters():
    inner = spec.Chain(spec.Injection(z=spec.Dense(3, 3, bias=False), x=spec.Identity()), spec.Tanh())
    model = spec.build(spec.DEQSpec(spec.Chain(spec.Residual(inner), spec.ReLU())))
    z, x = torch.randn(4, 3), torch.randn(4, 3)
    res = model.f.layers[0]
    expected = torch.relu(torch.tanh(res.block.layers[0].z(z) + x) + z)
    torch.testing.assert_close(model.f(z, x), expected)
    tree = json.loads(translate.julia_spec(model))
    node = tree["f"]["layers"][0]
    assert node["type"] == "Residual" and node["block"]["layers"][0]["type"] == "Injection"
    assert tree["num_parameters"] == 9 and model.state_shape((3,)) == (3,)


def test_bench_style_residual_conv_cell_builds_and_counts_parameters():
    c, g = 4, 2
    conv = spec.Conv2d(c, c, 3, padding=1, bias=False)
    gn = spec.GroupNorm(g, c)
    f = spec.Chain(spec.Residual(spec.Chain(spec.Injection(z=spec.Chain(conv, gn, spec.ReLU(), conv),
                                                           x=spec.Identity()), gn)), spec.ReLU(), gn)
    model = spec.build(spec.DEQSpec(f))
    tree = json.loads(translate.julia_spec(model))
    assert tree["num_parameters"] == sum(p.numel() for p in model.parameters()) == 2 * 9 * c * c + 3 * 2 * c
    offsets = []

    def walk(node):
        offsets.extend(p["offset"] for p in node.get("params", []))
        for key in ("layers",):
            for child in node.get(key, []):
                walk(child)
        for key in ("z", "x", "block"):
            if key in node:
                walk(node[key])

    walk(tree["f"])
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert model.state_shape((c, 6, 5)) == (c, 6, 5)


def test_errors_teach():
    with pytest.raises(ValueError, match="groups >= 1 dividing channels; got groups=4, channels=6"):
        spec.GroupNorm(4, 6)
    with pytest.raises(ValueError, match=r"GroupNorm\(2, 6\) needs per-sample shape \(6, H, ...\); got \(6,\)"):
        spec.GroupNorm(2, 6).out_shape((6,))
    with pytest.raises(TypeError, match="Residual's block must be an Injection, a Residual or a Chain"):
        spec.Residual(spec.Dense(3, 3))
    with pytest.raises(TypeError, match="f must be an Injection, a Residual or a Chain"):
        spec.DEQSpec(spec.Chain(spec.Dense(3, 3), spec.Residual(spec.Injection(z=spec.Dense(3, 3), x=spec.Identity()))))
