"""Pal et al.'s Tables 1 and 2 (``cdeq-table1``, ``cdeq-table2``): models, rows, report and plots on tiny data."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pydeq.bench import ClaimResult
from pydeq.bench.claim import Row
from pydeq.bench.claims import _mdeq_tiny, table1, table2
from pydeq.bench.claims._mdeq_tiny import count_parameters, tiny_backbone
from pydeq.bench.claims._paper import band_row, ratio_band
from pydeq.bench.claims._table1 import CONFIGS, dense_model
from pydeq.bench.plots import plot_claim, plot_overview
from pydeq.bench.report import render_markdown
from pydeq.bench.timing import Timing
from pydeq.nn._mdeq_blocks import Fusion, ResidualBlock, Stem

pytestmark = pytest.mark.usefixtures("one_thread")



def test_tiny_mdeq_has_the_papers_parameter_counts() -> None:
    backbone = tiny_backbone()
    assert count_parameters(backbone, skip=False) == 163_546 == table2.PAPER_TABLE2["vanilla-c"][0]
    assert count_parameters(backbone, skip=True) == 200_122 == table2.PAPER_TABLE2["skip-c"][0]


def test_tiny_mdeq_maps_packed_state_to_itself_and_logits() -> None:
    b = tiny_backbone(channels=8)
    x = b.encoder(torch.randn(2, 3, 32, 32))
    z = torch.zeros(2, *b.state_shape)
    assert b.f(z, x).shape == z.shape == b.init(x).shape
    assert b.head(b.f(z, x)).shape == (2, 10)


def test_reference_dense_model_counts() -> None:
    counts = {c: sum(p.numel() for p in dense_model(c, 0, reference=True).parameters()) for c in CONFIGS}
    assert counts["vanilla"] == counts["skipreg"] == counts["vanilla-jac"] == 784 * 128 + 128 + 2 * 128 ** 2 + 1290
    assert counts["skip"] - counts["vanilla"] == 128 * 128 + 128  # the Skip predictor: 151,050 in all
    with pytest.raises(ValueError, match="unknown Table 1 configuration"):
        dense_model("skip-reg", 0)


def test_block_options_are_checked() -> None:
    with pytest.raises(ValueError, match="expansion must be an int >= 1"):
        ResidualBlock(8, 4, expansion=0)
    with pytest.raises(ValueError, match="up_kernel must be 1 or 3"):
        Fusion([8, 8], 4, up_kernel=2)
    with pytest.raises(ValueError, match="convs must be an int >= 1"):
        Stem(3, 8, 4, convs=0)
    block = ResidualBlock(8, 4, expansion=5)
    assert block.conv1.out_channels == 40 and block.conv2.in_channels == 40


def test_ratio_band_propagates_the_papers_deviations() -> None:
    ratio, low, high = ratio_band((2.0, 0.2), (1.0, 0.1))
    assert ratio == 2.0 and math.isclose(high - ratio, ratio - low) and math.isclose(high, 2 * (1 + math.sqrt(0.02)))
    row = Row.speedup("a", "b", Timing((1.0,)), Timing((3.0,)), quantity="t", paper_figure="", at_least=1.0)
    held = band_row(row, paper=2.5, low=2.0, high=4.0, source="src")
    missed = band_row(row, paper=2.5, low=3.5, high=4.0, source="src")
    informative = band_row(row, paper=2.5, low=2.0, high=4.0, source="src", judged=False, caveat="quick")
    assert held.held is True and missed.held is False and informative.held is None
    assert "src" in held.why and held.metrics["paper_ratio"] == 2.5 and "quick" in informative.why


def _check_rows(result: ClaimResult) -> dict:
    assert isinstance(result, ClaimResult)
    assert result.status in {"held", "not_held", "partial", "inconclusive"}
    for row in result.rows:
        assert row.measured_figure and row.why and row.paper_figure, row
        assert row.held is None or row.target is not None, row
    json.dumps([r.to_json() for r in result.rows], allow_nan=False)
    return {(r.method, r.peer, r.quantity): r for r in result.rows}


@pytest.mark.parametrize("suite", ["quick", "paper"])
def test_table1_runs_every_row(monkeypatch: pytest.MonkeyPatch, random_images_ctx, suite: str) -> None:
    monkeypatch.setattr(table1, "QUICK_STEPS", 2)
    monkeypatch.setattr(table1, "CURVE_IMAGES", 8)
    result = table1.cdeq_table1(random_images_ctx(suite, n=64, quick_sizes=True, repeats=1))
    rows = _check_rows(result)
    for c in CONFIGS:
        acc = rows[(c, None, "test accuracy (points)")]
        assert (acc.held is None) == (suite == "quick")  # accuracy judged only at the paper's scale
        assert rows[(c, None, "test depth (mean solver steps) / paper's NFE")].held is not None
    speedups = [r for r in result.rows if "paper_ratio" in r.metrics and r.peer in ("vanilla", "vanilla-jac")
                and r.quantity.startswith("training time")]
    assert {round(r.metrics["paper_ratio"], 2) for r in speedups} == {3.04, 1.22, 4.01, 1.43}
    assert rows[("skip", None, "parameters")].held and not rows[("vanilla", None, "parameters")].held
    peers = [r for r in result.rows if r.paper_figure == "(peer comparison, no claim)"]
    assert {(r.method, r.peer) for r in peers} >= {("broyden", "vanilla"), ("newton-krylov", "vanilla")}
    assert all(r.held is None for r in peers)
    assert {"accuracy", "nfe_per_epoch", "depth_per_epoch", "time_per_epoch"} <= set(result.series)
    assert "| Skip Reg | yes |" in result.notes and "138K / 134,538" in result.notes


def test_table1_gives_the_same_numbers_in_one_process_or_two(monkeypatch: pytest.MonkeyPatch,
                                                             random_images_ctx) -> None:
    """The two lock-step groups and the peers share nothing: only the wall times may differ with ``jobs``."""
    monkeypatch.setattr(table1, "QUICK_STEPS", 3)
    runs = {}
    for jobs in (1, 2):
        ctx = random_images_ctx(n=64, quick_sizes=True, repeats=1, jobs=jobs)
        runs[jobs] = table1.cdeq_table1(ctx)
    one, two = runs[1], runs[2]
    assert two.setup["jobs"] == 2 and two.setup["groups"] == [list(g) for g in table1.GROUPS]
    untimed = ("accuracy", "nfe", "depth", "converged")
    for c in CONFIGS:
        assert {k: one.setup["final"][c][k] for k in untimed} == {k: two.setup["final"][c][k] for k in untimed}
    assert one.setup["train_converged"] == two.setup["train_converged"] and one.setup["params"] == two.setup["params"]
    for name in ("accuracy", "nfe_per_epoch", "depth_per_epoch", "loss"):
        assert one.series[name] == two.series[name] and list(one.series[name]) == list(CONFIGS)
    peers = [{(r.method, r.peer): r.why for r in res.rows if r.paper_figure == "(peer comparison, no claim)"}
             for res in (one, two)]
    assert peers[0] == peers[1] and len(peers[0]) >= 2  # forward NFE and accuracy, in the rows' text


@pytest.mark.parametrize("suite", ["quick", "paper"])
def test_table2_runs_every_row(monkeypatch: pytest.MonkeyPatch, random_images_ctx, suite: str) -> None:
    monkeypatch.setattr(table2, "tiny_backbone", lambda: _mdeq_tiny.tiny_backbone(channels=8))
    result = table2.cdeq_table2(random_images_ctx(suite, quick_sizes=True, repeats=1))
    rows = _check_rows(result)
    expected = set(table2.ROWS) | ({"torchdiffeq-adjoint", "torchdeq-broyden"} if suite == "paper" else set())
    assert set(result.setup["methods"]) == expected
    for k in table2.ROWS:
        assert rows[(k, None, "test accuracy (points)")].held is None
    ratios = {r.quantity: r for r in result.rows if "paper_ratio" in r.metrics}
    assert round(ratios["training s/batch, neural ODE / Vanilla C"].metrics["paper_ratio"], 2) == 2.14
    assert round(ratios["backward s/batch, neural ODE / Vanilla C"].metrics["paper_ratio"], 2) == 4.75
    assert "backward s/batch, Vanilla C / Skip Reg C" in ratios
    peers = {(r.method, r.peer) for r in result.rows if r.paper_figure == "(peer comparison, no claim)"}
    assert peers == ({("node", "torchdiffeq-adjoint"), ("vanilla-d", "torchdeq-broyden")} if suite == "paper"
                     else set())
    assert "| Neural ODE |" in result.notes and result.setup["node_adjoint"].startswith("InterpolatingAdjoint")


def _record(rows: list[Row]) -> dict:
    return {"name": "t", "title": "T", "paper": "", "status": "partial", "elapsed_s": 1.0, "summary": "",
            "notes": "| a | b |\n|---|---|\n| 1 | 2 |", "setup": {}, "rows": [r.to_json() for r in rows],
            "series": {"depth_per_epoch": {"a": [1.0, 2.0]}}, "plots": [], "error": None}


def test_plots_show_ratios_against_the_paper_and_accuracy_apart(tmp_path) -> None:
    speed = band_row(Row.speedup("a", "b", Timing((1.0,)), Timing((3.0,)), quantity="training", paper_figure="",
                                 at_least=1.0), paper=2.5, low=2.0, high=4.0, source="src")
    acc = Row(method="a", quantity="test accuracy (points)", ratio=80.0, metrics={"accuracy": 0.8,
              "paper_accuracy": 97.9}, paper_figure="97.9%", measured_figure="80.0%", why="short")
    record = _record([speed, acc])
    paths = plot_claim(record, tmp_path)
    assert {"plots/t_ratios.png", "plots/t_accuracy_vs_paper.png", "plots/t_depth_per_epoch.png"} <= set(paths)
    assert all((tmp_path / p).stat().st_size > 0 for p in paths)
    assert plot_overview([record], tmp_path) == "plots/overview.png"
    assert plot_overview([_record([acc])], tmp_path) is None  # accuracy is not a time ratio


def test_report_prints_the_papers_table(tmp_path) -> None:
    record = _record([])
    results = {"suite": "quick", "status": "complete", "started_at": "now", "elapsed_s": 1.0,
               "config": {"seed": 0, "device": "cpu", "backend": "native", "repeats": 1},
               "machine": {"git_commit": None, "git_dirty": False}, "claims": [record], "counts": {}}
    assert "| 1 | 2 |" in render_markdown(results)
