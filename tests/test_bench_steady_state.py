"""The continuous-DEQ convergence claims: their measurements and verdicts on tiny problems."""

from __future__ import annotations

import torch

from pydeq.bench.claims import mnist_depth, steady_state


def test_grid_measures_every_method_and_judges_the_targets():
    maps = steady_state.grid_maps(widths=(4, 8), snorms=(0.5,))
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
