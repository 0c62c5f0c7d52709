"""The machine's own load while a swarm runs: when every core is busy, clients, bridges and
the delay element wait for CPU, and download times measure the machine, not the network.

Each sampler tick adds a host.csv row: the share of all cores busy over the interval (from
/proc/stat: everything but idle and iowait), iowait, the testbed process's own CPU over the
interval (one core = 1), and the memory still available. The summary's `host` block
condenses it and carries a warning when the machine was saturated long enough to distort the
result. Written by hand: /proc/stat is one line to read, and a library (psutil) would add a
dependency for it.
"""
from __future__ import annotations

import resource
import time

SATURATED = 0.90            # share of all cores busy at which a sample counts as saturated
WARN_SHARE = 0.10           # ... warned about when this share of the run's samples is saturated
WARN_SECONDS = 5.0          # ... and they add up to at least this long


def _cpu() -> tuple[int, int, int]:
    """(busy, total, iowait) jiffies of all cores since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle, iowait = fields[3], fields[4] if len(fields) > 4 else 0
    total = sum(fields[:8])            # guest time is already in user
    return total - idle - iowait, total, iowait


def _own() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


class HostLoad:
    def __init__(self) -> None:
        self.prev, self.prev_own, self.prev_wall = _cpu(), _own(), time.monotonic()
        self.rows: list[dict] = []

    def sample(self, t: float) -> dict:
        now, own, wall = _cpu(), _own(), time.monotonic()
        d_total = max(now[1] - self.prev[1], 1)
        row = {"t": round(t, 3), "cpu_busy": round((now[0] - self.prev[0]) / d_total, 4),
               "cpu_iowait": round((now[2] - self.prev[2]) / d_total, 4),
               "testbed_cpu": round((own - self.prev_own) / max(wall - self.prev_wall, 1e-6), 4),
               "mem_available_bytes": mem_available()}
        self.prev, self.prev_own, self.prev_wall = now, own, wall
        self.rows.append(row)
        return row


def summarize(rows: list[dict]) -> dict | None:
    """The host block of summary.json from host.csv's rows (each covering the interval since
    the one before)."""
    if len(rows) < 2:
        return None
    spans = [(b["t"] - a["t"], b) for a, b in zip(rows, rows[1:])]
    total = sum(dt for dt, _ in spans) or 1e-9
    busy = sorted(r["cpu_busy"] for _, r in spans)
    saturated = sum(dt for dt, r in spans if r["cpu_busy"] >= SATURATED)
    longest = run = 0.0
    for dt, r in spans:
        run = run + dt if r["cpu_busy"] >= SATURATED else 0.0
        longest = max(longest, run)
    out = {"cpu_busy_mean": round(sum(r["cpu_busy"] * dt for dt, r in spans) / total, 4),
           "cpu_busy_p95": busy[min(len(busy) - 1, int(0.95 * len(busy)))],
           "saturated_s": round(saturated, 1), "saturated_share": round(saturated / total, 4),
           "longest_saturated_s": round(longest, 1),
           "mem_available_min_bytes": min(r["mem_available_bytes"] for r in rows),
           "warning": None}
    if saturated >= WARN_SECONDS and saturated / total >= WARN_SHARE:
        out["warning"] = (f"the machine's CPUs were at least {SATURATED:.0%} busy for {saturated:.0f} s of the "
                          f"swarm's {total:.0f} s (the longest stretch {longest:.0f} s): clients and links waited "
                          "for CPU, so times may measure the machine rather than the network")
    return out
