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


PYTHONCALL_UUID = "6099a3de-0909-46bc-b1f4-468b9a2dfc0d"


def test_juliapkg_json_agrees_with_project_toml():
    project = _toml(PROJECT / "Project.toml")
    deps = json.loads(JULIAPKG_JSON.read_text())
    pkg = deps["packages"][project["name"]]
    assert pkg["uuid"] == project["uuid"] == pj.PROJECT_UUID
    assert pkg["dev"] is True
    assert (JULIAPKG_JSON.parent / pkg["path"]).resolve() == PROJECT.resolve()
    # PyDEQ does not depend on PythonCall (so Pkg.test() needs no Python); juliacall's side of the
    # environment does, and DLPack.jl's PythonCall extension loads from it
    assert deps["packages"]["PythonCall"] == {"uuid": PYTHONCALL_UUID, "version": "0.9"}
    for name, entry in deps["packages"].items():
        if name not in (project["name"], "PythonCall"):
            assert entry["uuid"] == project["deps"][name], name
    assert deps["julia"] == project["compat"]["julia"]


def _imports(*folders: str) -> set[str]:
    """Packages named by ``using X`` / ``using X: ...`` / ``import X`` in the Julia files under ``folders``."""
    names = set()
    for folder in folders:
        for path in (PROJECT / folder).rglob("*.jl"):
            for match in re.finditer(r"^\s*(?:using|import)\s+([A-Za-z_]\w*)", path.read_text(), re.M):
                names.add(match.group(1))
    return names


def test_every_dependency_is_imported_and_every_import_is_declared():
    project = _toml(PROJECT / "Project.toml")
    deps, weak, extras = set(project["deps"]), set(project["weakdeps"]), set(project["extras"])
    used = _imports("src", "ext") - {"PyDEQ"}
    assert used - weak == deps  # no stale dependency (SteadyStateDiffEq, OrdinaryDiffEq) and none missing
    test_uses = _imports("test") - {"PyDEQ"}
    assert test_uses <= deps | set(project["targets"]["test"])
    assert set(project["targets"]["test"]) <= extras
    assert "LinearAlgebra" in extras and "LinearAlgebra" not in deps  # only the tests use it
    assert {"PythonCall", "OrdinaryDiffEq", "SteadyStateDiffEq"}.isdisjoint(deps | weak)
    assert {"OrdinaryDiffEqTsit5", "OrdinaryDiffEqLowOrderRK"} <= deps  # Tsit5; BS3, DP5


def _lower_bound(entry: str) -> tuple[int, ...]:
    """Smallest version a Pkg compat entry (comma-separated caret specifiers, e.g. ``"0.21, 1"``) allows."""
    specs = [part.strip().lstrip("^") for part in entry.split(",")]
    return min(tuple(int(p) for p in spec.split(".")) for spec in specs)


# the oldest release each dependency may resolve to, and why (read in the dependencies' sources)
REQUIRED = {
    # flat residual `reshape(vec(y) .- vec(u), size(u))` that conv states need under the matrix-free
    # SteadyStateAdjoint; 2.3 still took its termination mode from DiffEqBase
    "DeepEquilibriumNetworks": (2, 7, 1),
    # NormTerminationMode(norm) applied as norm(du) and norm(du .+ u), LinearSolve re-exported (KrylovJL_GMRES)
    "NonlinearSolve": (4,),
    # SteadyStateAdjoint(; autojacvec, linsolve, linsolve_kwargs); DeepEquilibriumNetworks 2.7.1's own floor
    "SciMLSensitivity": (7, 43),
    "SciMLBase": (2,),  # successful_retcode
    "Lux": (1,), "LuxCore": (1,),  # AbstractLuxLayer, `use_bias`
    "DLPack": (0, 3),  # from_dlpack of PythonCall's PyIterable (how juliacall passes a torch tensor)
    "OrdinaryDiffEqTsit5": (1,), "OrdinaryDiffEqLowOrderRK": (1,),  # Tsit5; BS3, DP5
    "CUDA": (5,),  # device!(f, id); `share` of a CuArray is refused under 6, the rest works on both
    "julia": (1, 10),
}


def test_compat_bounds_are_the_ones_the_code_needs():
    project = _toml(PROJECT / "Project.toml")
    compat = project["compat"]
    assert set(project["deps"]) | set(project["weakdeps"]) | set(project["extras"]) | {"julia"} == set(compat)
    for name, floor in REQUIRED.items():
        assert _lower_bound(compat[name]) >= floor, (name, compat[name], floor)
    assert compat["DeepEquilibriumNetworks"] == "2.7.1" and compat["CUDA"] == "5, 6"
    assert _lower_bound("0.21, 1") == (0, 21) and _lower_bound("5, 6") == (5,)


def test_project_toml_is_complete():
    project = _toml(PROJECT / "Project.toml")
    need = {"DeepEquilibriumNetworks", "Lux", "NonlinearSolve", "OrdinaryDiffEqTsit5", "SciMLSensitivity", "Zygote",
            "DLPack", "PrecompileTools"}
    assert need <= set(project["deps"])
    assert project["weakdeps"] == {"CUDA": "052768ef-5323-5732-b1bb-66c8b64840ba"}
    assert "CUDA" not in project["deps"] and project["extensions"] == {"PyDEQCUDAExt": "CUDA"}
    assert (PROJECT / "ext" / "PyDEQCUDAExt.jl").is_file() and (PROJECT / "test" / "runtests.jl").is_file()
    compat = project["compat"]
    assert compat["julia"] == "1.10" and compat["Lux"] == "1" and compat["DLPack"] == "0.3"
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


# the virtual environment's bin folder is not on PATH when its python is called directly
FATOU = shutil.which("fatou") or shutil.which("fatou", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(FATOU is None, reason="fatou (pip install fatou) is not installed")
@pytest.mark.parametrize("command", [["format", "--check"], ["lint"]], ids=["format", "lint"])
def test_fatou_is_clean(command):
    proc = subprocess.run([FATOU, *command, str(PROJECT)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "warning" not in proc.stdout + proc.stderr
