"""Reports read only the results directory (never a live run)."""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from testbed import report_homes
from testbed.units import fmt_size, parse_size


def load(run_dir: Path) -> dict:
    """summary.json, or for a run that never wrote one, what its events and samples hold."""
    from testbed.analysis.partial import summary_of
    return summary_of(run_dir)


def table(summary: dict) -> Table:
    t = Table(title=f"{summary['run_id']}  status: {summary['status']}", title_justify="left")
    churn = not summary.get("flash_crowd", True)
    split = bool(summary.get("workers"))          # a swarm spread over workers: which one ran each
    cols = ["peer", *(("worker",) if split else ()), "group", "client", *(("profile", "arrived", "left") if churn else ()),
            "done", "completion", "bound", "up", "down", "sha256"]
    for col in cols:
        t.add_column(col, justify="right" if col in ("arrived", "completion", "bound", "up", "down") else "left")

    def secs(v) -> str:
        return f"{v:.1f}s" if v is not None else "-"
    for p in summary["peers"]:
        up = fmt_size(p["if_bytes_up"]) if p.get("if_bytes_up") is not None else "-"
        down = fmt_size(p["if_bytes_down"]) if p.get("if_bytes_down") is not None else "-"
        left = f"{p['left_s']:.0f}s {p['left_reason']}" if p.get("left_s") is not None else "-"
        extra = (p.get("profile") or "-", secs(p.get("arrived_s")), left) if churn else ()
        t.add_row(p["name"], *((p.get("worker") or "-",) if split else ()), p["group"], p["client"], *extra,
                  "yes" if p["completed"] else "NO",
                  secs(p["completion_s"]), secs(p.get("t_min_s")), up, down,
                  "-" if p["sha256_ok"] is None else "ok" if p["sha256_ok"] else "missing" if not p.get("file_present") else
                  "MISMATCH" if p["completed_at_s"] is not None or p["role"] == "seeder" else "partial")
    return t


def headline(summary: dict) -> str:
    t_min = summary["t_min_s"]
    done = summary.get("swarm_completion_s")
    line = f"{summary['leechers_completed']}/{summary['leechers']} leechers completed"
    if summary.get("leechers_arrived", summary["leechers"]) != summary["leechers"]:
        line += f" ({summary['leechers_arrived']} arrived)"
    if t_min is None:
        line += f" in {done:.1f}s" if done is not None else ""
        line += ("; no Kumar-Ross bound: it is for peers with links of their own, and homes share theirs"
                 if summary.get("homes") else "; no Kumar-Ross bound: it is for a flash crowd")
        if summary.get("ended_by"):
            line += f"; ended by {summary['ended_by']}"
    elif done is not None:
        line += f" in {done:.1f}s; Kumar-Ross minimum {t_min:.1f}s (ratio {done / t_min:.2f})"
    else:
        line += f"; Kumar-Ross minimum {t_min:.1f}s"
    if summary.get("error"):
        line += f"; error: {summary['error']}"
    return line


def element_note(summary: dict) -> str | None:
    """A line when the delay element's kernel queue overflowed: packets lost beyond the
    configured loss, so the run asked more of the machine than it emulates faithfully."""
    stats = summary.get("delay_element") or {}
    lost = {host: s["overflow"] for host, s in stats.items() if s.get("overflow")}
    if not lost:
        return None
    where = ", ".join(f"{host} {n}" for host, n in sorted(lost.items()))
    return (f"delay element: the kernel dropped {sum(lost.values())} packets for a full queue ({where}), "
            f"beyond the configured loss; see delayer-stats.json and benchmarks/delayer.py")


def _pyplot():
    """matplotlib's pyplot, drawing to files only (no display on a CI machine)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, out: Path) -> None:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot(run_dir: Path, out_dir: Path | None = None) -> Path | None:
    """progress.png: each leecher's progress over time, with the Kumar-Ross minimum; under
    churn, a second panel with the peers online and the seeds among them (swarm.csv)."""
    samples = run_dir / "samples.csv"
    if not samples.is_file():
        return None
    plt = _pyplot()

    summary = load(run_dir)
    leechers = {p["name"] for p in summary["peers"] if p["role"] == "leecher"}
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with samples.open() as f:
        for row in csv.DictReader(f):
            if row["peer"] in leechers:
                series[row["peer"]].append((float(row["t"]), float(row["progress"]) * 100))
    population = read_population(run_dir) if not summary.get("flash_crowd", True) else None
    if population:
        fig, (ax, pax) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, height_ratios=[3, 1.4])
        ts = [r["t"] for r in population]
        pax.plot(ts, [r["online"] for r in population], lw=1.4, label="online")
        pax.plot(ts, [r["seeds_online"] for r in population], lw=1.4, label="seeds online")
        pax.step(ts, [r["paused"] + r["crashed"] for r in population], lw=1, where="post", label="paused or crashed")
        pax.set_ylabel("peers")
        pax.grid(alpha=0.3)
        pax.legend(fontsize=7, loc="upper left")
    else:
        fig, ax = plt.subplots(figsize=(8, 4.5))
    legend = len(series) <= 24
    for name in sorted(series):
        xs, ys = zip(*with_gaps(series[name]))
        ax.plot(xs, ys, lw=1.2, label=name if legend else None)
    if summary.get("t_min_s") is not None:
        ax.axvline(summary["t_min_s"], color="k", ls="--", lw=1, label=f"Kumar-Ross min {summary['t_min_s']:.1f}s")
    (pax if population else ax).set_xlabel("seconds since the swarm started")
    ax.set_ylabel("verified data, %")
    ax.set_ylim(0, 101)
    ax.set_title(f"{summary['experiment']}: {summary['status']}")
    ax.grid(alpha=0.3)
    if legend or summary.get("t_min_s") is not None:
        ax.legend(fontsize=7, ncol=2, loc="lower right")
    out = (out_dir or run_dir) / "progress.png"
    _save(plt, fig, out)
    return out


def with_gaps(points: list[tuple[float, float]], gap: float = 2.5) -> list[tuple[float, float]]:
    """The points with a break wherever no sample was taken for `gap` seconds (a crashed or
    paused peer's client does not answer), so that no line is drawn across the silence."""
    out: list[tuple[float, float]] = []
    for t, y in points:
        if out and t - out[-1][0] > gap:
            out.append((out[-1][0], float("nan")))
        out.append((t, y))
    return out


def read_population(run_dir: Path) -> list[dict] | None:
    path = run_dir / "swarm.csv"
    if not path.is_file():
        return None
    # an empty value is not known (copies: before any piece map came, or a split run's)
    with path.open() as f:
        return [{k: float(v) if v not in (None, "") else float("nan") for k, v in row.items()}
                for row in csv.DictReader(f)] or None


def bills(summary: dict) -> Table | None:
    """Each metered peer's usage and bill, and the part its uploading caused."""
    metered = [p for p in summary["peers"] if p.get("bill")]
    if not metered:
        return None
    t = Table(title="data plans: what each metered peer pays", title_justify="left")
    for col in ("peer", "profile", "uploaded", "downloaded", "counted", "cap reached", "bill", "by run",
                "by upload"):
        t.add_column(col, justify="left" if col in ("peer", "profile") else "right")
    for p in metered:
        b = p["bill"]
        cap = f"{p['cap_reached_s']:.1f}s" if p.get("cap_reached_s") is not None else "-"
        mb = lambda n: f"{n / 1e6:,.1f} MB"    # noqa: E731 - carriers count decimal units
        t.add_row(p["name"], (p.get("access") or {}).get("profile") or "-", mb(b["run_bytes_up"]),
                  mb(b["run_bytes_down"]), mb(b["counted_bytes"]), cap, f"{b['total']:.2f} {b['currency']}",
                  f"{b['caused_by_run']:.2f}", f"{b['caused_by_upload']:.2f}")
    return t


def _throughput(meter: list[dict], name: str, key: str) -> tuple[list[float], list[float]]:
    """Per-interval rate (bit/s) of a peer from a cumulative meter.csv column."""
    return report_homes.rates([r for r in meter if r["scope"] == "peer" and r["name"] == name], key)


def _steps(links: list[dict], host: str, direction: str, t_end: float) -> tuple[list[float], list[float]]:
    pts = [(float(r["t"]), float(r["rate_bps"])) for r in links if r["host"] == host and r["direction"] == direction]
    xs, ys = [], []
    for (t, rate), nxt in zip(pts, [*pts[1:], (t_end, None)]):
        xs += [t, nxt[0]]
        ys += [rate, rate]
    return xs, ys


def plot_links(run_dir: Path, out_dir: Path | None = None) -> Path | None:
    """links.png: for each access direction whose rate changed during the run (a trace, a
    throttle, a cut), the rate it was set to against the throughput measured on it."""
    links, meter = report_homes.rows(run_dir / "links.csv"), report_homes.rows(run_dir / "meter.csv")
    changed = sorted({(r["host"], r["direction"]) for r in links if r["cause"] != "static" and float(r["t"]) > 0}
                     | {(r["host"], r["direction"]) for r in links if r["cause"] == "trace"})
    if not changed or not meter:
        return None
    plt = _pyplot()
    t_end = max(float(r["t"]) for r in meter)
    fig, axes = plt.subplots(len(changed), 1, figsize=(8, 2.6 * len(changed)), sharex=True, squeeze=False)
    for ax, (host, direction) in zip(axes[:, 0], changed):
        sx, sy = _steps(links, host, direction, t_end)
        ax.plot(sx, [y / 1e6 for y in sy], color="k", lw=1.2, label="link rate set (trace / plan)")
        mx, my = _throughput(meter, host, f"ip_bytes_{direction}")
        ax.plot(mx, [y / 1e6 for y in my], color="tab:blue", lw=1, marker=".", ms=3, label="measured (IP, per second)")
        ax.set_ylabel("Mbit/s")
        ax.set_title(f"{host} {direction}load", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("seconds since the swarm started")
    out = (out_dir or run_dir) / "links.png"
    _save(plt, fig, out)
    return out


def plot_usage(run_dir: Path, out_dir: Path | None = None) -> Path | None:
    """usage.png: each metered peer's counted usage against its cap, and its upload rate."""
    summary = load(run_dir)
    metered = [p for p in summary["peers"] if p.get("bill")]
    meter = report_homes.rows(run_dir / "meter.csv")
    if not metered or not meter:
        return None
    plt = _pyplot()
    plans = {g["name"]: (g.get("access") or {}).get("plan") for g in _groups(run_dir)}
    fig, (ax_use, ax_up) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    for i, p in enumerate(metered):
        color = f"C{i % 10}"
        plan = plans.get(p["group"]) or {}
        counts = plan.get("counts", "both")
        rows = [r for r in meter if r["scope"] == "peer" and r["name"] == p["name"]]
        xs = [float(r["t"]) for r in rows]
        used = [int(r["ip_bytes_up"]) * (counts != "down") + int(r["ip_bytes_down"]) * (counts != "up") for r in rows]
        ax_use.plot(xs, [u / 1e6 for u in used], color=color, lw=1.2, label=p["name"])
        if plan.get("cap"):
            # what was left of the allowance when the run started
            left = parse_size(plan["cap"]) - parse_size(plan.get("used") or "0B")
            ax_use.axhline(left / 1e6, color=color, ls="--", lw=0.8)
        ux, uy = _throughput(meter, p["name"], "ip_bytes_up")
        ax_up.plot(ux, [y / 1e6 for y in uy], color=color, lw=1, label=p["name"])
        if p.get("cap_reached_s") is not None:
            for ax in (ax_use, ax_up):
                ax.axvline(p["cap_reached_s"], color=color, ls=":", lw=1)
    ax_use.set_ylabel("counted in the run, MB")
    ax_use.set_title(f"{summary['experiment']}: data plan usage (dashed: allowance left at the start; "
                     f"dotted: cap reached)", fontsize=9)
    ax_up.set_ylabel("upload, Mbit/s (IP)")
    ax_up.set_xlabel("seconds since the swarm started")
    for ax in (ax_use, ax_up):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="upper left")
    out = (out_dir or run_dir) / "usage.png"
    _save(plt, fig, out)
    return out


def _groups(run_dir: Path) -> list[dict]:
    import yaml
    exp = yaml.safe_load((run_dir / "experiment.yaml").read_text())
    return [*exp.get("seeders", []), *exp.get("peers", [])]


def plots(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Every plot the run's results support, written into out_dir (default: the run directory)."""
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    return [p for p in (plot(run_dir, out_dir), plot_links(run_dir, out_dir), plot_usage(run_dir, out_dir),
                        report_homes.plot_homes(run_dir, _pyplot, _save, out_dir)) if p]


def render(run_dir: Path, console: Console) -> dict:
    summary = load(run_dir)
    console.print(table(summary))
    b = bills(summary)
    if b is not None:
        console.print(b)
    homes = report_homes.homes_table(run_dir)
    if homes is not None:
        console.print(homes)
    console.print(headline(summary))
    for note in (element_note(summary), (summary.get("host") or {}).get("warning")):
        if note:
            console.print(f"[yellow]warning: {note}", markup=True, highlight=False)
    return summary
