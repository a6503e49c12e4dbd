"""The continuous-DEQ claims (Pal et al. 2022) on tiny synthetic data: structure of the results, not timings."""

from __future__ import annotations

import sys

import pytest
import torch

from pydeq.bench import ClaimResult, SkipClaim
from pydeq.bench.claims import continuous
from pydeq.bench.claims._models import conv_backbone, mlp_backbone

SERIES = {"time_per_epoch", "nfe_per_epoch", "nfe_backward_per_epoch", "accuracy", "loss", "backward_time"}
METHODS = {"cdeq", "skip-cdeq", "skipreg-cdeq", "node", "broyden", "newton-krylov", "node-backsolve", "torchdiffeq",
           "torchdiffeq-adjoint", "torchdeq-broyden"}
PAPER_FIGURES = {"2–4×", "4.7–6.2×", "1.11–3.19×", "2.8–5.9×", "within about a point"}
pytestmark = pytest.mark.usefixtures("one_thread")


def _check(result: ClaimResult, methods: set[str] = METHODS) -> None:
    assert isinstance(result, ClaimResult)
    assert set(result.setup["methods"]) == methods
    assert SERIES <= set(result.series)
    for kind, by_method in result.series.items():
        assert set(by_method) == methods, kind
    assert all(len(v) == result.setup["epochs"] for v in result.series["accuracy"].values())
    assert all(0.0 <= a <= 1.0 for v in result.series["accuracy"].values() for a in v)
    assert PAPER_FIGURES <= {r.paper_figure for r in result.rows}
    assert all(r.target is not None for r in result.rows if r.held is not None)
    assert all(r.ratio is not None and r.measured_figure and r.why for r in result.rows)
    assert all(r.held is None for r in result.rows if r.peer in {"torchdiffeq", "torchdiffeq-adjoint",
                                                                 "torchdeq-broyden"})
    pairs = {("cdeq", "node"), ("skip-cdeq", "cdeq"), ("skipreg-cdeq", "cdeq"), ("broyden", "cdeq"),
             ("newton-krylov", "cdeq"), ("node", "torchdiffeq"), ("node-backsolve", "torchdiffeq-adjoint"),
             ("broyden", "torchdeq-broyden")}
    assert {(r.method, r.peer) for r in result.rows} == {p for p in pairs if set(p) <= methods}
    assert result.status in {"held", "not_held", "partial", "inconclusive"}
    assert {"tol", "nfe_per_step", "unconverged_fraction"} <= set(result.setup)
    for row in result.rows:
        row.to_json()  # serialisable


@pytest.mark.parametrize(("fn", "methods"), [(continuous.cdeq_mlp_mnist, METHODS),
                                             (continuous.cdeq_conv_mnist, METHODS - {"newton-krylov"})])
def test_mnist_claims_structure(random_images_ctx, fn, methods: set[str]) -> None:
    _check(fn(random_images_ctx(n=12)), methods)


def test_multiscale_claim_structure(random_images_ctx) -> None:
    pytest.importorskip("pydeq.nn.multiscale")
    quick = {"cdeq", "skip-cdeq", "skipreg-cdeq", "node", "broyden", "torchdiffeq", "torchdeq-broyden"}
    _check(continuous.cdeq_multiscale_cifar(random_images_ctx(n=4)), quick)


@pytest.mark.parametrize("backbone", [mlp_backbone(8), conv_backbone(4)])
def test_methods_share_initial_weights_not_parameters(backbone) -> None:
    nets = continuous.make_methods(backbone, tol=1e-2, skip_weight=1.0)
    assert set(nets) == METHODS == set(continuous.METHODS)
    ref = dict(nets["cdeq"].named_parameters())
    for name, net in nets.items():
        f_params = {k: v for k, v in net.named_parameters() if k.startswith(("encoder.", "head."))}
        for k, v in f_params.items():
            assert torch.equal(v, ref[k]), (name, k)
            assert v is not ref[k] or name == "cdeq"
    # f itself: the first parameter of each core's cell holds the same numbers in separate tensors
    cells = [next(p for k, p in net.named_parameters() if k.startswith("core.")) for net in nets.values()]
    assert all(torch.equal(c, cells[0]) for c in cells)
    assert len({id(c) for c in cells}) == len(cells)


def test_nfe_counts_every_call_of_f() -> None:
    nets = continuous.make_methods(mlp_backbone(8), tol=1e-2, skip_weight=1.0)
    x = torch.rand(5, 1, 28, 28)
    for name in ("cdeq", "node", "torchdiffeq"):
        net = nets[name]
        before = net.calls
        net(x).sum().backward()
        assert net.calls > before + 1, name
    sol = nets["cdeq"].core.last_solution
    assert nets["cdeq"].backward_vjps() == sol.backward.nfe > 0


def test_missing_peer_skips_with_advice(monkeypatch: pytest.MonkeyPatch, random_images_ctx) -> None:
    monkeypatch.setitem(sys.modules, "torchdeq", None)
    with pytest.raises(SkipClaim, match=r"pip install 'pydeq\[bench\]'"):
        continuous.cdeq_mlp_mnist(random_images_ctx(n=12))


def test_rows_between_capped_solves_give_no_verdict() -> None:
    from pydeq.bench import Row, Timing
    from pydeq.bench.claims._training import Run

    step = {"unconverged": 1.0, "nfe": 300, "nfe_backward": 21}
    run = Run(steps={"skip-cdeq": [step], "cdeq": [step], "node": [dict(step, unconverged=0.0)]}, epochs={})
    fast, slow = Timing((1.0,)), Timing((2.0,))
    row = Row.speedup("skip-cdeq", "cdeq", fast, slow, quantity="t", paper_figure="1.11–3.19×", at_least=1.11)
    capped = continuous._capped(run, row)
    assert capped.held is None and capped.ratio == row.ratio
    assert "inconclusive" in capped.why and "max_steps" in capped.why
    ok = Row.speedup("node", "node", fast, slow, quantity="t", paper_figure="x", at_least=1.0)
    assert continuous._capped(run, ok) is ok
