"""The claims' one lock-step training loop, their one accuracy and their MNIST preparation.

Claims that compare training costs train several models side by side: every model takes one step on the same
batch before the next batch is drawn, so drift in the machine's speed hits all alike and their step times can be
divided. :func:`train_lockstep` is that loop; what differs between claims is in each model's :class:`Trainee`
(how it computes its loss and step statistics, its optimiser, what to measure after each epoch, anything to run
after the optimiser's step). Every step is timed with the collector paused (:func:`pydeq.bench.timing.stopwatch`
for the whole step, its forward and its backward); a model's first step is a warm-up, trained on but left out of
:meth:`Run.timing`.
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pydeq.bench.claim import BenchContext
from pydeq.bench.timing import Timing, rotated_batches, stopwatch

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "MNIST_MEAN", "MNIST_STD", "Run", "Stats", "Trainee", "accuracy", "flatten",
           "mean", "mnist", "standardise", "train_lockstep"]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR_MEAN = torch.tensor([0.49, 0.48, 0.45])[:, None, None]
CIFAR_STD = torch.tensor([0.25, 0.24, 0.26])[:, None, None]
TIMES = ("step", "forward", "backward")  # a step's wall times, summed per epoch (its other numbers are averaged)

Stats = Callable[[], dict[str, Any]]
"""Called after a step's optimiser update: that step's numbers (loss, NFE, …; ``None`` for one not measured)."""


@dataclass(frozen=True)
class Trainee:
    """One model of a lock-step run, as :func:`train_lockstep` drives it.

    Args:
        optimizer: updates the model's parameters (``zero_grad`` before the step, ``step()`` after ``backward``).
        loss: ``loss(images, labels) -> (loss, stats)``: the scalar to back-propagate and a :data:`Stats`.
        evaluate: ``evaluate() -> numbers`` after each epoch (test accuracy, …); ``None``: nothing.
        after_step: ``after_step(step)``, timed with the step, after the optimiser's (``step`` counts from 0).
    """

    optimizer: torch.optim.Optimizer
    loss: Callable[[Tensor, Tensor], tuple[Tensor, Stats]]
    evaluate: Callable[[], dict[str, float]] | None = None
    after_step: Callable[[int], None] | None = None


@dataclass(frozen=True)
class Run:
    """What :func:`train_lockstep` recorded, per trainee.

    ``steps``: every step's numbers, its wall times in seconds under ``"step"`` (all of it), ``"forward"`` (the
    loss) and ``"backward"``, then its :data:`Stats`. ``epochs``: per epoch the sums of those times, the means of
    the other numbers (:func:`mean`) and the evaluation's numbers, prefixed ``test_``.
    """

    steps: dict[str, list[dict[str, Any]]]
    epochs: dict[str, list[dict[str, Any]]]

    @property
    def timed(self) -> dict[str, list[dict[str, Any]]]:
        """Each trainee's steps after its first (a warm-up); the one step if it took only one."""
        return {k: v[1:] or v for k, v in self.steps.items()}

    def timing(self, key: str = "step") -> dict[str, Timing]:
        """Each trainee's ``key`` time (``"step"``, ``"forward"`` or ``"backward"``) over its timed steps."""
        return {k: Timing(tuple(r[key] for r in v)) for k, v in self.timed.items()}

    def series(self, **names: str) -> dict[str, dict[str, list[Any]]]:
        """Per-epoch curves named for a result: ``series(nfe_per_epoch="nfe")`` → ``{"nfe_per_epoch": {trainee:
        [mean NFE of epoch 1, …]}}``."""
        recorded = {key for v in self.epochs.values() for e in v for key in e}
        missing = set(names.values()) - recorded
        if missing:
            raise KeyError(f"no per-epoch numbers {sorted(missing)}; this run recorded {sorted(recorded)}.")
        return {s: {k: [e[key] for e in v] for k, v in self.epochs.items()} for s, key in names.items()}


def mean(records: Iterable[Mapping[str, Any]], key: str) -> float | None:
    """The mean of ``key`` over the records that have a number for it (not ``None``); ``None`` if none has."""
    values = [r[key] for r in records if r[key] is not None]
    return statistics.fmean(values) if values else None


@contextmanager
def _collector_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()  # as timeit does: no collector pause inside a timed step
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _step(trainee: Trainee, images: Tensor, labels: Tensor, step: int, device: torch.device) -> dict[str, Any]:
    """One training step of one trainee: its wall times, then its statistics."""
    with _collector_paused(), stopwatch(device) as whole:
        trainee.optimizer.zero_grad(set_to_none=True)
        with stopwatch(device) as forward:
            loss, stats = trainee.loss(images, labels)
        with stopwatch(device) as backward:
            loss.backward()
        trainee.optimizer.step()
        if trainee.after_step is not None:
            trainee.after_step(step)
    return {"step": whole.seconds, "forward": forward.seconds, "backward": backward.seconds, **stats()}


def _epoch(records: list[dict[str, Any]], evaluation: dict[str, float]) -> dict[str, Any]:
    summary = {k: sum(r[k] for r in records) if k in TIMES else mean(records, k) for k in records[0]}
    return summary | {f"test_{k}": v for k, v in evaluation.items()}


def train_lockstep(ctx: BenchContext, trainees: Mapping[str, Trainee], train: tuple[Tensor, Tensor], *,
                   epochs: int, batch: int, steps: int | None = None, rotate: bool = True, desc: str) -> Run:
    """Train every trainee ``epochs`` epochs on the same batches, one step each in turn.

    Each epoch is one permutation of ``train`` (drawn from a generator seeded with ``ctx.seed``) cut into batches
    of ``batch``: as many as fit (at least one), or the first ``steps``. Batches go to ``ctx.device`` as they are
    used. ``rotate=True`` rotates the trainees' order by one each step, so that none always runs first (warming
    the caches for the others); ``rotate=False`` keeps the mapping's order, which keeps the draws of models that
    use the global random generator (dropout masks) in that order. After each epoch each trainee's ``evaluate``
    runs, in the mapping's order.
    """
    x, y = train
    names = list(trainees)
    per_epoch = max(len(x) // batch, 1)
    per_epoch = per_epoch if steps is None else min(steps, per_epoch)
    gen = torch.Generator().manual_seed(ctx.seed)
    records: dict[str, list[dict[str, Any]]] = {k: [] for k in names}
    summaries: dict[str, list[dict[str, Any]]] = {k: [] for k in names}
    for epoch in range(epochs):
        bar = ctx.bar(range(per_epoch), desc=f"{desc} epoch {epoch + 1}/{epochs}", unit="step")
        for step, idx, order in rotated_batches(names, len(x), batch, epoch, gen, bar):
            xb, yb = x[idx].to(ctx.device), y[idx].to(ctx.device)
            for name in order if rotate else names:
                records[name].append(_step(trainees[name], xb, yb, step, ctx.device))
        for name, trainee in trainees.items():
            evaluation = trainee.evaluate() if trainee.evaluate is not None else {}
            summaries[name].append(_epoch(records[name][-per_epoch:], evaluation))
    return Run(steps=records, epochs=summaries)


@torch.no_grad()
def accuracy(predict: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *, batch: int | None = None) -> float:
    """The fraction of ``x`` whose logits ``predict(x_batch)`` have their largest entry at the label ``y``.

    ``batch``: images per call of ``predict`` (all at once when ``None``). No gradients; the caller sets the mode
    (``eval()``) where it matters.
    """
    step = batch or max(len(x), 1)
    hits = sum(int((predict(x[i:i + step]).argmax(1) == y[i:i + step]).sum()) for i in range(0, len(x), step))
    return hits / max(len(x), 1)


def standardise(x: Tensor, mean: float | Tensor = MNIST_MEAN, std: float | Tensor = MNIST_STD) -> Tensor:
    """``(x - mean) / std`` (MNIST's mean and standard deviation by default)."""
    return (x - mean) / std


def flatten(images: Tensor, *, pool: int = 1) -> Tensor:
    """MNIST images ``(n, 1, 28, 28)`` as standardised vectors ``(n, 784 / pool²)``, average-pooled first."""
    x = F.avg_pool2d(images, pool) if pool > 1 else images
    return standardise(x).reshape(images.shape[0], -1)


def mnist(ctx: BenchContext, n_train: int, n_test: int, *, prepare: Callable[[Tensor], Tensor] = standardise
          ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """The first ``n_train`` training and ``n_test`` test images of MNIST, each set of images through
    ``prepare`` (standardised by default; :func:`flatten` for vectors), and their labels (on the CPU)."""
    x, y = ctx.data("mnist", "train", limit=n_train)
    xt, yt = ctx.data("mnist", "test", limit=n_test)
    return (prepare(x), y), (prepare(xt), yt)
