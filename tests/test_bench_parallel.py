"""``pydeq bench --jobs``: a claim's independent parts in worker processes, with results that do not depend on it.

The scenarios that start worker processes run in a fresh Python process of their own (``_run_scenario``), so the
test session itself never owns these pools: with them in the pytest process, a later test's child process
(``test_bench_report``'s real Ctrl-C) did not exit on its SIGINT in the full suite, twice in a row, and passed with
this file left out (the mechanism was not pinned down).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pydeq.bench import BenchContext
from pydeq.bench.parallel import in_processes

HERE = Path(__file__).resolve().parent


def _where(ctx: BenchContext, *, k: int, wait: float = 0.0) -> tuple[int, int, int, bool]:
    time.sleep(wait)
    return k * k, os.getpid(), torch.get_num_threads(), ctx.progress


def _fails(ctx: BenchContext, *, k: int) -> int:
    if k == 2:
        raise RuntimeError(f"task {k} failed on purpose")
    return k


def _slow_then_interrupted(ctx: BenchContext, *, k: int) -> int:
    if k == 0:
        time.sleep(8.0)  # the worker is well into its task by now
        raise KeyboardInterrupt  # as a Ctrl-C reaching this process mid-task
    time.sleep(120)
    return k


def _scenario(name: str) -> dict:
    """Run in a fresh process by :func:`_run_scenario`; returns what the test checks."""
    if name == "share":
        torch.set_num_threads(2)  # the workers must get this count, not their own default
        ctx = BenchContext(suite="quick", jobs=2, progress=True)
        # task 0 (here) outlasts the worker's start, so the worker takes task 1; the rest: whoever frees first
        out = in_processes(ctx, _where, [dict(k=0, wait=8.0), *(dict(k=k) for k in range(1, 5))])
        return {"out": out, "here": os.getpid()}
    if name == "error":
        try:
            in_processes(BenchContext(suite="quick", jobs=2), _fails, [dict(k=k) for k in range(3)])
        except RuntimeError as e:
            return {"error": str(e)}
        return {"error": None}
    t0 = time.perf_counter()
    try:
        in_processes(BenchContext(suite="quick", jobs=2), _slow_then_interrupted, [dict(k=k) for k in range(3)])
    except KeyboardInterrupt:
        pass
    while multiprocessing.active_children() and time.perf_counter() - t0 < 30:
        time.sleep(0.1)
    return {"children": len(multiprocessing.active_children()), "seconds": time.perf_counter() - t0}


def _run_scenario(name: str) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import test_bench_parallel as t; "
            f"print(json.dumps(t._scenario({name!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_one_job_runs_every_task_here_in_order() -> None:
    ctx = BenchContext(suite="quick", jobs=1)
    out = in_processes(ctx, _where, [dict(k=k) for k in range(4)])
    assert [o[0] for o in out] == [0, 1, 4, 9] and {o[1] for o in out} == {os.getpid()}


def test_two_jobs_share_the_tasks_with_a_worker_at_this_thread_count() -> None:
    got = _run_scenario("share")
    out, here = got["out"], got["here"]
    assert [o[0] for o in out] == [0, 1, 4, 9, 16]
    assert out[0][1] == here and out[1][1] != here and len({o[1] for o in out}) == 2  # one worker (jobs - 1)
    assert all(o[2] == 2 for o in out)  # this process's thread count in the worker too
    assert all(o[3] == (o[1] == here) for o in out)  # progress bars only here


def test_a_workers_error_reaches_the_caller() -> None:
    assert _run_scenario("error")["error"] == "task 2 failed on purpose"


def test_an_interrupt_here_stops_the_workers_at_once() -> None:
    got = _run_scenario("interrupt")
    assert got["children"] == 0 and got["seconds"] < 30  # not the worker's 120 s


def test_run_suite_refuses_bad_jobs(tmp_path) -> None:
    from pydeq.bench.runner import run_suite

    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=r"jobs must be an int >= 1 .*got"):
            run_suite("quick", out_dir=tmp_path, only=["steady-state-grid"], jobs=bad, progress=False)
