"""Benchmark claims 2 (Broyden re-use) and 3 (HomoODE) on tiny synthetic data: structure, not timing values."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pydeq.bench import BenchContext, ClaimResult
from pydeq.bench.claims import _homoode, efficient, homoode
from pydeq.bench.claims.homoode import BUDGET_TOL, matched_width, saved_tensor_bytes

pytestmark = pytest.mark.usefixtures("one_thread")

def tiny_data(name: str, split: str = "train", limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """64 MNIST-shaped examples whose class is readable from a bright block (ignores ``limit``)."""
    assert name == "mnist"
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    y = torch.randint(0, 10, (64,), generator=g)
    x = 0.1 * torch.rand(64, 1, 28, 28, generator=g)
    for i, c in enumerate(y.tolist()):
        x[i, 0, 2 * c:2 * c + 4, 4:24] = 1.0
    return x, y


@pytest.fixture
def ctx() -> BenchContext:
    c = BenchContext(suite="quick", repeats=1, progress=False, fetch=False)
    c.data = tiny_data  # no download: the claim only sees this
    return c


def check_common(result: ClaimResult) -> None:
    assert isinstance(result, ClaimResult) and result.rows
    assert result.summary and result.notes
    for row in result.rows:
        assert row.paper_figure and row.measured_figure and row.why
        assert row.ratio is not None and math.isfinite(row.ratio) and row.ratio > 0
        json.dumps(row.to_json(), allow_nan=False)
    json.dumps(result.setup)
    for kind in ("time_per_epoch", "nfe_per_epoch", "accuracy", "loss"):
        assert kind in result.series
    assert all(0.0 <= a <= 1.0 for accs in result.series["accuracy"].values() for a in accs)
    assert result.status in ("held", "not_held", "partial")


def test_efficient_claim_structure(ctx: BenchContext) -> None:
    result = efficient.efficient_broyden_reuse(ctx)
    check_common(result)
    methods = {"gmres", "reuse-0", "reuse-1", "reuse-3", "jfb", "torchdeq"}
    for kind in ("time_per_epoch", "nfe_per_epoch", "accuracy", "backward_time"):
        assert set(result.series[kind]) == methods
    epochs = result.setup["epochs"]
    assert all(len(v) == epochs for v in result.series["accuracy"].values())
    assert all(len(v) == 5 * ctx.repeats for v in result.series["backward_time"].values())
    main = result.rows[0]
    assert (main.method, main.peer) == ("reuse-0", "gmres") and main.held is not None
    assert "within 1 point" in main.why
    assert [r.method for r in result.rows[1:4]] == ["reuse-1", "reuse-3", "jfb"]
    peers = [r for r in result.rows if r.peer == "torchdeq broyden+ift"]
    assert [r.method for r in peers] == ["pydeq reuse-0", "pydeq gmres"]
    # the gradient columns are against the exact gradient: refine steps must bring re-use closer to it
    err = {r.method: r.metrics["grad_rel_error"] for r in result.rows if "grad_rel_error" in r.metrics}
    assert err["reuse-3"] < err["reuse-0"] and err["reuse-3"] < err["jfb"]
    assert all(-1.0 <= r.metrics["grad_cosine"] <= 1.0 + 1e-9 for r in result.rows if "grad_cosine" in r.metrics)


def test_homoode_claim_structure(ctx: BenchContext) -> None:
    result = homoode.homoode_claim(ctx)
    check_common(result)
    models = {"homoode", "homoode-z0=0", "deq", "node", "anode"}
    assert set(result.series["nfe_per_epoch"]) == models
    params, budget = result.setup["params"], result.setup["budget"]
    assert params["homoode"] == budget
    assert all(abs(n - budget) <= BUDGET_TOL * budget for n in params.values()), params
    accuracy_rows = [r for r in result.rows if r.quantity.startswith("test accuracy")]
    assert [r.peer for r in accuracy_rows] == ["deq", "node", "anode"]
    assert all(r.held is not None and r.metrics["peer_params"] == params[r.peer] for r in accuracy_rows)
    nfe_row = next(r for r in result.rows if r.peer == "homoode-z0=0")
    assert nfe_row.metrics["nfe"] >= 1 and nfe_row.metrics["peer_nfe"] >= 1 and nfe_row.held is not None
    memory_row = next(r for r in result.rows if r.quantity.startswith("activation memory"))
    assert memory_row.metrics["saved_bytes"] > 0 and memory_row.metrics["peer_saved_bytes"] > 0
    peer = next(r for r in result.rows if r.peer == "torchdiffeq 0.2.5 dopri5")
    # same f, tolerances and initial state: both integrators land on the same u(1)
    assert peer.metrics["max_abs_gap_u1"] < 1e-2


def test_matched_width_is_closest() -> None:
    budget = 20_000
    w = matched_width("node", budget)
    count = _homoode.parameter_count(_homoode.build("node", w))
    for other in (w - 1, w + 1):
        other_count = _homoode.parameter_count(_homoode.build("node", other))
        assert abs(count - budget) <= abs(other_count - budget)


def test_saved_tensor_bytes_counts_distinct_storages() -> None:
    a = torch.randn(100, requires_grad=True)
    # exp saves its output (400 bytes); the parameter itself is excluded
    assert saved_tensor_bytes(lambda: a.exp().sum(), [a]) == 400
    b = torch.randn(100)
    # a * b saves b for a's gradient; b twice is still one storage
    assert saved_tensor_bytes(lambda: (a * b + a * b).sum(), [a]) == 400
    assert saved_tensor_bytes(lambda: (a * b).sum(), [a, b]) == 0
