"""Per client: idle and busy memory (RSS) and CPU time per downloaded MiB.

    sudo .venv/bin/python benchmarks/clients.py [--size 64MiB] [CLIENT ...]

Each client leeches a file from a libtorrent seeder over 100mbit links, in a real run.
Read from the leecher container's cgroup (v1 memory.stat `rss` + `mapped_file` and
cpuacct.usage, or the v2 equivalents), so the numbers are the whole container: the client and Docker's
init. "idle" is RSS once the client answers on its control API, before the torrent is added;
"busy" is the peak RSS sampled every second while downloading; CPU is the container's
CPU time from start to the end of the download, per MiB received.
"""
from __future__ import annotations

import argparse
import secrets
import tempfile
from pathlib import Path

from mininet.log import setLogLevel

from testbed.clients import DRIVERS
from testbed.model import parse_experiment
from testbed.run import run
from testbed.runtime import docker_client
from testbed.units import parse_size


def cgroup_reader(container_id: str):
    v1_mem = Path(f"/sys/fs/cgroup/memory/docker/{container_id}/memory.stat")
    v1_cpu = Path(f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage")
    v2 = Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope")

    def stat(path: Path, key: str) -> int:
        for line in path.read_text().splitlines():
            k, v = line.split()
            if k == key:
                return int(v)
        return 0

    def read() -> tuple[int, float]:
        # resident = anonymous memory + mapped files (the binaries and libraries in use)
        if v1_mem.exists():
            return stat(v1_mem, "rss") + stat(v1_mem, "mapped_file"), int(v1_cpu.read_text()) / 1e9
        m = v2 / "memory.stat"
        return stat(m, "anon") + stat(m, "file_mapped"), stat(v2 / "cpu.stat", "usage_usec") / 1e6
    return read


def measure(client: str, size: str, results: Path) -> dict:
    exp = parse_experiment({
        "name": f"bench-{client}", "content": {"size": size}, "timeout": "10m",
        "seeders": [{"name": "seeder", "client": "libtorrent", "access": {"up": "100mbit", "down": "100mbit"}}],
        "peers": [{"name": "leecher", "client": client, "access": {"up": "100mbit", "down": "100mbit"}}]})
    run_id = f"bench-{client}-{secrets.token_hex(3)}"
    docker = docker_client()
    state: dict = {"busy": 0}

    def on_event(e: dict) -> None:
        if e["kind"] == "clients_ready":
            c = docker.containers.get(f"tb-{run_id}-leecher")
            state["read"] = cgroup_reader(c.id)
            state["idle"], _ = state["read"]()
        elif e["kind"] == "progress" and "read" in state:
            rss, cpu = state["read"]()
            state["busy"] = max(state["busy"], rss)
            if e["done"] == e["total"] and "cpu" not in state:
                state["cpu"] = cpu

    result = run(exp, results, on_event, run_id=run_id)
    mib = parse_size(size) / 2**20
    return {"client": client, "status": result.status, "idle_mib": state.get("idle", 0) / 2**20,
            "busy_mib": state["busy"] / 2**20, "cpu_s_per_mib": state.get("cpu", float("nan")) / mib,
            "completion_s": next(p["completion_s"] for p in result.summary["peers"] if p["role"] == "leecher")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("clients", nargs="*", default=list(DRIVERS))
    ap.add_argument("--size", default="64MiB")
    args = ap.parse_args()
    setLogLevel("warning")
    print(f"{'client':<13} {'idle RSS':>9} {'busy RSS':>9} {'CPU/MiB':>9} {'download':>9}  status")
    with tempfile.TemporaryDirectory() as tmp:
        for client in args.clients:
            m = measure(client, args.size, Path(tmp))
            print(f"{m['client']:<13} {m['idle_mib']:>6.1f}MiB {m['busy_mib']:>6.1f}MiB "
                  f"{m['cpu_s_per_mib'] * 1000:>6.1f}ms {m['completion_s'] or float('nan'):>8.1f}s  {m['status']}")


if __name__ == "__main__":
    main()
