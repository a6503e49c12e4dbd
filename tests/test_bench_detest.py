"""The DETEST work-precision script runs end to end on one problem, and its matched-error interpolation is right."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pydeq.bench import detest
from pydeq.bench.detest.__main__ import main
from pydeq.bench.detest.problems import PROBLEMS
from pydeq.bench.detest.report import plot_classes, tables


def test_matched_error_interpolates_log_log_and_is_monotone():
    points = [{"error": 1e-2, "nfe": 100}, {"error": 1e-4, "nfe": 1000}, {"error": 1e-6, "nfe": 800}]
    assert detest.at_error(points, "nfe", 1e-3) == pytest.approx(math.sqrt(100 * 1000))
    assert detest.at_error(points, "nfe", 1e-5) == pytest.approx(1000)  # a tighter answer never costs less
    assert detest.at_error(points, "nfe", 1e-8) is None and detest.at_error(points, "nfe", 1.0) is None


def test_problems_are_well_posed_at_their_start():
    for p in PROBLEMS:
        y0 = torch.tensor(p.y0, dtype=torch.float64)
        single, batched = p.field(torch.tensor(0.0, dtype=torch.float64), y0), p.field(torch.zeros(3, dtype=torch.float64), y0.repeat(3, 1))
        assert single.shape == y0.shape and batched.shape == (3, len(p.y0)) and bool(torch.isfinite(single).all())
        torch.testing.assert_close(batched[1], single)


def test_quick_run_writes_tables_and_plots(tmp_path):
    pytest.importorskip("torchdiffeq")
    pytest.importorskip("scipy")
    record = detest.run(only=["A1"], quick=True, repeats=1, log=lambda s: None)
    curves = record["single"]["A1"]
    assert set(curves) == set(detest.METHODS) and all(q["nfe"] > 0 for c in curves.values() for q in c)
    text = tables(record)
    assert "| A (single equations) |" in text and "pydeq Tsit5" in text
    assert [p.name for p in plot_classes(record, tmp_path)] == ["detest_A.png"]
    tsit5 = {q["tol"]: q["error"] for q in curves["pydeq Tsit5"]}
    assert tsit5[1e-9] < 1e-7 < tsit5[1e-3] and np.isfinite(list(tsit5.values())).all()


def test_unknown_problem_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--only", "Z9"])
    assert exit_info.value.code == 2 and "unknown problem(s) ['Z9']" in capsys.readouterr().err
