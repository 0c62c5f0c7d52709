"""Facts about the machine, probed for real: used by `testbed doctor` and each manifest."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import testbed

SRC = Path(__file__).resolve().parent.parent


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)


def qdisc_available(kind: str, args: str = "") -> bool:
    """Try to attach a qdisc to lo in a throwaway namespace (named with the probe prefix)."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        return False
    ns = f"tb{os.getpid() % 0xFFFFFF:06x}-probe"
    if _run(["ip", "netns", "add", ns]).returncode != 0:
        return False
    try:
        r = _run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", kind, *args.split()])
        return r.returncode == 0
    finally:
        _run(["ip", "netns", "del", ns])


@lru_cache(maxsize=1)
def traffic_control() -> dict:
    return {"htb": qdisc_available("htb"), "pfifo": qdisc_available("pfifo", "limit 10"),
            "netem": qdisc_available("netem", "delay 1ms")}


def git_commit() -> str | None:
    r = _run(["git", "-C", str(SRC), "rev-parse", "HEAD"]) if shutil.which("git") else None
    if not r or r.returncode != 0:
        return None
    dirty = _run(["git", "-C", str(SRC), "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    return r.stdout.strip() + ("-dirty" if dirty else "")


def host_facts() -> dict:
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"hostname": platform.node(), "kernel": platform.release(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "memory_bytes": mem, "python": platform.python_version()}


def testbed_version() -> dict:
    return {"version": testbed.__version__, "commit": git_commit()}
