"""The Julia project ships with pydeq: UUIDs agree, juliapkg finds it only when the engine starts, the wheel
carries the sources, and fatou keeps the Julia code formatted and lint-clean."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import pydeq.julia as pj

ROOT = Path(__file__).resolve().parents[1]
PROJECT = Path(pj.PROJECT_DIR)
JULIAPKG_JSON = Path(pj.JULIAPKG_DIR) / "juliapkg.json"


def _toml(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def test_juliapkg_json_agrees_with_project_toml():
    project = _toml(PROJECT / "Project.toml")
    deps = json.loads(JULIAPKG_JSON.read_text())
    pkg = deps["packages"][project["name"]]
    assert pkg["uuid"] == project["uuid"] == pj.PROJECT_UUID
    assert pkg["dev"] is True
    assert (JULIAPKG_JSON.parent / pkg["path"]).resolve() == PROJECT.resolve()
    for name, entry in deps["packages"].items():
        if name != project["name"]:
            assert entry["uuid"] == project["deps"][name], name
    assert deps["julia"] == project["compat"]["julia"]


def test_project_toml_is_complete():
    project = _toml(PROJECT / "Project.toml")
    need = {"DeepEquilibriumNetworks", "Lux", "NonlinearSolve", "OrdinaryDiffEq", "SteadyStateDiffEq",
            "SciMLSensitivity", "Zygote", "DLPack", "PythonCall", "PrecompileTools"}
    assert need <= set(project["deps"])
    assert set(project["deps"]) | set(project.get("weakdeps", {})) <= set(project["compat"]) | {"LinearAlgebra"}
    assert project["weakdeps"] == {"CUDA": "052768ef-5323-5732-b1bb-66c8b64840ba"}
    assert "CUDA" not in project["deps"] and project["extensions"] == {"PyDEQCUDAExt": "CUDA"}
    assert (PROJECT / "ext" / "PyDEQCUDAExt.jl").is_file() and (PROJECT / "test" / "runtests.jl").is_file()
    compat = project["compat"]
    assert compat["julia"] == "1.10" and compat["DeepEquilibriumNetworks"] == "2" and compat["Lux"] == "1"
    assert compat["DLPack"] == "0.3" and compat["PythonCall"] == "0.9"
    assert "@compile_workload" in (PROJECT / "src" / "precompile.jl").read_text()


def _scan(paths: list[str]) -> set[Path]:
    """juliapkg's discovery rule: juliapkg.json in each sys.path entry and its immediate subfolders."""
    found = set()
    for p in paths:
        base = Path(p or os.getcwd())
        if base.is_dir():
            for cand in [base / "juliapkg.json", *(d / "juliapkg.json" for d in base.iterdir() if d.is_dir())]:
                if cand.is_file():
                    found.add(cand.resolve())
    return found


def test_juliapkg_finds_the_project_only_once_the_engine_asks():
    here = [p for p in sys.path if Path(p or ".").resolve() != Path(pj.JULIAPKG_DIR).resolve()]
    assert JULIAPKG_JSON.resolve() not in _scan([*here, str(ROOT), str(ROOT / "pydeq")])
    assert JULIAPKG_JSON.resolve() in _scan([*here, pj.JULIAPKG_DIR])
    assert sorted(os.listdir(pj.JULIAPKG_DIR)) == ["juliapkg.json"]  # nothing importable lands on sys.path


def test_wheel_contains_the_julia_sources(tmp_path):
    pyproject = (ROOT / "pyproject.toml").read_text()
    if "PyDEQ" not in pyproject:
        pytest.skip('pyproject.toml lacks the package-data line: "pydeq.julia" = ["_juliapkg/juliapkg.json", '
                    '"PyDEQ/Project.toml", "PyDEQ/**/*.jl"]')
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    (src / "README.md").write_text((ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "pydeq\n")
    shutil.copytree(ROOT / "pydeq", src / "pydeq", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = out.glob("pydeq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in PROJECT.rglob("*"):
        if path.is_file() and re.search(r"\.(jl|toml)$", path.name):
            assert "pydeq/julia/PyDEQ/" + path.relative_to(PROJECT).as_posix() in names
    assert "pydeq/julia/_juliapkg/juliapkg.json" in names


@pytest.mark.skipif(shutil.which("fatou") is None, reason="fatou (pip install fatou) is not installed")
@pytest.mark.parametrize("command", [["format", "--check"], ["lint"]], ids=["format", "lint"])
def test_fatou_is_clean(command):
    proc = subprocess.run(["fatou", *command, str(PROJECT)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "warning" not in proc.stdout + proc.stderr
