"""PNG plots for the report, drawn from the JSON records (so a saved ``results.json`` can be re-plotted).

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend state, no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_claim", "plot_overview"]

_LABELS = {
    "time_per_epoch": ("Time per epoch", "seconds"),
    "nfe_per_epoch": ("Function evaluations per epoch (NFE)", "NFE"),
    "accuracy": ("Test accuracy", "accuracy"),
    "loss": ("Training loss", "loss"),
    "backward_time": ("Backward pass time (bar: median, dot: min)", "seconds"),
}
_HELD_COLOURS = {True: "#2a9d4b", False: "#d1495b", None: "#8d99ae"}
_SECONDS = ("time_per_epoch", "backward_time")


def _figure(width: float = 6.4, height: float = 4.0) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _in_ms(by_method: dict[str, list[float | None]]) -> dict[str, list[float | None]]:
    return {m: [None if v is None else 1e3 * v for v in vals] for m, vals in by_method.items()}


def _curves(ax: Any, by_method: dict[str, list[float | None]]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for method, values in by_method.items():
        xs = [i + 1 for i, v in enumerate(values) if v is not None]
        ax.plot(xs, [v for v in values if v is not None], marker="o", markersize=3, label=method)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def _bars(ax: Any, by_method: dict[str, list[float | None]]) -> None:
    import statistics

    names = list(by_method)
    clean = [[v for v in by_method[m] if v is not None] or [float("nan")] for m in names]
    medians = [statistics.median(v) for v in clean]
    ax.bar(names, medians, color=[f"C{i}" for i in range(len(names))], alpha=0.8)
    ax.plot(names, [min(v) for v in clean], "ko", markersize=4, label="min")
    for i, m in enumerate(medians):
        ax.annotate(f"{m:.3g}", (i, m), ha="center", va="bottom", fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_claim(record: dict[str, Any], out_dir: Path) -> list[str]:
    """One PNG per series kind of a claim record; returns paths relative to ``out_dir``."""
    paths = []
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    for kind, by_method in record.get("series", {}).items():
        if not by_method:
            continue
        title, ylabel = _LABELS.get(kind, (kind.replace("_", " ").capitalize(), kind))
        peak = max((v for vals in by_method.values() for v in vals if v is not None), default=0.0)
        if kind in _SECONDS and peak < 1.0:
            by_method, ylabel = _in_ms(by_method), "milliseconds"
        fig = _figure()
        ax = fig.subplots()
        (_bars if kind == "backward_time" else _curves)(ax, by_method)
        if kind in (*_SECONDS, "nfe_per_epoch"):
            ax.set_ylim(bottom=0)  # ratios read honestly off bars and curves that start at zero
        ax.set_title(f"{record['title']}\n{title}", fontsize=10)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        rel = f"plots/{record['name']}_{kind}.png"
        fig.savefig(out_dir / rel)
        paths.append(rel)
    return paths


def plot_overview(claims: list[dict[str, Any]], out_dir: Path) -> str | None:
    """Every row with a measured ratio as a bar, the value it is held against as a black tick."""
    rows = [(c["name"], r) for c in claims for r in c.get("rows", []) if r.get("ratio") is not None]
    if not rows:
        return None
    fig = _figure(7.0, 1.6 + 0.4 * len(rows))
    ax = fig.subplots()
    labels = [(f"{name}: {r['method']} vs {r['peer']}" if r["peer"] else f"{name}: {r['method']}")
              + (f" ({r['quantity'][:32]})" if r.get("quantity") else "") for name, r in rows]
    ys = list(range(len(rows)))[::-1]
    ax.barh(ys, [r["ratio"] for _, r in rows], height=0.6, color=[_HELD_COLOURS[r["held"]] for _, r in rows],
            alpha=0.85)
    for y, (_, r) in zip(ys, rows, strict=True):
        ax.annotate(f" {r['ratio']:.2f}×", (r["ratio"], y), va="center", fontsize=8)
    targets = [(y, r["target"]) for y, (_, r) in zip(ys, rows, strict=True) if r.get("target") is not None]
    if targets:
        ax.plot([t for _, t in targets], [y for y, _ in targets], "k|", markersize=16, markeredgewidth=2.5)
    ax.axvline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlabel("measured ratio (×): green held, red not held, grey no verdict; black tick: the paper's figure",
                  fontsize=8)
    ax.set_title("Claims at a glance", fontsize=10)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "plots" / "overview.png")
    return "plots/overview.png"
