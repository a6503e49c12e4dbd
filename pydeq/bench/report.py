"""Write a run's ``results.json`` (atomically), ``report.md`` and the printed summary table.

Everything here reads the JSON record (see :mod:`pydeq.bench.schema`), so a report can be rebuilt from a
saved ``results.json`` alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydeq.bench.plots import plot_overview

__all__ = ["render_markdown", "summary_table", "write_json", "write_report"]

_QUICK_BUDGET_S = 300
_BADGES = {"held": "✅ held", "not_held": "❌ not held", "partial": "◐ partly held", "inconclusive": "– no verdict",
           "skipped": "⏭ skipped", "error": "💥 error", "interrupted": "⏹ interrupted"}


def write_json(results: dict[str, Any], out_dir: Path) -> Path:
    """Write ``results.json`` via a temporary file and a rename, so a reader never sees half a file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path, tmp = out_dir / "results.json", out_dir / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def _held(row: dict[str, Any]) -> str:
    return {True: "✅ held", False: "❌ not held", None: "–"}[row["held"]]


def _comparison(row: dict[str, Any]) -> str:
    return f"{row['method']} vs {row['peer']}" if row["peer"] else row["method"]


def _claim_section(c: dict[str, Any]) -> list[str]:
    out = [f"### {c['title']} (`{c['name']}`): {_BADGES[c['status']]}", ""]
    if c["paper"]:
        out += [f"*Paper:* {c['paper']}", ""]
    if c["summary"]:
        out += [c["summary"], ""]
    if c["rows"]:
        out += _table(["Comparison", "Quantity", "Paper's figure", "Measured (median; min)", "Held", "Why"],
                      [[_comparison(r), r["quantity"], r["paper_figure"], r["measured_figure"], _held(r), r["why"]]
                       for r in c["rows"]]) + [""]
        raw = [[_comparison(r), k, v] for r in c["rows"] for k, v in r["metrics"].items()]
        if raw:
            out += ["<details><summary>Raw numbers</summary>", ""]
            out += _table(["Comparison", "Metric", "Value"], raw) + ["", "</details>", ""]
    if c["setup"]:
        out += ["*Setup:* " + ", ".join(f"{k} = `{json.dumps(v)}`" for k, v in c["setup"].items()), ""]
    if c["notes"]:
        out += [c["notes"], ""]
    out += [f"![{p}]({p})" for p in c["plots"]] + ([""] if c["plots"] else [])
    if c["error"]:
        out += ["```", c["error"].rstrip(), "```", ""]
    out += [f"*Ran in {c['elapsed_s']:.1f} s.*", ""]
    return out


def render_markdown(results: dict[str, Any], overview: str | None = None) -> str:
    """The report as Markdown: status, headline table, machine, then one section per claim."""
    cfg, m, claims = results["config"], results["machine"], results["claims"]
    out = [f"# pydeq bench: {results['suite']} suite", ""]
    if results["status"] == "interrupted":
        done = sum(c["status"] != "interrupted" for c in claims)
        out += [f"> **Interrupted.** The results below cover the {done} claim(s) that finished; the run stopped "
                "during the claim marked interrupted, and claims after it did not run.", ""]
    elif results["status"] == "running":
        out += ["> **Running.** This report is rewritten after every claim.", ""]
    commit = (m["git_commit"] or "unknown")[:12] + (" (uncommitted changes)" if m["git_dirty"] else "")
    out += [f"Started {results['started_at']}, {results['elapsed_s']:.0f} s; seed {cfg['seed']}, device "
            f"`{cfg['device']}`, backend `{cfg['backend']}`, {cfg['repeats']} timing repeats; commit {commit}.",
            "", "Timings are ratios measured side by side in this run (median of the repeats; the minimum beside "
            "it). A claim *holds* when the measured ratio reaches the paper's figure.", ""]
    if results["suite"] == "quick" and results["elapsed_s"] > _QUICK_BUDGET_S:
        out += [f"> **Over budget:** the quick suite should finish in {_QUICK_BUDGET_S // 60} minutes on a 2-core "
                f"CPU; this run took {results['elapsed_s'] / 60:.1f} (machine busy, or a claim needs trimming).", ""]
    if overview:
        out += [f"![Claims at a glance]({overview})", ""]
    if claims:
        out += ["## Summary", ""]
        out += _table(["Claim", "Comparison", "Quantity", "Paper's figure", "Measured", "Held"],
                      [[c["name"], _comparison(r), r["quantity"], r["paper_figure"], r["measured_figure"], _held(r)]
                       for c in claims for r in c["rows"]]
                      + [[c["name"], "", "", "", "", _BADGES[c["status"]]] for c in claims if not c["rows"]]) + [""]
    else:
        out += ["No claims ran.", ""]
    out += ["## Machine", ""]
    out += _table(["", ""], [[k.replace("_", " "), v] for k, v in m.items()]) + [""]
    out += ["## Claims", ""]
    for c in claims:
        out += _claim_section(c)
    return "\n".join(out).rstrip() + "\n"


def write_report(results: dict[str, Any], out_dir: Path) -> Path:
    """Write ``results.json``, the overview plot and ``report.md`` into ``out_dir``."""
    write_json(results, out_dir)
    overview = plot_overview(results["claims"], out_dir)
    path = out_dir / "report.md"
    path.write_text(render_markdown(results, overview))
    return path


def summary_table(results: dict[str, Any]) -> str:
    """A plain-text table of every row (claim, comparison, paper, measured, held) for the terminal."""
    lines = [["claim", "comparison", "quantity", "paper", "measured", "held"]]
    for c in results["claims"]:
        for r in c["rows"]:
            lines.append([c["name"], _comparison(r), r["quantity"][:40], r["paper_figure"], r["measured_figure"],
                          {True: "held", False: "NOT held", None: "-"}[r["held"]]])
        if not c["rows"]:
            lines.append([c["name"], "", "", "", "", c["status"].replace("_", " ")])
    widths = [max(len(row[i]) for row in lines) for i in range(6)]
    text = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    counts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in results["counts"].items() if n)
    return "\n".join(text + [f"{results['status']}: {counts or 'no claims'}"])
