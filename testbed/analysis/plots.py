"""The plots of a study report, each returned as PNG bytes (embedded in the HTML page)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from testbed.analysis import stats
from testbed.analysis.compare import Side, aggregate, difference
from testbed.analysis.metrics import HEADLINE, METRICS, unit
from testbed.analysis.partial import summary_of


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(plt, fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def completion_cdfs(sides: list[Side]) -> bytes:
    """Each arm's download times, pooled over its repetitions."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for i, s in enumerate(sides):
        xs, ys = stats.ecdf([t for m in s.runs.values() for t in m["completion_times_s"]])
        if xs:
            ax.step([0, *xs], [0, *ys], where="post", lw=1.6, color=f"C{i}",
                    label=f"{s.label} ({len(s.runs)} runs, {len(xs)} downloads)")
    ax.set_xlabel("download time from arrival, s")
    ax.set_ylabel("fraction of completed downloads")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Completion time CDF per arm (pooled over repetitions)", fontsize=10)
    return _png(plt, fig)


def progress_population(sides: list[Side], run_dirs: dict[str, list[Path]]) -> bytes:
    """Leechers completed and peers online over time, each repetition a thin line."""
    plt = _pyplot()
    fig, (ax, pax) = plt.subplots(2, 1, figsize=(7.5, 5.5), sharex=True)
    for i, s in enumerate(sides):
        for j, d in enumerate(run_dirs.get(s.label, [])):
            summary = summary_of(d)
            done = sorted(p["completed_at_s"] for p in summary["peers"]
                          if p["role"] == "leecher" and p.get("completed_at_s") is not None)
            n = max(1, summary.get("leechers", 1))
            label = s.label if j == 0 else None
            if done:
                ax.step([0, *done], [0, *[(k + 1) / n for k in range(len(done))]], where="post", lw=1,
                        color=f"C{i}", alpha=0.7, label=label)
            pop = _population(d)
            if pop:
                pax.plot(*zip(*pop), lw=0.9, color=f"C{i}", alpha=0.7, label=label)
    ax.set_ylabel("leechers completed")
    ax.set_ylim(0, 1.02)
    pax.set_ylabel("peers online")
    pax.set_xlabel("seconds since the swarm started")
    for a in (ax, pax):
        a.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Swarm progress and population over time (one line per repetition)", fontsize=10)
    return _png(plt, fig)


def _population(run_dir: Path) -> list[tuple[float, float]]:
    path = run_dir / "swarm.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [(float(r["t"]), float(r["online"])) for r in csv.DictReader(f)]


def differences(base: Side, variants: list[Side]) -> bytes | None:
    """The headline metrics' paired differences from the baseline, with their intervals."""
    plt = _pyplot()
    names = [m for m in HEADLINE if any(aggregate(v, m).n for v in variants)]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 0.5 + 0.45 * len(variants) + 1.2),
                             squeeze=False)
    for ax, name in zip(axes[0], names):
        for k, v in enumerate(variants):
            d = difference(base, v, name)
            if d.estimate is None:
                continue
            lo = d.low if d.low is not None else d.estimate
            hi = d.high if d.high is not None else d.estimate
            ax.errorbar([d.estimate], [k], xerr=[[d.estimate - lo], [hi - d.estimate]], fmt="o", color=f"C{k + 1}",
                        capsize=3)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(variants)), [v.label.split(":")[-1] for v in variants], fontsize=8)
        ax.set_ylim(-0.7, len(variants) - 0.3)
        ax.set_title(f"{name} ({unit(name)})", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle("variant - baseline, 95 % interval", fontsize=9)
    return _png(plt, fig)


def _bars(sides: list[Side], names: list[str], labels: list[str], scale: float, height: float):
    """One bar per (metric, arm): the mean over repetitions with its 95 % interval."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, height))
    width = 0.8 / len(sides)
    for i, s in enumerate(sides):
        for k, name in enumerate(names):
            iv = aggregate(s, name)
            if iv.estimate is None:
                continue
            err = None if iv.low is None else [[(iv.estimate - iv.low) * scale], [(iv.high - iv.estimate) * scale]]
            ax.bar(k + i * width, iv.estimate * scale, width, yerr=err, capsize=2, color=f"C{i}",
                   label=s.label if k == 0 else None)
    ax.set_xticks([k + width * (len(sides) - 1) / 2 for k in range(len(names))], labels, fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return plt, fig, ax


def grouped_bars(sides: list[Side], stem_name: str, scale: float = 1.0, ylabel: str = "") -> bytes | None:
    """A metric of each group (bytes up, bills, ...) per arm: mean over repetitions, 95 % bars."""
    groups = sorted({k[len(stem_name) + 1:-1] for s in sides for k in s.metric_names() if k.startswith(f"{stem_name}[")})
    if not groups:
        return None
    plt, fig, ax = _bars(sides, [f"{stem_name}[{g}]" for g in groups], groups, scale, 3.6)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{stem_name} by group: {METRICS[stem_name][1]}", fontsize=9)
    return _png(plt, fig)


def utilisation(sides: list[Side]) -> bytes | None:
    """Household and segment link utilisation per arm."""
    names = sorted({k for s in sides for k in s.metric_names()
                    if k.startswith(("home_utilisation", "segment_utilisation", "segment_p2p_share"))})
    if not names:
        return None
    plt, fig, ax = _bars(sides, names, names, 1.0, 3.4)
    ax.tick_params(axis="x", labelrotation=15, labelsize=7)
    ax.set_ylabel("share of capacity / of bytes")
    ax.set_ylim(0, 1.05)
    ax.set_title("Link utilisation (upstream) per arm", fontsize=9)
    return _png(plt, fig)
