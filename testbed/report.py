"""Reports read only the results directory (never a live run)."""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from testbed.errors import InputError
from testbed.results import read_summary
from testbed.units import fmt_size


def load(run_dir: Path) -> dict:
    if not (run_dir / "summary.json").is_file():
        raise InputError(f"{run_dir}: not a run directory (no summary.json)")
    return read_summary(run_dir)


def table(summary: dict) -> Table:
    t = Table(title=f"{summary['run_id']}  status: {summary['status']}", title_justify="left")
    for col in ("peer", "group", "client", "done", "completion", "bound", "up", "down", "sha256"):
        t.add_column(col, justify="right" if col in ("completion", "bound", "up", "down") else "left")
    for p in summary["peers"]:
        comp = f"{p['completion_s']:.1f}s" if p["completion_s"] is not None else "-"
        bound = f"{p['t_min_s']:.1f}s" if p.get("t_min_s") is not None else "-"
        up = fmt_size(p["if_bytes_up"]) if p.get("if_bytes_up") is not None else "-"
        down = fmt_size(p["if_bytes_down"]) if p.get("if_bytes_down") is not None else "-"
        t.add_row(p["name"], p["group"], p["client"], "yes" if p["completed"] else "NO", comp, bound, up, down,
                  "ok" if p["sha256_ok"] else ("MISMATCH" if p.get("file_present") else "missing"))
    return t


def headline(summary: dict) -> str:
    t_min = summary["t_min_s"]
    done = summary.get("swarm_completion_s")
    line = f"{summary['leechers_completed']}/{summary['leechers']} leechers completed"
    if done is not None:
        line += f" in {done:.1f}s; Kumar-Ross minimum {t_min:.1f}s (ratio {done / t_min:.2f})"
    else:
        line += f"; Kumar-Ross minimum {t_min:.1f}s"
    if summary.get("error"):
        line += f"; error: {summary['error']}"
    return line


def plot(run_dir: Path) -> Path | None:
    """progress.png: each leecher's progress over time, with the Kumar-Ross minimum."""
    samples = run_dir / "samples.csv"
    if not samples.is_file():
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = read_summary(run_dir)
    leechers = {p["name"] for p in summary["peers"] if p["role"] == "leecher"}
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with samples.open() as f:
        for row in csv.DictReader(f):
            if row["peer"] in leechers:
                series[row["peer"]].append((float(row["t"]), float(row["progress"]) * 100))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name in sorted(series):
        xs, ys = zip(*series[name])
        ax.plot(xs, ys, lw=1.2, label=name)
    ax.axvline(summary["t_min_s"], color="k", ls="--", lw=1, label=f"Kumar-Ross min {summary['t_min_s']:.1f}s")
    ax.set_xlabel("seconds since the swarm started")
    ax.set_ylabel("verified data, %")
    ax.set_ylim(0, 101)
    ax.set_title(f"{summary['experiment']}: {summary['status']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    out = run_dir / "progress.png"
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def render(run_dir: Path, console: Console) -> dict:
    summary = load(run_dir)
    console.print(table(summary))
    console.print(headline(summary))
    return summary
