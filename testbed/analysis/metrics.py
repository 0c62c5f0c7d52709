"""One run's metrics, read from its results directory alone (summary.json, swarm.csv,
meter.csv, plan.json, households.json); nothing here knows how the run was made.

Each metric is one number per run; `METRICS` says its name, unit and meaning. Metrics of a
group are named `name[group]`. Completion times are counted from each peer's own arrival,
at the sampler's resolution (one sample a second: a completion is seen on the first sample
at which the client reports every piece, so each time is late by less than that interval).
"""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from testbed.analysis.stats import quantile

RESOLUTION_S = 1.0

# name -> (unit, meaning); group metrics are listed by their stem
METRICS: dict[str, tuple[str, str]] = {
    "completion_median_s": ("s", "median download time of the leechers that completed, from each one's arrival"),
    "completion_p95_s": ("s", "95th percentile of those download times"),
    "completed_fraction": ("ratio", "leechers that completed (SHA-256 checked) / leechers that arrived"),
    "swarm_completion_s": ("s", "from the swarm's start to the last completion, when every arrived leecher completed"),
    "full_copy_lost": ("ratio", "1 if the peers online ever held no full copy after holding one, else 0"),
    "last_full_copy_lost_s": ("s", "when the swarm lost its last full copy (runs where it did)"),
    "origin_offload": ("ratio", "share of the bytes the leechers received that the origin seeders did not send"),
    "kumar_ross_efficiency": ("ratio", "Kumar-Ross minimum / swarm completion time (flash crowds on own links)"),
    "bytes_up": ("bytes", "payload uploaded by a group's peers (their clients' counts)"),
    "bytes_down": ("bytes", "payload downloaded by a group's peers (their clients' counts)"),
    "share_ratio": ("ratio", "mean over a group's peers of bytes uploaded / bytes downloaded"),
    "bill": ("money", "sum of a group's peers' bills under their data plans"),
    "home_utilisation_up": ("ratio", "a home's access link, upstream bytes / capacity x time (no [home]: the mean "
                                     "over homes)"),
    "segment_utilisation_up": ("ratio", "an ISP segment's aggregation link, upstream bytes / capacity x time"),
    "segment_p2p_share_up": ("ratio", "share of a segment's upstream IP bytes that were P2P"),
    "rtt_p95_ms": ("ms", "95th percentile of a home router's pings to the internet server (RTT under load)"),
    "testbed_cpu_share": ("ratio", "the testbed process's own CPU time / wall time (one core = 1)"),
}
# The metrics a study's first table shows, in this order (others go to metrics.json and the
# full table).
HEADLINE = ["completion_median_s", "completion_p95_s", "completed_fraction", "origin_offload",
            "full_copy_lost", "kumar_ross_efficiency"]


def stem(name: str) -> str:
    return name.split("[", 1)[0]


def unit(name: str) -> str:
    return METRICS.get(stem(name), ("", ""))[0]


def _csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def run_metrics(run_dir: Path) -> dict:
    """{'run_id', 'status', 'metrics': {name: value|None}, 'completion_times_s': [...], ...}"""
    from testbed.analysis.partial import summary_of
    summary = summary_of(run_dir)
    peers = summary["peers"]
    leechers = [p for p in peers if p["role"] == "leecher"]
    arrived = [p for p in leechers if p.get("arrived_s") is not None]
    times = sorted(p["completion_s"] for p in leechers if p.get("completed") and p.get("completion_s") is not None)
    m: dict[str, float | None] = {
        "completion_median_s": quantile(times, 0.5),
        "completion_p95_s": quantile(times, 0.95),
        "completed_fraction": (sum(1 for p in arrived if p["completed"]) / len(arrived)) if arrived else None,
        "swarm_completion_s": summary.get("swarm_completion_s"),
    }
    avail = summary.get("availability") or {}
    if avail:
        lost = avail.get("last_full_copy_lost_s")
        m["full_copy_lost"] = 0.0 if lost is None else 1.0
        m["last_full_copy_lost_s"] = lost
    received = sum(_payload(p, "down") for p in leechers)
    origin = sum(_payload(p, "up") for p in peers if p["role"] == "seeder")
    m["origin_offload"] = max(0.0, 1 - origin / received) if received else None
    if summary.get("t_min_s") and summary.get("swarm_completion_s"):
        m["kumar_ross_efficiency"] = summary["t_min_s"] / summary["swarm_completion_s"]
    groups: dict[str, list[dict]] = defaultdict(list)
    for p in peers:
        groups[p["group"]].append(p)
    for g, members in groups.items():
        done = [p["completion_s"] for p in members if p["role"] == "leecher" and p.get("completed")
                and p.get("completion_s") is not None]
        if done:
            m[f"completion_median_s[{g}]"] = quantile(done, 0.5)
        m[f"bytes_up[{g}]"] = float(sum(_payload(p, "up") for p in members))
        m[f"bytes_down[{g}]"] = float(sum(_payload(p, "down") for p in members))
        ratios = [_payload(p, "up") / _payload(p, "down") for p in members if _payload(p, "down")]
        if ratios:
            m[f"share_ratio[{g}]"] = sum(ratios) / len(ratios)
        bills = [p["bill"]["total"] for p in members if p.get("bill")]
        if bills:
            m[f"bill[{g}]"] = float(sum(bills))
    m.update(_homes(run_dir))
    m.update(_segments(run_dir))
    cpu = summary.get("testbed_cpu") or {}
    if cpu.get("share_of_core") is not None:
        m["testbed_cpu_share"] = cpu["share_of_core"]
    return {"run_id": summary.get("run_id", run_dir.name), "experiment": summary.get("experiment"),
            "repetition": summary.get("repetition"), "status": summary.get("status"),
            "partial": summary.get("partial", True), "resolution_s": RESOLUTION_S,
            "completion_times_s": times, "metrics": m,
            "groups": {g: [p["name"] for p in members] for g, members in groups.items()}}


def _payload(p: dict, d: str) -> int:
    """A peer's payload bytes in one direction: its client's count, or its interface's when the
    client never answered."""
    v = p.get(f"bytes_{d}")
    return int(v if v is not None else p.get(f"if_bytes_{d}") or 0)


def _homes(run_dir: Path) -> dict:
    path = run_dir / "households.json"
    if not path.is_file():
        return {}
    homes = json.loads(path.read_text()).get("homes", [])
    ups = [h["utilisation_up"] for h in homes if h.get("utilisation_up") is not None]
    out: dict = {"home_utilisation_up": sum(ups) / len(ups)} if ups else {}
    out.update({f"home_utilisation_up[{h['name']}]": h["utilisation_up"] for h in homes
                if h.get("utilisation_up") is not None})
    out.update({f"rtt_p95_ms[{h['name']}]": h["rtt"]["p95_ms"] for h in homes if h.get("rtt")})
    by: dict[str, list[float]] = defaultdict(list)
    for h in homes:
        if h.get("bill"):
            by[h["household"]].append(h["bill"]["total"])
    out.update({f"bill[{g}]": float(sum(v)) for g, v in by.items()})
    segs = json.loads(path.read_text()).get("segments", [])
    out.update({f"segment_p2p_share_up[{s['segment']}]": s["p2p_share_up"] for s in segs
                if s.get("p2p_share_up") is not None})
    return out


def _segments(run_dir: Path) -> dict:
    """Upstream utilisation of each ISP segment's aggregation link, from meter.csv's counters
    over the run and the link's rate in plan.json."""
    plan_path = run_dir / "plan.json"
    if not plan_path.is_file():
        return {}
    plan = json.loads(plan_path.read_text())
    sites = set(plan.get("segment_sites") or ())
    rates = {f"{lk['node1']}-{lk['node2']}": (lk.get("egress1") or {}).get("rate_bps")
             for lk in plan.get("links", []) if lk["kind"] == "core" and lk["node1"] in sites}
    last: dict[str, dict] = {}
    for r in _csv(run_dir / "meter.csv"):
        if r["scope"] == "segment" and r["name"] in rates:
            last[r["name"]] = r
    out = {}
    for name, r in last.items():
        t, rate = float(r["t"]), rates[name]
        if t > 0 and rate:
            out[f"segment_utilisation_up[{name.split('-')[0]}]"] = int(r["ip_bytes_up"]) * 8 / t / rate
    return out
