"""Which worker machine each emulated host lives on, when one swarm is spread over several.

Pure, like the rest of the plan: from the plan's hosts and the workers' capacities to a
host -> worker table, the same for the same input. Three kinds of hosts must share a worker,
because what joins them is not a link that can be stretched over a tunnel:

- a household: its router and every member (they share a LAN and a NAT);
- one PC: clients that share a network namespace;
- an ISP segment: every host on a segment site (its shared access queue is one qdisc).

Everything else is placed alone. Each unit's load is the client CPU it is expected to take
(catalog.py's `cpu_ms_per_mib`, measured on the CI machine, times the content it moves: a
leecher downloads it once and uploads about as much, a seeder uploads it), plus a small
share per container; units go, heaviest first, to the worker whose load relative to its
cores would be least after taking it (longest-processing-time-first: at most 4/3 of the
best possible makespan). The tracker, the origins and the households' internet server go
to the first worker, the coordinator's, with the results directory. Written by hand: a few
lines of a textbook greedy, where a solver library would be a dependency for one loop.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from testbed.catalog import CLIENTS
from testbed.plan.build import HostPlan, Plan

CONTAINER_CPU_S = 0.5        # a container's own share (start, idle, stop) in CPU seconds
MIB = 1024 * 1024


@dataclass(frozen=True)
class Worker:
    name: str
    cores: float = 1.0


def load(h: HostPlan, content_bytes: int) -> float:
    """Expected CPU seconds of one host over a distribution."""
    if not h.client:
        return CONTAINER_CPU_S
    moved = 2.0 if h.role == "leecher" else 1.0
    return CONTAINER_CPU_S + moved * content_bytes / MIB * CLIENTS[h.client].cpu_ms_per_mib / 1000


def units(p: Plan) -> list[tuple[str, ...]]:
    """The groups of hosts that must share a worker, each sorted, in a stable order."""
    parent = {h.name: h.name for h in p.hosts}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def join(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    segment = {}
    for h in p.hosts:
        if h.home and h.home in parent:
            join(h.name, h.home)
        if h.shares_netns:
            join(h.name, h.shares_netns)
        if h.site in p.segment_sites:
            if h.site in segment:
                join(h.name, segment[h.site])
            segment.setdefault(h.site, h.name)
    groups: dict[str, list[str]] = {}
    for h in p.hosts:
        groups.setdefault(find(h.name), []).append(h.name)
    return sorted(tuple(sorted(g)) for g in groups.values())


def place(p: Plan, workers: list[Worker]) -> dict[str, str]:
    """host name -> worker name."""
    if not workers:
        raise ValueError("placement needs at least one worker")
    first = workers[0].name
    weight = {h.name: load(h, p.content_bytes) for h in p.hosts}
    pinned = {h.name for h in p.hosts if h.role in ("tracker", "server") or (h.role == "seeder" and not h.home)}
    used = {w.name: 0.0 for w in workers}
    out: dict[str, str] = {}
    todo = []
    for u in units(p):
        w = sum(weight[n] for n in u)
        if pinned & set(u):
            out.update({n: first for n in u})
            used[first] += w
        else:
            todo.append((w, u))
    for w, u in sorted(todo, key=lambda t: (-t[0], t[1])):
        best = min(workers, key=lambda k: ((used[k.name] + w) / k.cores, workers.index(k)))
        out.update({n: best.name for n in u})
        used[best.name] += w
    return out


def loads(p: Plan, placement: dict[str, str]) -> dict[str, float]:
    """Expected CPU seconds per worker under a placement."""
    out: dict[str, float] = {}
    for h in p.hosts:
        out[placement[h.name]] = out.get(placement[h.name], 0.0) + load(h, p.content_bytes)
    return out


def with_placement(p: Plan, placement: dict[str, str]) -> Plan:
    """The plan with each host's `machine` set, as plan.json records it."""
    return replace(p, hosts=tuple(replace(h, machine=placement[h.name]) for h in p.hosts))
