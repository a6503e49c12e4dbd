"""``pydeq bench --backend julia``: which methods the Julia engine runs, the row labels, and the native-vs-Julia
engine claim, all with a stand-in for the Julia solve (the native engine behind ``julia_fixed_point``)."""

from __future__ import annotations

import json

import pytest
import torch

from pydeq import fixed_point, spec
from pydeq.bench import BenchContext, ClaimResult, Row, SkipClaim, Timing
from pydeq.bench.claims import continuous
from pydeq.bench.claims._julia import route_methods, translate_cell
from pydeq.bench.claims._models import conv_backbone, mlp_backbone
from pydeq.bench.routing import JuliaCore, label_rows
from pydeq.julia import translate

DEQS = {"cdeq", "skip-cdeq", "skipreg-cdeq", "broyden", "newton-krylov"}
PEERS = {"torchdiffeq": "torchdiffeq", "torchdiffeq-adjoint": "torchdiffeq", "torchdeq-broyden": "torchdeq"}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def stand_in(monkeypatch):
    """The Julia solve replaced by the native one; records the spec JSON each call would have sent to Julia."""
    from pydeq.julia import _op

    seen: list[dict] = []

    def solve(model, x):
        seen.append(json.loads(translate.julia_spec(model)))
        sol = fixed_point(model.f, x, model.initial_state(x), solver=model.spec.solver, adjoint=model.spec.adjoint,
                          on_failure="return")
        sol.extras.update(backend="julia-stand-in", julia_retcode="Success" if sol.success else "MaxIters")
        return sol

    monkeypatch.setattr(_op, "julia_fixed_point", solve)
    return seen


def _ctx(backend="julia", **kw) -> BenchContext:
    return BenchContext(suite="quick", backend=backend, progress=False, fetch=False, **kw)


def test_dense_deq_methods_go_to_julia_and_the_others_say_why(stand_in):
    nets = continuous.make_methods(mlp_backbone(8), tol=1e-2, skip_weight=1.0)
    cell_weight = nets["cdeq"].core.f.W.weight
    ctx = _ctx()
    route_methods(ctx, nets)
    engines = {name: c.engine for name, c in ctx.engines.items()}
    assert engines == {**dict.fromkeys(DEQS, "julia"), "node": "native", "node-backsolve": "native", **PEERS}
    assert "not a DEQ" in ctx.engines["node"].reason
    assert all(isinstance(nets[n].core, JuliaCore) for n in DEQS)
    assert nets["cdeq"].core.model.f.layers[0].z.weight is cell_weight  # the same parameters, not a copy
    assert nets["cdeq"].core.model.backend == "julia" and nets["cdeq"].core.model.on_failure == "return"


def test_a_routed_method_trains_its_own_weights_and_counts_nfe(stand_in):
    nets = continuous.make_methods(mlp_backbone(8), tol=1e-2, skip_weight=1.0, only=("skip-cdeq",))
    net = route_methods(_ctx(), nets)["skip-cdeq"]
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    w = net.core.model.f.layers[0].z.weight
    before, calls = w.detach().clone(), net.calls
    loss = torch.nn.functional.cross_entropy(net(x), y) + net.aux_loss()
    loss.backward()
    opt.step()
    assert not torch.equal(w, before)  # the optimiser reached the weight the Julia engine is given
    assert net.calls - calls == net.core.last_solution.nfe > 0
    assert stand_in and stand_in[-1]["kind"] == "SkipDEQ" and stand_in[-1]["norm"] == "rms"


def test_the_residual_conv_cell_is_described_exactly():
    nets = continuous.make_methods(conv_backbone(4), tol=5e-2, skip_weight=1.0, only=("cdeq", "skipreg-cdeq"))
    cell = nets["cdeq"].core.f
    ctx = _ctx()
    route_methods(ctx, nets)  # checks f and the initial state of the translation on a probe
    assert {c.engine for c in ctx.engines.values()} == {"julia"}
    tree = json.loads(translate.julia_spec(nets["cdeq"].core.model))
    assert tree["f"]["layers"][0]["type"] == "Residual" and tree["solver"] == {"name": "DP5"}
    assert tree["num_parameters"] == sum(p.numel() for p in cell.parameters())
    assert {id(p) for p in nets["cdeq"].core.model.f.parameters()} == {id(p) for p in cell.parameters()}


def test_cells_without_a_description_are_listed_with_the_reason():
    pytest.importorskip("pydeq.nn.multiscale")
    from pydeq.bench.claims._models import multiscale_backbone

    nets = continuous.make_methods(multiscale_backbone(4), tol=5e-2, skip_weight=0.01, only=("cdeq", "broyden"))
    ctx = _ctx()
    route_methods(ctx, nets)
    assert {c.engine for c in ctx.engines.values()} == {"native"}
    assert all("multiscale" in c.reason for c in ctx.engines.values())
    assert "no description" in translate_cell(torch.nn.Linear(2, 2))


def test_native_backend_routes_nothing():
    nets = continuous.make_methods(mlp_backbone(8), tol=1e-2, skip_weight=1.0, only=("cdeq",))
    core = nets["cdeq"].core
    ctx = _ctx("native")
    assert route_methods(ctx, nets)["cdeq"].core is core and ctx.engines == {}


def _data(n: int = 12):
    def data(name: str, split: str = "train", limit: int | None = None):
        g = torch.Generator().manual_seed(len(split))
        return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)

    return data


def test_the_dense_claim_runs_its_deq_rows_on_julia_and_labels_every_row(stand_in, monkeypatch):
    ctx = _ctx()
    monkeypatch.setattr(ctx, "data", _data())
    result = label_rows("cdeq-mlp-mnist", continuous.cdeq_mlp_mnist(ctx), ctx)
    labelled = {(r.method, r.peer) for r in result.rows}
    assert ("cdeq [julia]", "node [native]") in labelled
    assert ("broyden [julia]", "torchdeq-broyden [torchdeq]") in labelled
    assert ("skip-cdeq [julia]", "cdeq [julia]") in labelled
    assert {s["kind"] for s in stand_in} == {"DEQ", "SkipDEQ", "SkipRegDEQ"}  # every DEQ method reached "Julia"
    assert "Not run by the Julia engine: node: " in result.notes and "not a DEQ" in result.notes
    assert result.setup["engines"]["cdeq"] == {"engine": "julia", "reason": ""}


def _result() -> ClaimResult:
    t = Timing((1.0, 1.1))
    return ClaimResult(rows=[Row.speedup("pydeq d=128", "torchdeq d=128", t, t, quantity="q", paper_figure="x",
                                         at_least=1.0)], notes="original notes")


def test_claims_that_route_nothing_are_labelled_native_with_their_reason():
    result = label_rows("engine", _result(), _ctx())
    row = result.rows[0]
    assert (row.method, row.peer) == ("pydeq d=128 [native]", "torchdeq d=128 [torchdeq]")
    assert result.notes.startswith("original notes\n") and "Anderson has no Julia counterpart" in result.notes


def test_the_runner_labels_rows_only_under_the_julia_backend(tmp_path, monkeypatch):
    from pydeq.bench import REGISTRY, Claim, run_suite

    def fake_claim(ctx):
        return _result()

    monkeypatch.setitem(REGISTRY, "routing-probe", Claim("routing-probe", fake_claim, "probe", "", (), ()))
    for backend, label in (("julia", "pydeq d=128 [native]"), ("native", "pydeq d=128")):
        out = run_suite("quick", out_dir=tmp_path / backend, only=["routing-probe"], backend=backend,
                        progress=False, echo=lambda s: None)
        (record,) = [c for c in out["claims"] if c["name"] == "routing-probe"]
        assert record["rows"][0]["method"] == label


def test_engine_claim_is_skipped_with_the_reason_where_julia_is_missing(monkeypatch):
    from pydeq.bench.claims import julia_engine

    monkeypatch.setattr(julia_engine, "julia_unavailable", lambda ctx: "juliacall is not installed")
    with pytest.raises(SkipClaim, match="the Julia engine is not available here: juliacall is not installed"):
        julia_engine.engine_native_vs_julia(_ctx("native"))


def test_engine_claim_reason_here_names_the_missing_piece():
    import importlib.util

    from pydeq.bench.claims import julia_engine

    if importlib.util.find_spec("juliacall") is not None:
        pytest.skip("juliacall is installed here")
    assert "juliacall is not installed" in julia_engine.julia_unavailable(_ctx("native"))


def test_engine_claim_compares_the_engines_on_one_spec(stand_in, monkeypatch):
    from pydeq.bench.claims import julia_engine

    monkeypatch.setattr(julia_engine, "julia_unavailable", lambda ctx: None)
    monkeypatch.setattr(julia_engine, "BATCH", 8)
    monkeypatch.setattr(julia_engine, "INPUT", 12)
    monkeypatch.setattr(julia_engine, "STATE", 6)
    ctx = _ctx(repeats=3)
    result = label_rows("engine-julia", julia_engine.engine_native_vs_julia(ctx), ctx)
    timing, agreement = result.rows
    assert (timing.method, timing.peer) == ("julia [julia]", "native [native]") and timing.held is None
    assert agreement.held and agreement.ratio < 1e-6  # the stand-in is the native engine: the same gradient
    for key in ("julia_forward_ms_median", "native_backward_ms_median", "julia_nfe_forward",
                "native_final_rel_residual", "julia_grad_rel_error", "grad_rel_difference"):
        assert key in agreement.metrics
    assert agreement.metrics["native_grad_rel_error"] < 1e-3
    assert len(stand_in) >= 4 and stand_in[0]["solver"] == {"name": "Broyden"}


def test_a_wrong_translation_is_caught_before_anything_runs():
    from pydeq.bench.routing import TranslatedCell, julia_core

    def wrong(f):  # sigmoid where the cell has tanh
        w = f.W.in_features
        block = spec.Chain(spec.Injection(z=spec.Dense(w, w, bias=False), x=spec.Identity()), spec.Sigmoid())
        return TranslatedCell(block, (f.W, None, None))

    core = continuous.make_methods(mlp_backbone(8), tol=1e-2, skip_weight=1.0, only=("cdeq",))["cdeq"].core
    with pytest.raises(AssertionError, match="spec translation of f differs"):
        julia_core(core, wrong)


def test_every_registered_claim_either_routes_or_says_why_not():
    from pydeq.bench import available_claims
    from pydeq.bench.routing import NOT_ON_JULIA

    routed = {"cdeq-mlp-mnist", "cdeq-conv-mnist", "cdeq-multiscale-cifar", "cdeq-table2", "engine-julia"}
    assert set(available_claims()) <= routed | set(NOT_ON_JULIA)
