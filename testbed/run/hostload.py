"""The machine's own load while a swarm runs: when every core is busy, clients, bridges and
the delay element wait for CPU, and download times measure the machine, not the network.

Each sampler tick adds a host.csv row: the share of all cores busy over the interval (from
/proc/stat: everything but idle and iowait), iowait, the kernel's packet processing
(softirq), the testbed process's own CPU and the run's containers' CPU over the interval
(one core = 1), and the memory still available. When the machine was saturated, the last two
and softirq say who took it: on this 2-core machine a 16x libtorrent swarm's clients took
1.4 of the 2 cores (uTP: a system call per packet; 0.7 with uTP off) while the testbed took
0.014. The summary's `host` block
condenses it and carries a warning when the machine was saturated long enough to distort the
result. Written by hand: /proc/stat is one line to read, and a library (psutil) would add a
dependency for it.
"""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path

from testbed import cgroups

SATURATED = 0.90            # share of all cores busy at which a sample counts as saturated
WARN_SHARE = 0.10           # ... warned about when this share of the run's samples is saturated
WARN_SECONDS = 5.0          # ... and they add up to at least this long


def _cpu() -> tuple[int, int, int, int]:
    """(busy, total, iowait, softirq) jiffies of all cores since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle, iowait = fields[3], fields[4] if len(fields) > 4 else 0
    softirq = fields[6] if len(fields) > 6 else 0
    total = sum(fields[:8])            # guest time is already in user
    return total - idle - iowait, total, iowait, softirq


def containers_cpu(pids: list[int]):
    """A reader of the CPU seconds used by the containers of these init processes: with
    cgroup v1 and Docker's cgroupfs driver their common parent's counter (one file; it keeps
    the charge of containers already removed), else the sum of each one's own counter.
    None when no cgroup is readable."""
    files = []
    for pid in pids:
        try:
            paths = cgroups._paths(pid)
        except OSError:
            continue
        d = paths.get("cpuacct") or paths.get("cpu,cpuacct")
        if d is not None and (d / "cpuacct.usage").exists():
            files.append((d / "cpuacct.usage", 1e-9, None))
        elif paths.get("") is not None and (paths[""] / "cpu.stat").exists():
            files.append((paths[""] / "cpu.stat", 1e-6, "usage_usec"))
    if not files:
        return None
    parents = {f.parent.parent for f, _, key in files if key is None}
    if len(parents) == 1 and len(files) == len(pids) and next(iter(parents)).name == "docker":
        files = [(next(iter(parents)) / "cpuacct.usage", 1e-9, None)]

    def read() -> float:
        total = 0.0
        for f, scale, key in files:
            try:
                text = Path(f).read_text()
            except OSError:             # a container gone: its share is no longer counted
                continue
            if key is None:
                total += int(text) * scale
            else:
                total += next((int(v) for k, v in (ln.split() for ln in text.splitlines()) if k == key), 0) * scale
        return total
    return read


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
    def __init__(self, container_pids: list[int] | None = None) -> None:
        self.containers = containers_cpu(container_pids or [])
        self.prev, self.prev_own, self.prev_wall = _cpu(), _own(), time.monotonic()
        self.prev_cont = self.containers() if self.containers else 0.0
        self.rows: list[dict] = []

    def sample(self, t: float) -> dict:
        now, own, wall = _cpu(), _own(), time.monotonic()
        cont = self.containers() if self.containers else 0.0
        d_total = max(now[1] - self.prev[1], 1)
        d_wall = max(wall - self.prev_wall, 1e-6)
        row = {"t": round(t, 3), "cpu_busy": round((now[0] - self.prev[0]) / d_total, 4),
               "cpu_iowait": round((now[2] - self.prev[2]) / d_total, 4),
               "cpu_softirq": round((now[3] - self.prev[3]) / d_total, 4),
               "testbed_cpu": round((own - self.prev_own) / d_wall, 4),
               "containers_cpu": round(max(cont - self.prev_cont, 0.0) / d_wall, 4) if self.containers else None,
               "mem_available_bytes": mem_available()}
        self.prev, self.prev_own, self.prev_wall, self.prev_cont = now, own, wall, cont
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
    def mean(key: str) -> float | None:
        if any(r.get(key) is None for _, r in spans):
            return None
        return round(sum(r[key] * dt for dt, r in spans) / total, 4)
    out = {"cpu_busy_mean": mean("cpu_busy"), "softirq_mean": mean("cpu_softirq"),
           "containers_cpu_mean": mean("containers_cpu"), "testbed_cpu_mean": mean("testbed_cpu"),
           "cpu_busy_p95": busy[min(len(busy) - 1, int(0.95 * len(busy)))],
           "saturated_s": round(saturated, 1), "saturated_share": round(saturated / total, 4),
           "longest_saturated_s": round(longest, 1),
           "mem_available_min_bytes": min(r["mem_available_bytes"] for r in rows),
           "warning": None}
    if saturated >= WARN_SECONDS and saturated / total >= WARN_SHARE:
        who = []
        for key, what in (("containers_cpu_mean", "the containers (clients and their kernel work)"),
                          ("softirq_mean", "packet processing (bridges, links; partly inside the containers' share)"), ("testbed_cpu_mean", "the testbed")):
            if out[key] is not None:
                cores = out[key] * (os.cpu_count() or 1) if key == "softirq_mean" else out[key]
                who.append(f"{what} {cores:.2f}")
        took = f"; cores taken on average: {', '.join(who)} of {os.cpu_count()}" if who else ""
        out["warning"] = (f"the machine's CPUs were at least {SATURATED:.0%} busy for {saturated:.0f} s of the "
                          f"swarm's {total:.0f} s (the longest stretch {longest:.0f} s): clients and links waited "
                          f"for CPU, so times may measure the machine rather than the network{took}")
    return out
