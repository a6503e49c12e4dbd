"""Tables and work-precision plots of a DETEST record (:func:`pydeq.bench.detest.run`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import BATCH_METHODS, BATCH_TARGET, CLASSES, PEER, TARGETS, at_error
from .problems import PROBLEMS

__all__ = ["class_ratios", "tables", "plot_classes"]


def _geomean(values: list[float]) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def class_ratios(record: dict[str, Any], key: str) -> dict[str, dict[str, float | None]]:
    """Per class and method: geometric mean over problems and target errors of ``key`` at matched error divided
    by torchdiffeq dopri5's."""
    out: dict[str, dict[str, float | None]] = {}
    for klass in CLASSES:
        names = [p.name for p in PROBLEMS if p.klass == klass and p.name in record["single"]]
        if not names:
            continue
        methods = record["single"][names[0]]
        out[klass] = {}
        for method in methods:
            ratios = []
            for name in names:
                for target in TARGETS:
                    mine = at_error(record["single"][name][method], key, target)
                    peer = at_error(record["single"][name][PEER], key, target)
                    if mine is not None and peer is not None:
                        ratios.append(mine / peer)
            out[klass][method] = _geomean(ratios)
    return out


def _cell(v: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if v is None else fmt.format(v)


def tables(record: dict[str, Any]) -> str:
    """Markdown: NFE and wall time at matched error relative to torchdiffeq dopri5 per class, and the batched runs."""
    lines = []
    for key, title in (("nfe", "NFE"), ("seconds", "wall time (batch 1)")):
        ratios = class_ratios(record, key)
        if not ratios:
            continue
        methods = [m for m in next(iter(ratios.values())) if m != PEER]
        lines += [f"{title} at matched error, relative to {PEER} (geometric mean over each class's problems and the "
                  f"errors {', '.join(f'{t:g}' for t in TARGETS)}; < 1 is less)", "",
                  "| class | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for klass, row in ratios.items():
            lines.append(f"| {klass} ({CLASSES[klass]}) | " + " | ".join(_cell(row[m]) for m in methods) + " |")
        lines.append("")
    if record["batched"]:
        lines += [f"Batch {record['batch']}, at matched error {BATCH_TARGET:g}: wall time in ms (NFE), each sample on "
                  "its own clock in pydeq, the whole batch one system in torchdiffeq and scipy", "",
                  "| problem | " + " | ".join(BATCH_METHODS) + f" | time pydeq Tsit5 / {PEER} |",
                  "|---" * (len(BATCH_METHODS) + 2) + "|"]
        for name, by_method in record["batched"].items():
            ms = {m: at_error(by_method[m], "seconds", BATCH_TARGET) for m in BATCH_METHODS}
            nfe = {m: at_error(by_method[m], "nfe", BATCH_TARGET) for m in BATCH_METHODS}
            ratio = ms["pydeq Tsit5"] / ms[PEER] if ms["pydeq Tsit5"] and ms[PEER] else None
            cells = [f"{_cell(None if ms[m] is None else 1e3 * ms[m], '{:.0f}')} ({_cell(nfe[m], '{:.0f}')})"
                     for m in BATCH_METHODS]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {_cell(ratio)} |")
        lines.append("")
    return "\n".join(lines)


def plot_classes(record: dict[str, Any], out_dir: Path) -> list[Path]:
    """One PNG per class: error against NFE, log–log, one panel per problem, one line per method."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    paths = []
    for klass, label in CLASSES.items():
        names = [p.name for p in PROBLEMS if p.klass == klass and p.name in record["single"]]
        if not names:
            continue
        fig = Figure(figsize=(3.0 * len(names), 3.2), dpi=100, layout="constrained")
        axes = fig.subplots(1, len(names), squeeze=False)[0]
        for ax, name in zip(axes, names, strict=True):
            for i, (method, points) in enumerate(record["single"][name].items()):
                style = "-" if method.startswith("pydeq") else "--" if method.startswith("torchdiffeq") else ":"
                ax.loglog([q["nfe"] for q in points], [max(q["error"], 1e-16) for q in points], style, marker="o",
                          markersize=2.5, color=f"C{i}", label=method)
            ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: the minor ones overlap
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("NFE", fontsize=8)
            ax.grid(alpha=0.3, which="both")
        axes[0].set_ylabel("error", fontsize=8)
        axes[-1].legend(fontsize=6)
        fig.suptitle(f"DETEST class {klass}: {label}", fontsize=10)
        path = out_dir / f"detest_{klass}.png"
        fig.savefig(path)
        paths.append(path)
    return paths
