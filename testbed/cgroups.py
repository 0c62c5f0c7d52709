"""What a container used, read from its control groups (the kernel's own accounting, found
through its init process): CPU time, resident memory, and the memory high-water mark.

Works with cgroup v1 (this machine: memory.stat's rss, memory.max_usage_in_bytes,
cpuacct.usage) and v2 (memory.stat's anon, memory.peak, cpu.stat's usage_usec). Written by
hand: the Docker SDK's stats() takes a second per container (it waits for two samples), and
the files are a few lines each.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _paths(pid: int) -> dict[str, Path]:
    """controller -> the container's directory for it ('' is the v2 unified hierarchy)."""
    out: dict[str, Path] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, rel = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            for base in ((ROOT / c, ROOT / "unified") if c == "" else (ROOT / c,)):
                d = base / rel.lstrip("/") if c else ROOT / rel.lstrip("/")
                if c == "" and not (d / "cgroup.controllers").exists():
                    d = ROOT / "unified" / rel.lstrip("/")
                if d.is_dir():
                    out[c] = d
                    break
    return out


def _stat(path: Path) -> dict[str, int]:
    out = {}
    for line in path.read_text().splitlines():
        k, _, v = line.partition(" ")
        if v.strip().isdigit():
            out[k] = int(v)
    return out


def usage(pid: int) -> dict[str, int] | None:
    """{'cpu_ns', 'rss_bytes', 'mem_peak_bytes', 'limit_hits'} of the cgroup that process `pid`
    is in (the peak counts page cache too; limit_hits: times its usage reached its memory
    limit, v1 memory.failcnt, v2 memory.events max), or None when it is gone."""
    try:
        paths = _paths(pid)
        if "memory" in paths:                                    # v1
            mem = _stat(paths["memory"] / "memory.stat")
            peak = int((paths["memory"] / "memory.max_usage_in_bytes").read_text())
            cpu_dir = paths.get("cpuacct") or paths.get("cpu,cpuacct") or paths.get("cpu")
            cpu = int((cpu_dir / "cpuacct.usage").read_text()) if cpu_dir else 0
            # with swap limited too (memswap_limit), the hits are counted against mem+swap
            hits = max(int(f.read_text()) for f in (paths["memory"] / "memory.failcnt",
                                                     paths["memory"] / "memory.memsw.failcnt") if f.exists())
            return {"cpu_ns": cpu, "rss_bytes": mem.get("total_rss", mem.get("rss", 0)), "mem_peak_bytes": peak,
                    "limit_hits": hits}
        d = paths.get("")
        if d is not None and (d / "memory.stat").exists():     # v2
            mem = _stat(d / "memory.stat")
            peak_file = d / "memory.peak"
            peak = int(peak_file.read_text()) if peak_file.exists() else int((d / "memory.current").read_text())
            events = d / "memory.events"
            return {"cpu_ns": _stat(d / "cpu.stat").get("usage_usec", 0) * 1000, "rss_bytes": mem.get("anon", 0),
                    "mem_peak_bytes": peak, "limit_hits": _stat(events).get("max", 0) if events.exists() else 0}
    except (OSError, ValueError):
        return None
    return None
