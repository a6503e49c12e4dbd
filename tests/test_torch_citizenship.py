"""pydeq layers behave like any other ``nn.Module``: state_dict, copies, devices, modes, compile, func, autocast.

Every test is parametrised over the devices present; CUDA cases skip with a reason where there is no GPU.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import pydeq

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")),
]


class Cell(nn.Module):
    """``f(z, x) = tanh(W z + U x + b)`` with ``||W||_2 = 0.5``: a contraction, so the DEQ is well posed."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.inj = nn.Linear(width, width)
        with torch.no_grad():
            self.lin.weight.mul_(0.5 / torch.linalg.matrix_norm(self.lin.weight, 2))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(z) + self.inj(x))


def make(kind: str, seed: int, device: str = "cpu") -> pydeq.DEQ:
    torch.manual_seed(seed)
    solver = pydeq.Anderson(rtol=1e-6, atol=1e-8, max_steps=60)
    if kind == "DEQ":
        layer = pydeq.DEQ(Cell(), solver=solver)
    elif kind == "SkipDEQ":
        layer = pydeq.SkipDEQ(Cell(), nn.Linear(8, 8), solver=solver)
    else:
        layer = pydeq.SkipRegDEQ(Cell(), solver=solver)
    return layer.to(device)


def batch(device: str = "cpu", n: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(123), dtype=dtype).to(device)


def grads(module: nn.Module) -> dict[str, torch.Tensor | None]:
    """Parameter gradients (``None`` where none arrived: a Skip DEQ's init net learns only from skip_loss)."""
    return {k: None if p.grad is None else p.grad.detach().clone() for k, p in module.named_parameters()}


def assert_same_grads(a: nn.Module, b: nn.Module, **tol: float) -> None:
    ga, gb = grads(a), grads(b)
    assert any(g is not None for g in ga.values())
    for k, g in ga.items():
        if g is None:
            assert gb[k] is None, k
        else:
            torch.testing.assert_close(gb[k], g, **tol)


# --- state_dict, copies, pickling -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["DEQ", "SkipDEQ", "SkipRegDEQ"])
def test_state_dict_round_trip_is_bitwise(kind: str, device: str) -> None:
    """Loading a saved state_dict into a differently initialised layer reproduces outputs bit for bit.

    Gradients agree to float32 rounding: CPU BLAS kernels may pick a code path by buffer alignment in the
    backward matmuls, so only the forward is promised bitwise.
    """
    a, b = make(kind, 0, device), make(kind, 1, device)
    x = batch(device)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    ya, yb = a(x), b(x)
    assert torch.equal(ya, yb)
    ya.square().sum().backward()
    yb.square().sum().backward()
    assert_same_grads(a, b, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("kind", ["DEQ", "SkipDEQ", "SkipRegDEQ"])
def test_deepcopy_and_pickle_before_forward(kind: str) -> None:
    layer = make(kind, 0)
    x = batch()
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert torch.equal(clone(x), layer(x))
        assert clone.solver == layer.solver


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_deepcopy_and_pickle_after_forward(how: str) -> None:
    """A trained layer copies and pickles: ``last_solution`` (graph tensors, the adjoint's hook) is left out."""
    layer = make("DEQ", 0)
    x = batch()
    layer(x).sum().backward()
    clone = copy.deepcopy(layer) if how == "deepcopy" else pickle.loads(pickle.dumps(layer))
    assert clone.last_solution is None
    assert torch.equal(clone(x), layer(x))


# --- devices, dtypes and modes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_to_device_and_dtype(device: str) -> None:
    """``.to(device, dtype)`` moves every parameter; the float64 answer agrees with the float32 one."""
    x = batch()
    y32 = make("SkipDEQ", 0)(x).detach()
    layer64 = make("SkipDEQ", 0).to(device, torch.float64)
    assert all(p.dtype == torch.float64 and p.device.type == device for p in layer64.parameters())
    y64 = layer64(x.to(device, torch.float64))
    assert y64.dtype == torch.float64 and y64.device.type == device
    torch.testing.assert_close(y64.cpu().float(), y32, atol=1e-5, rtol=1e-5)


def test_dtype_mismatch_between_input_and_parameters_is_a_clear_error() -> None:
    layer = make("DEQ", 0).double()
    with pytest.raises(RuntimeError, match="dtype|Double|Float"):
        layer(batch())


def test_train_and_eval_modes_select_the_solver() -> None:
    """``eval()`` uses ``eval_solver`` (here: more steps, tighter tolerance); ``train()`` goes back."""
    torch.manual_seed(0)
    train_solver = pydeq.FixedPointIteration(rtol=1e-2, atol=1e-6, max_steps=200)
    eval_solver = pydeq.FixedPointIteration(rtol=1e-6, atol=1e-7, max_steps=200)
    layer = pydeq.DEQ(Cell(), solver=train_solver, eval_solver=eval_solver)
    x = batch()
    layer(x)
    train_steps = layer.last_solution.steps.clone()
    layer.eval()
    with torch.no_grad():
        y = layer(x)
    assert not y.requires_grad
    assert bool((layer.last_solution.steps > train_steps).all())
    assert layer.last_solution.success
    layer.train()
    layer(x)
    assert torch.equal(layer.last_solution.steps, train_steps)


def test_eval_without_eval_solver_uses_the_training_solver() -> None:
    layer = make("DEQ", 0)
    x = batch()
    y_train = layer(x).detach()
    layer.eval()
    assert torch.equal(layer(x).detach(), y_train)


# --- torch.compile, torch.func ---------------------------------------------------------------------------------


def _compile_matches_eager(backend: str) -> None:
    torch._dynamo.reset()
    eager, compiled_src = make("DEQ", 0), make("DEQ", 0)
    compiled = torch.compile(compiled_src, backend=backend)
    x = batch()
    ye, yc = eager(x), compiled(x)
    torch.testing.assert_close(yc, ye, atol=1e-6, rtol=1e-6)
    ye.square().sum().backward()
    yc.square().sum().backward()
    assert_same_grads(eager, compiled_src, atol=1e-6, rtol=1e-5)
    torch._dynamo.reset()


# dynamo itself reads .grad of non-leaf tensors while tracing the adjoint's hook and warns about it
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_torch_compile_matches_eager() -> None:
    """``torch.compile`` runs (graph breaks at the solver's data-dependent stopping test) and matches eager.

    ``aot_eager`` keeps the test to seconds; the inductor backend needs a C compiler and minutes on CPU
    (see the slow test below).
    """
    _compile_matches_eager("aot_eager")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch's inductor calls its own deprecated helpers
def test_torch_compile_inductor_matches_eager() -> None:
    _compile_matches_eager("inductor")


def test_functional_call_uses_the_given_parameters() -> None:
    """``torch.func.functional_call`` with another layer's parameters equals that layer, gradients included."""
    a, b = make("SkipDEQ", 0), make("SkipDEQ", 1)
    x = batch()
    params = {k: p.detach().clone().requires_grad_() for k, p in b.named_parameters()}
    y = torch.func.functional_call(a, params, (x,))
    yb = b(x)
    torch.testing.assert_close(y, yb, atol=0, rtol=0)
    y.square().sum().backward()
    yb.square().sum().backward()
    for k, g in grads(b).items():  # both None for the init net; else equal to float32 rounding (see above)
        torch.testing.assert_close(params[k].grad, g, atol=1e-7, rtol=1e-6)


def test_vmap_raises_instead_of_running() -> None:
    """The solver's per-sample stopping test is data-dependent control flow: vmap refuses it (no wrong answer).

    pydeq layers are batched already; pass the batch directly.
    """
    layer = make("DEQ", 0)
    with pytest.raises(RuntimeError, match="data-dependent control flow"):
        torch.func.vmap(lambda xi: layer(xi[None])[0])(batch())


def test_vmap_error_names_pydeq_and_the_fix() -> None:
    layer = make("DEQ", 0)
    with pytest.raises((RuntimeError, NotImplementedError), match="batched already"):
        torch.func.vmap(lambda xi: layer(xi[None])[0])(batch())


# --- mixed precision ---------------------------------------------------------------------------------------------


def test_autocast_runs_f_in_low_precision_and_the_solver_in_the_state_dtype() -> None:
    """Under autocast ``nn.Linear`` computes in bfloat16; pydeq casts f's answer back, so z stays float32."""
    torch.manual_seed(0)
    layer = make("DEQ", 0)
    layer.solver = pydeq.Anderson(rtol=2e-2, atol=1e-3, max_steps=60)
    x = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.float32 and layer.last_solution.success
    y.sum().backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in layer.parameters())


class CastBack(nn.Module):
    """The documented recipe: f computes in autocast precision, the solver iterates in the state's dtype."""

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.f(z, x).to(z.dtype)


def test_autocast_with_cast_back_solves_in_float32() -> None:
    """f's matmuls run in bfloat16; z, the residual and the adjoint stay float32. Accuracy is bfloat16's."""
    torch.manual_seed(0)
    f = Cell()
    ref = pydeq.DEQ(f, solver=pydeq.Anderson(rtol=1e-6, max_steps=60))
    mixed = pydeq.DEQ(CastBack(f), solver=pydeq.Anderson(rtol=2e-2, atol=1e-3, max_steps=60))
    x = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mixed(x)
    assert y.dtype == torch.float32 and mixed.last_solution.success
    torch.testing.assert_close(y, ref(x), atol=5e-2, rtol=5e-2)
    y.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in f.parameters())


def test_autocast_tolerance_below_bfloat16_resolution_is_flagged() -> None:
    """Asking for 1e-7 from a bfloat16 f: a sample either truly meets the tolerance or is flagged; no crash."""
    torch.manual_seed(0)
    solver = pydeq.Anderson(rtol=1e-7, atol=1e-9, max_steps=15)
    mixed = pydeq.DEQ(CastBack(Cell()), solver=solver, on_failure="return")
    x = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = mixed(x).detach()
        fz = mixed.f(z, x).detach()
    sol = mixed.last_solution
    residual = torch.linalg.vector_norm(fz - z, dim=1)
    tol = solver.atol + solver.rtol * torch.linalg.vector_norm(fz, dim=1)
    assert bool((residual[sol.converged] <= tol[sol.converged]).all())
    assert int((~sol.converged).sum()) == sum(sol.failures().values())
