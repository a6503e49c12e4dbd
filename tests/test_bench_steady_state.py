"""The continuous-DEQ convergence claims: their measurements and verdicts on tiny problems."""

from __future__ import annotations

import math

import pytest
import torch

import pydeq
from pydeq.bench.claims import mnist_depth, steady_state


def test_grid_measures_every_method_and_judges_the_targets():
    maps = [m for m in steady_state.grid_maps(widths=(4, 8), snorms=(0.5,)) if m.family != "expansive"]
    assert [(m.family, m.width) for m in maps] == [("random", 4), ("random", 8), ("repeated", 4), ("repeated", 8)]
    repeated = maps[3]
    torch.testing.assert_close(repeated.W[:4, :4], maps[0].W)  # the 4-entry map, twice on the diagonal
    assert float(repeated.W[:4, 4:].abs().max()) == 0.0
    records = steady_state.measure_grid(maps, tols=(1e-3,))
    assert len(records) == 4
    for r in records:
        for m in ("default", "tsit5", "vcab3", "anderson", "fixed-point"):
            assert r[m]["converged"] == 1.0 and r[m]["nfe"] > 0, (m, r)
        assert r["node-tsit5"]["converged"] < 1.0  # [0, 1] does not reach the equilibrium
    rows = steady_state.grid_rows(records)
    by = {(row.method, row.quantity): row for row in rows}
    conv = by["default", "fraction of samples converged (independent check), worst map where Anderson converges"]
    assert conv.held and conv.ratio == 1.0
    cost = [row for row in rows if row.method == "default" and row.peer == "node-tsit5"]
    assert len(cost) == 1 and cost[0].held == (cost[0].ratio <= 1.0)
    table = steady_state.markdown_table(records)
    assert table.count("\n") == 1 + len(records) and "| repeated | 8 | 0.5 |" in table


def test_expansive_maps_defeat_fixed_point_iteration_but_not_the_default():
    maps = steady_state.expansive_maps(width=8)
    assert [m.label for m in maps] == ["W = -3I", "W = 2S", "W = 3S"]
    torch.testing.assert_close(maps[1].W, -maps[1].W.T)  # skew-symmetric: imaginary Jacobian spectrum
    records = steady_state.measure_grid(maps, tols=(1e-3,))
    for r in records:
        assert r["default"]["converged"] == 1.0 and r["fixed-point"]["converged"] < 1.0, r
    row = steady_state._robustness_row(records, "default")
    assert row.held and row.ratio == 1.0 and "W = 3S tol 0.001" in row.why


def test_stability_function_and_step_bound():
    z = torch.tensor([-0.1, -0.05 + 0.02j], dtype=torch.complex128)
    euler, tsit5 = pydeq.Euler(dt=1.0).tableau, pydeq.Tsit5().tableau
    torch.testing.assert_close(steady_state.stability_function(euler, z), 1 + z)
    err = lambda w: float((steady_state.stability_function(tsit5, w) - torch.exp(w)).abs().max())  # noqa: E731
    assert 5.8 < math.log2(err(z) / err(z / 2)) < 6.5  # order 5: R(z) - exp(z) = O(z^6), not z^5 or z^7
    # f = tanh(0 z + x): the flow's Jacobian is -I, every mode decays at rate 1; Euler with h = 1 lands at once
    m = steady_state.GridMap("random", 4, 0.0, torch.zeros(4, 4), torch.randn(3, 4))
    bound = steady_state.rk_step_bound(pydeq.Euler(dt=1.0), m, 1e-4, samples=2)
    assert bound["rate_min"] == pytest.approx(1.0) and bound["rate_max"] == pytest.approx(1.0)
    assert bound["steps"] < 1.0  # h = 1 (on the grid of constant steps) contracts the mode to 0 in one step


def test_width_row_blames_the_map_only_when_its_spectrum_changes():
    base = {"default": {"nfe": 10}}
    records = [{**base, "family": "random", "snorm": 1.5, "tol": 1e-3, "width": 16, "radius": 0.9,
                "default": {"nfe": 20}},
               {**base, "family": "random", "snorm": 1.5, "tol": 1e-3, "width": 1024, "radius": 0.75}]
    row = steady_state._width_row(records, "default", "random")
    assert row.ratio == 2.0 and not row.held and "the map changes with the width" in row.why


def test_table1_pipeline_runs_one_step_of_every_model():
    from pydeq.bench import BenchContext

    g = torch.Generator().manual_seed(0)
    train = (torch.rand(64, 784, generator=g), torch.randint(0, 10, (64,), generator=g))
    test = (torch.rand(20, 784, generator=g), torch.randint(0, 10, (20,), generator=g))
    ctx = BenchContext(suite="quick", progress=False, fetch=False)
    results = {c: mnist_depth.train_and_measure(ctx, c, train, test, steps=2) for c in mnist_depth.CONFIGS}
    for config, r in results.items():
        assert 0.0 <= r["train_converged"] <= 1.0 and r["test_depth"] >= 0 and r["test_depth_max_norm"] >= 0
        assert r["params"] == (118_282 + 16_512 if config.startswith("skip-") or config == "skip" else 118_282)
    rows = mnist_depth._rows(results, steps=2)
    assert len(rows) == 2 * len(mnist_depth.CONFIGS)
    assert all(row.held == (1 / 1.5 <= row.ratio <= 1.5) for row in rows if "depth" in row.quantity)
