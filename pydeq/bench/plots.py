"""PNG plots for the report, drawn from the JSON records (so a saved ``results.json`` can be re-plotted).

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend state, no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_accuracy", "plot_claim", "plot_overview", "plot_ratios"]

_LABELS = {
    "time_per_epoch": ("Time per epoch", "seconds"),
    "nfe_per_epoch": ("Function evaluations per epoch (NFE)", "NFE"),
    "accuracy": ("Test accuracy", "accuracy"),
    "loss": ("Training loss", "loss"),
    "backward_time": ("Backward pass time (bar: median, dot: min)", "seconds"),
    "depth_per_epoch": ("Test depth per epoch (mean solver steps, first 1,000 test images)", "steps"),
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
    from pydeq.bench.timing import Timing

    names = list(by_method)
    timings = [Timing(tuple(v for v in by_method[m] if v is not None) or (float("nan"),)) for m in names]
    medians = [t.median for t in timings]
    ax.bar(names, medians, color=[f"C{i}" for i in range(len(names))], alpha=0.8)
    ax.plot(names, [t.min for t in timings], "ko", markersize=4, label="min")
    for i, m in enumerate(medians):
        ax.annotate(f"{m:.3g}", (i, m), ha="center", va="bottom", fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def _label(r: dict[str, Any]) -> str:
    pair = f"{r['method']} vs {r['peer']}" if r.get("peer") else r["method"]
    return f"{pair}\n{r['quantity'][:48]}"


def plot_ratios(record: dict[str, Any], out_dir: Path) -> str | None:
    """Measured ratio (dot; green held, red not, grey no verdict) against the paper's (diamond) and its band
    (bar), on a log axis: the rows whose metrics carry ``paper_ratio``."""
    rows = [r for r in record.get("rows", []) if r.get("ratio") and "paper_ratio" in r.get("metrics", {})]
    if not rows:
        return None
    fig = _figure(7.0, 1.4 + 0.55 * len(rows))
    ax = fig.subplots()
    ys = list(range(len(rows)))[::-1]
    for y, r in zip(ys, rows, strict=True):
        m = r["metrics"]
        if m.get("paper_low") is not None and m.get("paper_high") is not None:
            ax.plot([m["paper_low"], m["paper_high"]], [y, y], color="black", alpha=0.35, linewidth=6,
                    solid_capstyle="butt")
        ax.plot([m["paper_ratio"]], [y], "kD", markersize=6)
        ax.plot([r["ratio"]], [y], "o", color=_HELD_COLOURS[r["held"]], markersize=8)
        ax.annotate(f"  {r['ratio']:.2f}×", (r["ratio"], y), va="center", fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_yticks(ys, [_label(r) for r in rows], fontsize=7)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("ratio (log axis). dot: measured (green held, red not held, grey no verdict);\n"
                  "diamond: the paper's ratio; grey bar: the band it is held against", fontsize=8)
    ax.set_title(f"{record['name']}: measured vs paper ratios", fontsize=10)
    rel = f"plots/{record['name']}_ratios.png"
    fig.savefig(out_dir / rel)
    return rel


def plot_accuracy(record: dict[str, Any], out_dir: Path) -> str | None:
    """Test accuracy per model, the paper's beside the measured (rows whose metrics carry ``paper_accuracy``)."""
    rows = [r for r in record.get("rows", []) if "paper_accuracy" in r.get("metrics", {})
            and "accuracy" in r.get("metrics", {})]
    if not rows:
        return None
    fig = _figure(7.0, 3.6)
    ax = fig.subplots()
    xs = list(range(len(rows)))
    ax.bar([x - 0.2 for x in xs], [r["metrics"]["paper_accuracy"] for r in rows], width=0.4, color="white",
           edgecolor="black", hatch="//", label="paper")
    ax.bar([x + 0.2 for x in xs], [100 * r["metrics"]["accuracy"] for r in rows], width=0.4,
           color=[_HELD_COLOURS[r["held"]] for r in rows], label="measured (colour: verdict)")
    for x, r in zip(xs, rows, strict=True):
        ax.annotate(f"{100 * r['metrics']['accuracy']:.1f}", (x + 0.2, 100 * r["metrics"]["accuracy"]),
                    ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs, [r["method"] for r in rows], fontsize=8, rotation=20)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right", framealpha=0.9)
    ax.set_ylim(0, 110)
    ax.set_title(f"{record['name']}: test accuracy, paper vs measured", fontsize=10)
    rel = f"plots/{record['name']}_accuracy_vs_paper.png"
    fig.savefig(out_dir / rel)
    return rel


def plot_claim(record: dict[str, Any], out_dir: Path) -> list[str]:
    """One PNG per series kind of a claim record, plus measured-vs-paper ratio and accuracy plots when its rows
    carry the paper's figures; returns paths relative to ``out_dir``."""
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    paths = [p for p in (plot_ratios(record, out_dir), plot_accuracy(record, out_dir)) if p]
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
    """Every time ratio (a row with measured medians) as a bar on a log axis, the value it is held against (the
    paper's ratio where the row has one) as a black tick. Accuracy gaps, fractions and counts are left to each
    claim's own plots: they are not ratios and do not share an axis with them."""
    rows = [(c["name"], r) for c in claims for r in c.get("rows", [])
            if r.get("ratio") and r["ratio"] > 0 and "method_median_s" in r.get("metrics", {})]
    if not rows:
        return None
    fig = _figure(7.0, 1.6 + 0.4 * len(rows))
    ax = fig.subplots()
    labels = [(f"{name}: {r['method']} vs {r['peer']}" if r["peer"] else f"{name}: {r['method']}")
              + (f" ({r['quantity'][:32]})" if r.get("quantity") else "") for name, r in rows]
    ys = list(range(len(rows)))[::-1]
    # bars start at 1×: a log axis has no 0
    ax.barh(ys, [r["ratio"] - 1.0 for _, r in rows], left=1.0, height=0.6,
            color=[_HELD_COLOURS[r["held"]] for _, r in rows], alpha=0.85)
    for y, (_, r) in zip(ys, rows, strict=True):
        ax.annotate(f" {r['ratio']:.2f}×", (r["ratio"], y), va="center", fontsize=8)
    targets = [(y, r["metrics"].get("paper_ratio", r.get("target"))) for y, (_, r) in zip(ys, rows, strict=True)]
    targets = [(y, t) for y, t in targets if t]
    ax.set_xscale("log")
    if targets:
        ax.plot([t for _, t in targets], [y for y, _ in targets], "k|", markersize=16, markeredgewidth=2.5)
    ax.axvline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlabel("measured time ratio (×, log axis): green held, red not held, grey no verdict; black tick: the "
                  "paper's figure", fontsize=8)
    ax.set_title("Claims at a glance", fontsize=10)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "plots" / "overview.png")
    return "plots/overview.png"
