"""DistributedDataParallel over pydeq layers: 2 gloo processes on this machine reproduce single-process gradients.

Each rank solves its own half of the batch; the halves are built so that the ranks converge in different numbers
of solver steps (per-sample convergence), which DDP must not notice: only the one recorded f call of the adjoint
is in the graph, and the implicit adjoint's tensor hook runs before DDP's all-reduce hooks on the parameters.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import pydeq

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with the gloo backend is not available")

WIDTH, PER_RANK = 6, 4
TIGHT = dict(rtol=1e-11, atol=1e-12, max_steps=200)


class Cell(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)
        self.inj = nn.Linear(WIDTH, WIDTH)
        with torch.no_grad():
            self.lin.weight.mul_(0.7 / torch.linalg.matrix_norm(self.lin.weight, 2))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(z) + self.inj(x))


def _implicit() -> pydeq.DEQ:
    return pydeq.DEQ(Cell(), solver=pydeq.Anderson(**TIGHT),
                     adjoint=pydeq.ImplicitAdjoint(linear_solver=pydeq.GMRES(rtol=1e-12, atol=1e-14)))


def _broyden_reuse() -> pydeq.DEQ:
    return pydeq.DEQ(Cell(), solver=pydeq.Broyden(**TIGHT), adjoint=pydeq.BroydenReuseAdjoint(refine=60))


def _phantom() -> pydeq.DEQ:
    return pydeq.DEQ(Cell(), solver=pydeq.FixedPointIteration(**TIGHT), adjoint=pydeq.PhantomAdjoint(steps=4))


def _skip() -> pydeq.DEQ:
    return pydeq.SkipDEQ(Cell(), nn.Linear(WIDTH, WIDTH), solver=pydeq.Anderson(**TIGHT), skip_weight=0.1)


CONFIGS: dict[str, Callable[[], pydeq.DEQ]] = {
    "implicit-gmres": _implicit, "broyden-reuse": _broyden_reuse, "phantom": _phantom, "skip-deq": _skip,
}


def build(name: str) -> pydeq.DEQ:
    torch.manual_seed(0)
    return CONFIGS[name]().double()


def full_batch() -> torch.Tensor:
    """Rank 0 gets small inputs, rank 1 large ones (saturated tanh: a stronger contraction, fewer steps)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2 * PER_RANK, WIDTH, generator=g, dtype=torch.float64)
    scale = torch.tensor([0.01] * PER_RANK + [3.0] * PER_RANK, dtype=torch.float64)[:, None]
    return x * scale


def loss_of(layer: nn.Module, deq: pydeq.DEQ, x: torch.Tensor) -> torch.Tensor:
    z = layer(x)
    return (z - 0.5).square().mean() + deq.aux_loss()


def _worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    # Only DDP's own collectives run here, on buffers its C++ reducer allocates; so although DDP keeps the default
    # group's gloo threads alive past destroy_process_group(), none of them holds a tensor made in Python at exit
    # (see examples/train_ddp.py's docstring for what happens otherwise).
    try:
        x = full_batch()[rank * PER_RANK:(rank + 1) * PER_RANK]
        results = {}
        for name in CONFIGS:
            deq = build(name)
            ddp = nn.parallel.DistributedDataParallel(deq)
            for _step in range(2):  # the second step checks that DDP's reducer was left in a clean state
                ddp.zero_grad()
                loss_of(ddp, deq, x).backward()
            results[name] = {
                "grads": {k: p.grad.clone() for k, p in deq.named_parameters()},
                "steps": deq.last_solution.steps.clone(),
                "success": deq.last_solution.success,
            }
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ddp_gradients_equal_single_process_on_the_concatenated_batch(name: str, ddp_results: list[dict]) -> None:
    """DDP's averaged gradient == the single-process gradient of the same loss over both halves, to 1e-6."""
    deq = build(name)
    x = full_batch()
    # DDP averages per-rank means over equal halves: the same as the mean over the concatenated batch, except
    # for aux_loss, which is a per-call mean as well; average the two halves' losses to match exactly.
    loss = sum(loss_of(deq, deq, half) for half in x.split(PER_RANK)) / 2
    loss.backward()
    for rank in range(2):
        assert ddp_results[rank][name]["success"]
        for k, p in deq.named_parameters():
            torch.testing.assert_close(ddp_results[rank][name]["grads"][k], p.grad, atol=1e-6, rtol=1e-6, msg=k)


def test_ranks_converged_after_different_numbers_of_steps(ddp_results: list[dict]) -> None:
    """The premise of the test above: per-sample convergence made the ranks run different solver loops."""
    for name in ("implicit-gmres", "phantom"):
        steps0, steps1 = (ddp_results[r][name]["steps"] for r in range(2))
        assert int(steps0.max()) != int(steps1.max()), (name, steps0, steps1)
        assert len(set(torch.cat([steps0, steps1]).tolist())) > 2  # and samples within a rank differ too


@pytest.mark.slow
def test_torchrun_example_trains() -> None:
    """``torchrun --nproc_per_node=2 examples/train_ddp.py`` trains: loss printed by rank 0 falls."""
    import os
    import re
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    # --standalone: torchrun binds a free port itself (a port picked here could be taken before it binds)
    out = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2",
                          str(root / "examples" / "train_ddp.py"), "--steps", "100"],
                         capture_output=True, text=True, timeout=300, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr[-2000:]
    losses = [float(m) for m in re.findall(r"loss ([0-9.]+)", out.stdout)]
    assert len(losses) == 2 and losses[-1] < 0.3, out.stdout


def _example_worker(rank: int, world: int, port: int, out: str) -> None:
    """Run examples/train_ddp.py's main() as one of ``world`` ranks, recording the group of each collective it
    calls itself (DDP's are not counted) and whether it tore the process group down."""
    import os
    import sys
    from pathlib import Path

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import train_ddp

    groups: list[str] = []
    for name in ("all_reduce", "all_gather", "broadcast", "reduce", "barrier", "all_gather_object"):
        real = getattr(dist, name)

        def recorded(*args, _real=real, **kwargs):
            if sys._getframe(1).f_code.co_filename == train_ddp.__file__:
                group = kwargs.get("group")
                groups.append("default" if group is None or group == dist.group.WORLD else "own")
            return _real(*args, **kwargs)

        setattr(dist, name, recorded)
    sys.argv = ["train_ddp.py", "--steps", "2", "--threads", "1"]
    train_ddp.main()
    torch.save({"groups": groups, "initialized_after": dist.is_initialized()}, f"{out}/rank{rank}.pt")


@pytest.mark.slow
def test_example_keeps_its_collectives_off_the_default_group(tmp_path) -> None:
    """The invariant the example's clean exit rests on: every collective it calls itself runs on a group that
    ``destroy_process_group()`` really destroys (not the default group, which DDP keeps alive), and it tears down."""
    mp.spawn(_example_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        record = torch.load(tmp_path / f"rank{rank}.pt")
        assert record["groups"] == ["own"], record  # one statistics all_reduce, at the last of 2 steps
        assert not record["initialized_after"]
