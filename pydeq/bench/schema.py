"""The documented layout of ``results.json`` (a JSON Schema, draft 2020-12 subset) and a small validator.

``results.json`` is rewritten after every claim, so an interrupted run leaves a valid file whose ``status`` is
``"interrupted"``. Top level::

    schema_version  1
    tool            "pydeq bench"
    suite           "quick" | "paper" | "engine"
    status          "running" | "complete" | "interrupted"
    started_at, finished_at (ISO 8601, UTC; finished_at null while running), elapsed_s
    argv            the command line
    config          seed, device, backend, repeats, data_dir, out_dir, only (claim names or null), jobs
    machine         measured machine facts: cpu, cores, memory, torch/numpy/python versions, threads,
                    GPU, git commit, a matmul GFLOP/s calibration (see pydeq.bench.system)
    claims          one object per claim, in run order (below)
    counts          how many claims ended in each status

A claim: ``name, title, paper, status`` (``held``, ``not_held``, ``partial``, ``inconclusive``, ``skipped``,
``error``, ``interrupted``), ``elapsed_s``, ``summary``, ``notes``, ``setup`` (free JSON), ``rows``,
``series`` (kind → method → list of numbers), ``plots`` (paths relative to the output folder), ``error``
(traceback text or null). A row: ``method, peer, quantity, metrics`` (name → number), ``ratio, ratio_min,
target`` (numbers or null), ``paper_figure, measured_figure`` (text), ``held`` (true, false or null), ``why``.
Non-finite numbers are written as null.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMA", "STATUSES", "validate"]

STATUSES = ("held", "not_held", "partial", "inconclusive", "skipped", "error", "interrupted")
_NUM = {"type": ["number", "null"]}
_STR = {"type": "string"}
_OPT_STR = {"type": ["string", "null"]}

ROW = {
    "type": "object",
    "required": ["method", "peer", "quantity", "metrics", "ratio", "ratio_min", "target", "paper_figure",
                 "measured_figure", "held", "why"],
    "additionalProperties": False,
    "properties": {
        "method": _STR, "peer": _OPT_STR, "quantity": _STR,
        "metrics": {"type": "object", "additionalProperties": _NUM},
        "ratio": _NUM, "ratio_min": _NUM, "target": _NUM,
        "paper_figure": _STR, "measured_figure": _STR, "held": {"type": ["boolean", "null"]}, "why": _STR,
    },
}

CLAIM = {
    "type": "object",
    "required": ["name", "title", "paper", "status", "elapsed_s", "summary", "notes", "setup", "rows", "series",
                 "plots", "error"],
    "additionalProperties": False,
    "properties": {
        "name": _STR, "title": _STR, "paper": _STR, "status": {"enum": list(STATUSES)},
        "elapsed_s": {"type": "number", "minimum": 0}, "summary": _STR, "notes": _STR,
        "setup": {"type": "object"},
        "rows": {"type": "array", "items": ROW},
        "series": {"type": "object", "additionalProperties": {
            "type": "object", "additionalProperties": {"type": "array", "items": _NUM}}},
        "plots": {"type": "array", "items": _STR},
        "error": _OPT_STR,
    },
}

MACHINE = {
    "type": "object",
    "required": ["cpu", "cores_logical", "cores_available", "memory_gib", "platform", "python", "torch", "numpy",
                 "torch_threads", "device", "gpu", "cuda", "git_commit", "git_dirty", "matmul_gflops"],
    "properties": {
        "cpu": _STR, "cores_logical": {"type": "integer"}, "cores_available": {"type": "integer"},
        "memory_gib": _NUM, "platform": _STR, "python": _STR, "torch": _STR, "numpy": _STR,
        "torch_threads": {"type": "integer"}, "device": _STR, "gpu": _OPT_STR, "cuda": _OPT_STR,
        "git_commit": _OPT_STR, "git_dirty": {"type": ["boolean", "null"]}, "matmul_gflops": _NUM,
    },
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "pydeq bench results",
    "type": "object",
    "required": ["schema_version", "tool", "suite", "status", "started_at", "finished_at", "elapsed_s", "argv",
                 "config", "machine", "claims", "counts"],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"const": 1}, "tool": {"const": "pydeq bench"}, "suite": _STR,
        "status": {"enum": ["running", "complete", "interrupted"]},
        "started_at": _STR, "finished_at": _OPT_STR, "elapsed_s": {"type": "number", "minimum": 0},
        "argv": {"type": "array", "items": _STR},
        "config": {
            "type": "object",
            "required": ["seed", "device", "backend", "repeats", "data_dir", "out_dir", "only"],
            "properties": {"seed": {"type": "integer"}, "device": _STR, "backend": _STR,
                           "repeats": {"type": "integer", "minimum": 1}, "data_dir": _OPT_STR, "out_dir": _STR,
                           "only": {"type": ["array", "null"], "items": _STR},
                           "jobs": {"type": "integer", "minimum": 1}},
        },
        "machine": MACHINE,
        "claims": {"type": "array", "items": CLAIM},
        "counts": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
    },
}

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is(value: Any, kind: str) -> bool:
    if kind in ("number", "integer"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok and (kind == "number" or isinstance(value, int))
    return isinstance(value, _TYPES[kind])


def validate(instance: Any, schema: dict[str, Any] = SCHEMA, path: str = "$") -> list[str]:
    """Check ``instance`` against ``schema``; return the list of violations (empty when valid).

    Supports the keywords used above: type, enum, const, minimum, required, properties,
    additionalProperties, items.
    """
    errors: list[str] = []
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(instance, k) for k in kinds):
            return [f"{path}: expected {' or '.join(kinds)}, got {type(instance).__name__}"]
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: {instance!r} not in {schema['enum']}")
    if "const" in schema and instance != schema["const"]:
        errors.append(f"{path}: {instance!r} != {schema['const']!r}")
    if "minimum" in schema and _is(instance, "number") and instance < schema["minimum"]:
        errors.append(f"{path}: {instance} < {schema['minimum']}")
    if isinstance(instance, dict):
        errors += [f"{path}: missing {k!r}" for k in schema.get("required", []) if k not in instance]
        props, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
        for key, value in instance.items():
            if key in props:
                errors += validate(value, props[key], f"{path}.{key}")
            elif extra is False:
                errors.append(f"{path}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                errors += validate(value, extra, f"{path}.{key}")
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            errors += validate(item, schema["items"], f"{path}[{i}]")
    return errors
