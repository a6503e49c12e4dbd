"""Train a DEQ classifier with DistributedDataParallel.

    torchrun --nproc_per_node=2 examples/train_ddp.py            # 2 CPU processes (gloo)
    torchrun --nproc_per_node=4 examples/train_ddp.py --steps 500 # 4 GPUs (nccl) when CUDA is present

Each process solves its own shard of every batch; samples converge after different numbers of solver steps on
different ranks, which DDP does not notice: only the adjoint's one recorded call of f is in the autograd graph,
and the implicit gradient's hook runs before DDP all-reduces the parameter gradients. The model uses spectral
normalisation computed once per step (``pydeq.nn.norm``) and the fixed-point correction loss
(``pydeq.nn.losses``). Rank 0 prints the loss, accuracy and solver statistics averaged over ranks.
Run with plain ``python`` it trains in a single process.

Teardown. Our own collectives (the statistics) go through a process group of their own, which
``destroy_process_group()`` really destroys before the interpreter exits. The default group cannot be trusted with
them: once a DistributedDataParallel module exists, torch (2.13) keeps the default group, and its gloo worker
threads, alive past ``destroy_process_group()``. A worker that drops the last reference to a tensor created in
Python must take the GIL; if the interpreter has begun finalizing by then, CPython ends the thread with
``pthread_exit``, whose unwinding meets a ``noexcept`` destructor: "terminate called without an active exception"
and SIGABRT, after training has finished. DDP's own collectives on the default group are safe: they only touch
buffers its C++ reducer allocated.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import pydeq
from pydeq.nn.losses import deq_correction_loss
from pydeq.nn.norm import SpectralNorm, apply_norm


class Cell(nn.Module):
    """``f(z, x) = tanh(0.9 W2 tanh(W1 z) + x)``; with ``||W1|| = ||W2|| = 1`` (spectral norm) a 0.9-contraction."""

    def __init__(self, width: int):
        super().__init__()
        self.w1, self.w2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(0.9 * self.w2(torch.tanh(self.w1(z))) + x)


class Classifier(nn.Module):
    def __init__(self, features: int, width: int, classes: int):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(features, width), nn.Tanh(), nn.Linear(width, width))
        self.deq = pydeq.DEQ(Cell(width), solver=pydeq.Anderson(rtol=1e-3, max_steps=30),
                             adjoint=pydeq.ImplicitAdjoint(linear_solver=pydeq.GMRES(rtol=1e-4, max_steps=30)),
                             eval_solver=pydeq.Anderson(rtol=1e-4, max_steps=60))
        apply_norm(self.deq, SpectralNorm())
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.deq(self.embed(x)))


def rings(n: int, seed: int = 0) -> TensorDataset:
    """Points in the plane labelled by ring (radius below or above 0.6), lifted to 8 noisy features."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 2 - 1
    label = (xy.norm(dim=1) > 0.6).long()
    lift = torch.randn(2, 8, generator=g)
    x = xy @ lift + 0.02 * torch.randn(n, 8, generator=g)
    return TensorDataset(x, label)


def setup() -> tuple[int, int, torch.device]:
    if "RANK" not in os.environ:  # plain `python examples/train_ddp.py`
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        return rank, world, torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return rank, world, torch.device("cpu")


def train(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> None:
    # the statistics' group, so that destroy_process_group() joins the gloo threads that touched `stats` (module
    # docstring); it and everything else of this function is gone by the time main() tears down
    stats_group = dist.new_group() if world > 1 else None
    # small batched solves are latency-bound: oversubscribed CPU threads make them many times slower
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    model = Classifier(8, 32, 2).to(device)
    ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    data = rings(4096)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, seed=0) if world > 1 else None
    loader = DataLoader(data, batch_size=args.batch, sampler=sampler, shuffle=sampler is None, drop_last=True)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
    step, epoch = 0, 0
    while step < args.steps:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for x, y in loader:
            x, y = x.to(device), y.to(device)

            def task(z: torch.Tensor, y: torch.Tensor = y) -> torch.Tensor:
                return nn.functional.cross_entropy(model.head(z), y)

            logits = ddp(x)
            loss = nn.functional.cross_entropy(logits, y)
            solution = model.deq.last_solution
            if args.correction:  # task loss at re-run early solver states, through one phantom step each
                loss = loss + deq_correction_loss(model.deq, task, weight=args.correction)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 50 == 0 or step == args.steps:
                stats = torch.tensor([loss.item(), float((logits.argmax(1) == y).float().mean()),
                                      float(solution.steps.float().mean()), float(solution.converged.float().mean())],
                                     device=device)
                if world > 1:
                    dist.all_reduce(stats, group=stats_group)
                    stats /= world
                if rank == 0:
                    print(f"step {step:4d}  loss {stats[0]:.3f}  acc {stats[1]:.3f}  "
                          f"solver steps {stats[2]:.1f}  converged {stats[3]:.0%}", flush=True)
            if step >= args.steps:
                break
        epoch += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps")
    parser.add_argument("--batch", type=int, default=64, help="per-process batch size")
    parser.add_argument("--correction", type=float, default=0.1, help="weight of the fixed-point correction loss")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per process (0: cores / processes)")
    args = parser.parse_args()
    rank, world, device = setup()
    try:
        train(args, rank, world, device)
    finally:  # also after an error: a rank that leaves without it can leave gloo threads running into exit
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
