"""The package's structure stays as documented: imports point down the layers, no cycles, no borrowed privates.

Read from the source with ``ast`` (lazy imports inside functions count), so the test needs nothing imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "pydeq"

# Lower layers never import higher ones (README "Layout"); the package's own __init__ is the public facade.
LAYERS = {
    "_batched": 0, "_checks": 0, "_solution": 0, "_norms": 0,
    "_linear": 1, "_root": 1, "_adjoint": 1, "_ode": 1,
    "fixed_point": 2,
    "nn": 3,
    "compat": 4, "spec": 4,
    "julia": 5, "interop": 5,
    "bench": 6, "data": 6, "data_formats": 6, "cli": 6, "__main__": 6,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _package(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]


def _imports(module: str) -> list[tuple[str, str | None]]:
    """``(imported module, imported name or None)`` for every pydeq import in ``module``, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] == "pydeq"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package(module).split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "pydeq":
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                found.append((full, None) if full in MODULES else (source, alias.name))
    return found


def _owner(name: str) -> str:
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _ in _imports(module):
            target = _owner(target)
            if target == module:
                continue
            # a package's __init__ exposing its own submodules is composition, not a dependency
            if MODULES[module].name == "__init__.py" and target.startswith(module + "."):
                continue
            edges[module].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_no_import_cycle_lazy_or_not():
    assert _cycles(_edges()) == []


def test_imports_point_down_the_layers():
    bad = []
    for module, targets in _edges().items():
        mine = _layer(module)
        for target in targets:
            theirs = _layer(target)
            if mine is not None and theirs is not None and theirs > mine:
                bad.append(f"{module} (layer {mine}) imports {target} (layer {theirs})")
    assert bad == []


def test_no_module_borrows_another_packages_private_names():
    bad = []
    for module in MODULES:
        for target, name in _imports(module):
            owner = _owner(target)
            if name is not None and name.startswith("_") and _package(owner) != _package(module):
                bad.append(f"{module} imports {name} from {owner}")
            for i, part in enumerate(owner.split(".")[1:], start=1):  # a private module, from outside its package
                parent = ".".join(owner.split(".")[:i])
                if part.startswith("_") and not (module == parent or module.startswith(parent + ".")):
                    bad.append(f"{module} imports the private module {owner}")
    assert bad == []


def test_every_package_module_is_in_a_layer():
    assert sorted({m.split(".")[1] for m in MODULES if "." in m} - set(LAYERS)) == []


def test_the_structure_checks_catch_what_they_should():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert _layer("pydeq._ode.odeint") == 1 and _layer("pydeq.bench.runner") == 6 and _layer("pydeq") is None
