"""Metrics of how a swarm behaved over time and between peers, for reproductions of
published results: who exchanged with whom (clustering), how much of its line a leecher
used, where download time goes (start-up and end game), and whether the population of
leechers grows (the missing-piece syndrome). Read from summary.json, samples.csv and
swarm.csv alone.
"""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from testbed.analysis.stats import quantile


def read_csv(path: Path) -> list[dict]:
    """A results CSV as rows of strings ([] when the run did not write it)."""
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def exchange(summary: dict) -> dict:
    """in_class_share[g] and upload_utilisation[g], per group of leechers."""
    peers = summary["peers"]
    group = {p["name"]: p["group"] for p in peers if p["role"] == "leecher"}
    share: dict[str, list[float]] = defaultdict(list)
    util: dict[str, list[float]] = defaultdict(list)
    for p in peers:
        if p["role"] != "leecher":
            continue
        # what it sent: a leecher that picked its partners at random would send each class its
        # share of the other leechers (12/39 of a 13-peer class among 40), whatever their rates
        with_leechers = [(f["remote"], f["bytes_out"]) for f in p.get("flows") or () if f["remote"] in group]
        total = sum(b for _, b in with_leechers)
        if total:
            share[p["group"]].append(sum(b for r, b in with_leechers if group[r] == p["group"]) / total)
        u = _utilisation(p)
        if u is not None:
            util[p["group"]].append(u)
    out = {f"in_class_share[{g}]": float(np.mean(v)) for g, v in share.items()}
    out.update({f"upload_utilisation[{g}]": float(np.mean(v)) for g, v in util.items()})
    return out


def _utilisation(p: dict) -> float | None:
    """Upload while downloading against what could have gone: the line's rate against the
    bytes that crossed it (the shaper counts whole frames), or the client's own cap, when it
    is the lower, against its payload count. None for a peer behind a home (its line is the
    home's, shared) or one that did not complete."""
    line, cap = p.get("up_bps"), p.get("upload_limit_bps")
    if p.get("home") or not line or not p.get("completed") or not p.get("completion_s"):
        return None
    if cap and cap < line:
        sent, rate = (p.get("bytes_up") or 0) - (p.get("bytes_up_after_completion") or 0), cap
    else:
        sent, rate = (p.get("if_bytes_up") or 0) - (p.get("if_bytes_up_after_completion") or 0), line
    return max(0.0, sent) * 8 / (rate * p["completion_s"])


def progress(run_dir: Path, summary: dict, content_bytes: int | None, piece_bytes: int | None) -> dict:
    """Start-up and end game per leecher, and the 'one club' at the last sample."""
    arrived = {p["name"]: p.get("arrived_s") for p in summary["peers"] if p["role"] == "leecher"}
    first: dict[str, float] = {}
    p95: dict[str, float] = {}
    done: dict[str, float] = {}
    last: dict[str, float] = {}
    for r in read_csv(run_dir / "samples.csv"):
        name = r["peer"]
        if name not in arrived or not r["progress"]:
            continue
        t, x = float(r["t"]), float(r["progress"])
        last[name] = x
        if x > 0 and name not in first:
            first[name] = t
        if x >= 0.95 and name not in p95:
            p95[name] = t
        if x >= 1 and name not in done:
            done[name] = t
    out: dict = {}
    starts = [first[n] - arrived[n] for n in first if arrived[n] is not None]
    if starts:
        out["first_piece_median_s"] = quantile(starts, 0.5)
    ends = [done[n] - p95[n] for n in done if n in p95]
    if ends:
        out["last_5pct_median_s"] = quantile(ends, 0.5)
    online = _online_leechers(summary)
    if online is not None and content_bytes and piece_bytes:
        one_piece = piece_bytes / content_bytes
        short = [n for n in online if n in last and 1 - last[n] <= one_piece + 1e-9]
        if online:
            out["one_piece_short_share"] = len(short) / len(online)
    return out


def _online_leechers(summary: dict) -> list[str] | None:
    """Leechers that arrived, have not completed and had not left when the run ended."""
    if not summary.get("peers"):
        return None
    return [p["name"] for p in summary["peers"] if p["role"] == "leecher" and p.get("arrived_s") is not None
            and not p.get("completed") and p.get("left_s") is None]


def population(run_dir: Path) -> dict:
    """Leechers online at the end, and their growth over the run's second half."""
    rows = [(float(r["t"]), int(r["leechers_online"])) for r in read_csv(run_dir / "swarm.csv")
            if r.get("leechers_online") not in (None, "")]
    if len(rows) < 4:
        return {}
    t = np.array([a for a, _ in rows])
    n = np.array([b for _, b in rows], dtype=float)
    half = t >= t[-1] / 2
    out = {"leechers_online_end": float(n[-1])}
    if half.sum() >= 3 and np.ptp(t[half]) > 0:
        out["leecher_growth_per_min"] = float(np.polyfit(t[half] / 60, n[half], 1)[0])
    return out
