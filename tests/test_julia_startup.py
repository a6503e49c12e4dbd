"""The Julia engine loads only when asked, and fails fast and clearly where Julia cannot start."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON_JULIACALL_", "PYTHON_JULIAPKG_", "PYDEQ_"))}
_ENV["PYTHON_JULIAPKG_OFFLINE"] = "yes"

_BLOCK_JULIACALL = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "juliacall" or name.startswith("juliacall."):
            raise ModuleNotFoundError("No module named 'juliacall'", name="juliacall")
sys.meta_path.insert(0, _Block())
"""

_TRY_LOAD = """
import json, sys, time, warnings
import torch
import pydeq
from pydeq import spec
import pydeq.julia as pj
model = spec.build(spec.DEQSpec(spec.Injection(z=spec.Dense(2, 2), x=spec.Dense(2, 2))), backend="julia")
out = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    t0 = time.perf_counter()
    try:
        pj.load()
    except pj.JuliaUnavailableError as err:
        out["seconds"] = time.perf_counter() - t0
        out["message"] = str(err)
        out["is_import_error"] = isinstance(err, ImportError)
        first = err
    t1 = time.perf_counter()
    try:
        model(torch.zeros(3, 2))
    except pj.JuliaUnavailableError as err:
        out["again_seconds"] = time.perf_counter() - t1
        out["same_error"] = err is first
out["warnings"] = [type(w.message).__name__ for w in caught]
out["is_loaded"] = pj.is_loaded()
print("RESULT" + json.dumps(out))
"""


def _run(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], env=_ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_import_pydeq_never_imports_juliacall():
    code = (
        "import sys, pickle, torch, pydeq, pydeq.julia, pydeq.interop\n"
        "from pydeq import spec\n"
        "from pydeq.julia import translate\n"
        "m = spec.build(spec.DEQSpec(spec.Injection(z=spec.Dense(2, 2), x=spec.Dense(2, 2))), backend='julia')\n"
        "pickle.loads(pickle.dumps(m)).state_dict(); translate.julia_spec(m)\n"
        "bad = [k for k in ('juliacall', 'juliapkg', 'pydeq.julia._runtime') if k in sys.modules]\n"
        "print('RESULT' + __import__('json').dumps({'loaded': bad}))\n"
    )
    assert _run(code) == {"loaded": []}


def test_missing_juliacall_fails_fast_and_names_the_extra():
    out = _run(_BLOCK_JULIACALL + _TRY_LOAD)
    assert out["is_import_error"]
    assert "juliacall, which is not installed" in out["message"]
    assert "pip install 'pydeq[julia]'" in out["message"]
    assert "PYTHON_JULIACALL_EXE" in out["message"] and "PYTHON_JULIACALL_PROJECT" in out["message"]
    assert out["seconds"] < 2.0
    assert out["same_error"] and out["again_seconds"] < 0.5
    assert not out["is_loaded"]


@pytest.mark.skipif(importlib.util.find_spec("juliacall") is None, reason="juliacall is not installed here")
def test_installed_juliacall_without_julia_offline_fails_fast_with_remedies():
    out = _run(_TRY_LOAD)
    assert out["is_import_error"]
    msg = out["message"]
    assert "could not start Julia" in msg and "PYTHON_JULIAPKG_OFFLINE is set" in msg
    assert "PYTHON_JULIACALL_EXE" in msg and "PYTHON_JULIACALL_PROJECT" in msg and "go online" in msg
    assert out["seconds"] < 3.0
    assert out["same_error"] and out["again_seconds"] < 0.5
    assert "TorchImportOrderWarning" in out["warnings"]
