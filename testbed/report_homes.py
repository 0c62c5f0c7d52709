"""Households and segments in a run's report: a table of homes, and homes.png (segment
links' utilisation, each home's upload, each probing home's RTT over time). Reads only the
results directory."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from rich.table import Table

from testbed.units import fmt_rate, fmt_size


def rows(path: Path) -> list[dict]:
    """A results CSV as dicts; none if the run did not write it."""
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def read_homes(run_dir: Path) -> dict | None:
    path = run_dir / "households.json"
    return json.loads(path.read_text()) if path.is_file() else None


def homes_table(run_dir: Path) -> Table | None:
    homes = read_homes(run_dir)
    if not homes:
        return None
    t = Table(title="households (bytes at each home's link; per client: its own count)")
    for col in ("home", "link up/down", "used up", "RTT median / p95", "client", "port", "fwd", "client up",
                "client down"):
        t.add_column(col, justify="right" if col not in ("home", "client") else "left")
    for h in homes["homes"]:
        rtt = h.get("rtt")
        first = True
        for c in h["clients"] or [{}]:
            t.add_row(
                h["name"] if first else "",
                f"{fmt_rate(h['up_bps'])}/{fmt_rate(h['down_bps'])}" if first else "",
                f"{h['utilisation_up'] * 100:.0f}%" if first else "",
                (f"{rtt['median_ms']:.0f} / {rtt['p95_ms']:.0f} ms" if rtt else "-") if first else "",
                f"{c.get('name', '-')} ({c.get('client', '')})" if c else "-",
                ",".join(map(str, c.get("tcp", []))) or ("none" if c else "-"),
                ",".join(map(str, c.get("forwarded", []))) or "-",
                fmt_size(c["client_bytes_up"]) if c.get("client_bytes_up") is not None else "-",
                fmt_size(c["client_bytes_down"]) if c.get("client_bytes_down") is not None else "-")
            first = False
    return t


def rates(counter_rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """Per-interval rate (bit/s) from one name's rows of a cumulative meter.csv column."""
    pts = [(float(r["t"]), int(r[key])) for r in counter_rows]
    xs, ys = [], []
    for (t0, b0), (t1, b1) in zip(pts, pts[1:]):
        if t1 > t0:
            xs.append(t1)
            ys.append((b1 - b0) * 8 / (t1 - t0))
    return xs, ys


def core_rates(run_dir: Path) -> dict[str, tuple[float, float]]:
    """Each core link's rate each way ('a-b' -> (a->b, b->a)), from plan.json."""
    plan = json.loads((run_dir / "plan.json").read_text())
    out = {}
    for lk in plan["links"]:
        if lk["kind"] == "core":
            out[f"{lk['node1']}-{lk['node2']}"] = (lk["egress1"]["rate_bps"], lk["egress2"]["rate_bps"])
    return out


def plot_homes(run_dir: Path, pyplot, save, out_dir: Path | None = None) -> Path | None:
    homes = read_homes(run_dir)
    meter = rows(run_dir / "meter.csv")
    if not homes or not meter:
        return None
    probes = rows(run_dir / "probes.csv")
    marks = rows(run_dir / "policy.csv")
    link_rates = core_rates(run_dir)
    segs = sorted({r["name"] for r in meter if r["scope"] == "segment"})
    plt = pyplot()
    fig, (ax_seg, ax_home, ax_rtt) = plt.subplots(3, 1, figsize=(8, 8.5), sharex=True)
    for i, seg in enumerate(segs):
        seg_rows = [r for r in meter if r["scope"] == "segment" and r["name"] == seg]
        up, down = link_rates.get(seg, (None, None))
        for key, cap, ls in (("ip_bytes_up", up, "-"), ("ip_bytes_down", down, ":")):
            xs, ys = rates(seg_rows, key)
            if cap and any(ys):
                ax_seg.plot(xs, [100 * y / cap for y in ys], color=f"C{i}", ls=ls, lw=1.1,
                            label=f"{seg} {'up' if key.endswith('up') else 'down'}")
    ax_seg.set_ylabel("link utilisation, %")
    ax_seg.set_title(f"{run_dir.name}: core / aggregation links (solid: up, dotted: down)", fontsize=9)
    for i, h in enumerate(homes["homes"]):
        home_rows = [r for r in meter if r["scope"] == "household" and r["name"] == h["name"]]
        xs, ys = rates(home_rows, "ip_bytes_up")
        ax_home.plot(xs, [y / 1e6 for y in ys], color=f"C{i % 10}", lw=1, label=h["name"])
    ax_home.set_ylabel("home upload, Mbit/s (IP)")
    for i, h in enumerate(homes["homes"]):
        pts = [(float(r["t"]), float(r["rtt_ms"])) for r in probes if r["home"] == h["name"]]
        if pts:
            ax_rtt.plot([p[0] for p in pts], [p[1] for p in pts], color=f"C{i % 10}", lw=0.8, label=h["name"])
    ax_rtt.set_ylabel("RTT to the internet server, ms")
    ax_rtt.set_xlabel("seconds since the swarm started")
    for m in marks:
        for ax in (ax_seg, ax_home):
            ax.axvline(float(m["t"]), color="red" if m["action"] == "mark" else "green", lw=0.6, ls="--")
    for ax in (ax_seg, ax_home, ax_rtt):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=3, loc="upper left")
    out = (out_dir or run_dir) / "homes.png"
    save(plt, fig, out)
    return out
