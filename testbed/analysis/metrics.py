"""One run's metrics, read from its results directory alone (summary.json, swarm.csv,
meter.csv, plan.json, households.json); nothing here knows how the run was made.

Each metric is one number per run; `METRICS` says its name, unit and meaning. Metrics of a
group are named `name[group]`. Completion times are counted from each peer's own arrival,
at the sampler's resolution (one sample a second: a completion is seen on the first sample
at which the client reports every piece, so each time is late by less than that interval).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from testbed.analysis import dynamics
from testbed.analysis.names import HEADLINE, METRICS, RESOLUTION_S, stem, unit  # noqa: F401
from testbed.analysis.stats import quantile


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
        "completion_mean_s": sum(times) / len(times) if times else None,
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
            m[f"completion_mean_s[{g}]"] = sum(done) / len(done)
        came = [p for p in members if p["role"] == "leecher" and p.get("arrived_s") is not None]
        if came:
            m[f"completed_fraction[{g}]"] = sum(1 for p in came if p["completed"]) / len(came)
        m[f"bytes_up[{g}]"] = float(sum(_payload(p, "up") for p in members))
        m[f"bytes_down[{g}]"] = float(sum(_payload(p, "down") for p in members))
        ratios = [_payload(p, "up") / _payload(p, "down") for p in members if _payload(p, "down")]
        if ratios:
            m[f"share_ratio[{g}]"] = sum(ratios) / len(ratios)
        bills = [p["bill"]["total"] for p in members if p.get("bill")]
        if bills:
            m[f"bill[{g}]"] = float(sum(bills))
    m.update(dynamics.exchange(summary))
    plan = _plan(run_dir)
    m.update(dynamics.progress(run_dir, summary, plan.get("content_bytes"), plan.get("piece_bytes")))
    m.update(dynamics.population(run_dir))
    m.update(_homes(run_dir))
    m.update(_segments(run_dir))
    cpu = summary.get("testbed_cpu") or {}
    if cpu.get("share_of_core") is not None:
        m["testbed_cpu_share"] = cpu["share_of_core"]
    host = summary.get("host") or {}
    for key in ("cpu_busy_mean", "saturated_share"):
        if host.get(key) is not None:
            m[f"host_{key}"] = host[key]
    return {"run_id": summary.get("run_id", run_dir.name), "experiment": summary.get("experiment"),
            "repetition": summary.get("repetition"), "status": summary.get("status"),
            "partial": summary.get("partial", True), "resolution_s": RESOLUTION_S,
            "completion_times_s": times, "metrics": m,
            "groups": {g: [p["name"] for p in members] for g, members in groups.items()}}


def _plan(run_dir: Path) -> dict:
    path = run_dir / "plan.json"
    return json.loads(path.read_text()) if path.is_file() else {}


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
    for r in dynamics.read_csv(run_dir / "meter.csv"):
        if r["scope"] == "segment" and r["name"] in rates:
            last[r["name"]] = r
    out = {}
    for name, r in last.items():
        t, rate = float(r["t"]), rates[name]
        if t > 0 and rate:
            out[f"segment_utilisation_up[{name.split('-')[0]}]"] = int(r["ip_bytes_up"]) * 8 / t / rate
    return out
