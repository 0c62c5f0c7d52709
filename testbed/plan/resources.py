"""What a plan will ask of the machine: memory, disk and CPU, estimated from measured
per-client figures (catalog.py's `rss_mib` and `cpu_ms_per_mib`, each measured on the CI
machine and noted there). Pure: run/preflight.py compares it with the machine.

Memory: each client's resident anonymous memory while busy, plus each container's
containerd-shim (13.4 MiB, measured as the mean of 42 shims), plus the testbed process and
the delay element. The payload that libtorrent-based clients and rtorrent map is page cache,
not counted: the kernel can drop it. Disk: every client holds a copy of the content, and
the origin's copy is made once more. CPU: each downloaded MiB costs its downloader
`cpu_ms_per_mib` (measured in a swarm, so its share of uploading is in it); spread over the
Kumar-Ross minimum, that is the CPU the swarm would need to go as fast as its links allow.
"""
from __future__ import annotations

from dataclasses import dataclass

from testbed.catalog import CLIENTS
from testbed.plan.build import Plan

SHIM_MIB = 13.4                  # containerd-shim per container (RSS, mean of 42 measured)
SMALL_CONTAINER_MIB = 4.0        # tracker, router, server: opentracker or a few tools
TESTBED_MIB = 160.0              # the testbed process at 100 peers (119 MiB measured) and headroom
ELEMENT_MIB = 60.0               # the userspace delay element
MIB = 1024 * 1024


@dataclass(frozen=True)
class Needs:
    memory_bytes: int
    disk_bytes: int
    cpu_s: float                 # client CPU for the whole distribution
    cores_at_bound: float | None # that CPU spread over the Kumar-Ross minimum (flash crowds)
    clients: dict                # client -> count

    def describe(self) -> str:
        mix = ", ".join(f"{n} {c}" for c, n in sorted(self.clients.items()))
        return (f"{self.memory_bytes / MIB:.0f} MiB of memory, {self.disk_bytes / MIB:.0f} MiB of disk"
                f" ({mix})")


def needs(p: Plan) -> Needs:
    clients: dict[str, int] = {}
    memory = TESTBED_MIB + ELEMENT_MIB
    for h in p.hosts:
        if h.shares_netns and not h.client:
            continue
        memory += SHIM_MIB + (CLIENTS[h.client].rss_mib if h.client else SMALL_CONTAINER_MIB)
        if h.client:
            clients[h.client] = clients.get(h.client, 0) + 1
    copies = sum(clients.values()) + 1
    content_mib = p.content_bytes / MIB
    cpu_s = 0.0
    for h in p.by_role("leecher"):
        cpu_s += content_mib * CLIENTS[h.client].cpu_ms_per_mib / 1000
    return Needs(memory_bytes=int(memory * MIB), disk_bytes=int(copies * p.content_bytes), cpu_s=cpu_s,
                 cores_at_bound=cpu_s / p.t_min_s if p.t_min_s else None, clients=clients)
