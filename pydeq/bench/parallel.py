"""Independent parts of one claim in separate processes, one per core (``pydeq bench --jobs``).

A claim whose work splits into parts that share nothing (Table 1's rows without and with Jacobian
regularisation: every ratio it reports is measured inside one part) can run those parts side by side:
:func:`in_processes` runs the first part in this process and the others in fresh worker processes, at most
``ctx.jobs`` at a time. Results do not depend on ``jobs``: each part builds its models from its own seed and
draws its batches from its own generator, and the parts run the same code in or out of this process (tested).
Each worker uses this process's torch thread count, so ``--jobs 2 --threads 1`` keeps one thread per core.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from pydeq.bench.claim import BenchContext

__all__ = ["in_processes"]


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def in_processes(ctx: BenchContext, fn: Callable[..., Any], tasks: Sequence[Mapping[str, Any]]) -> list[Any]:
    """``[fn(ctx, **task) for task in tasks]``, running up to ``ctx.jobs`` of the tasks at once.

    The tasks are taken in order by this process and ``ctx.jobs - 1`` worker processes, each taking the next
    one when it is free: the first always here (with ``ctx`` as given, progress bars included), the others
    wherever a process frees first. Workers are started fresh (``spawn``: nothing shared but the arguments)
    and given a copy of ``ctx`` without progress bars. ``fn`` must be a module-level function, the tasks'
    values and ``fn``'s results picklable. An exception in any task is raised here once the running tasks have
    finished; an interrupt cancels the tasks not yet started.
    """
    tasks = list(tasks)
    if ctx.jobs <= 1 or len(tasks) <= 1:
        return [fn(ctx, **task) for task in tasks]
    quiet = dataclasses.replace(ctx, progress=False)  # fields only: nothing patched onto ``ctx`` travels
    results: list[Any] = [None] * len(tasks)
    errors: list[BaseException] = []
    order, lock = iter(range(len(tasks))), threading.Lock()

    def take() -> int | None:
        with lock:
            return None if errors else next(order, None)

    def run(i: int, submit: Callable[..., Any] | None) -> None:
        try:
            results[i] = fn(ctx, **tasks[i]) if submit is None else submit(fn, quiet, **tasks[i]).result()
        except Exception as exc:  # raised below, once the running tasks are done; an interrupt goes straight up
            with lock:
                errors.append(exc)

    workers = min(ctx.jobs - 1, len(tasks) - 1)
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_start_worker, initargs=(torch.get_num_threads(),))
    first = take()

    def feed() -> None:
        while (i := take()) is not None:
            run(i, pool.submit)

    feeders = [threading.Thread(target=feed, daemon=True) for _ in range(workers)]
    try:
        for t in feeders:
            t.start()
        run(first, None)
        while (i := take()) is not None:
            run(i, None)
        for t in feeders:
            t.join()
    except BaseException:
        running = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in running:
            process.terminate()  # a worker mid-task would otherwise run on to the task's end
        raise
    pool.shutdown()
    if errors:
        raise errors[0]
    return results
