"""One worker's share of a plan, when one swarm is spread over several workers (pure).

Every worker plans the whole experiment itself, under its own run id (so that its
containers, bridges and veths carry an identity of their own, even beside another worker's
on one Docker daemon, as on the one-machine harness), and keeps what placement gave it:
`restrict` cuts the plan down to those hosts, their links, and the switches they need.
Addresses, content and timeline come from the experiment and its seed, not from the run id,
so every worker's plan agrees on them (tests/test_shard.py checks it).

Sites are what gets stretched: a site's switch exists on every worker that has a host on
it, and its copies are joined by a VXLAN device each, with the site's VNI (`stretched`).
Core links between sites are not duplicated (two copies of a link between two stretched
sites would make a loop): each lives on one worker (`core_workers`). An ISP segment's
aggregation link lives with the segment's hosts (placement keeps them on one worker), so that
its shared queue, its meters and its congestion policy sit beside the subscribers they act
on; every other core link lives on the first worker, the coordinator's, with the tracker, the
origins and the internet server. A worker holds every site its core links touch.
The control network is each worker's own, never stretched: each worker's testbed talks to
its own clients.

Households are whole on one worker (placement keeps a router with its members). A home's
router counts its traffic with the tracker and the internet server by their addresses, which
a shard's plan carries when those hosts live on another worker (`tracker_address`,
`server_address`); the server's shard listens for every home's background traffic
(`served_ports`), whichever worker the home is on.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace

from testbed.plan.build import Plan, run_tag
from testbed.plan.homes import background_flows

VNI_SITES = 15          # sites a run's VNIs can tell apart (4 bits of the 24, 0 left out)


def shard_run_id(run_id: str, worker: str) -> str:
    """The run id a worker runs its shard under: the swarm's, with the worker's name and a
    tag of its own (6 hex digits, derived, so the coordinator knows every worker's)."""
    stem = run_id.rsplit("-", 1)[0]
    tag = hashlib.sha256(f"{run_id}/{worker}".encode()).hexdigest()[:6]
    return f"{stem}-{worker}-{tag}"


def sites(p: Plan) -> list[str]:
    """The plan's sites (switches that are neither the control network nor a home's LAN), in
    the plan's order."""
    lans = {h.lan_switch for h in p.homes}
    return [s.name for s in p.switches if s.name != "control" and s.name not in lans]


def core_workers(p: Plan, placement: dict[str, str], first: str) -> dict[tuple[str, str], str]:
    """(site, site) of each core link -> the worker it lives on: a segment's with the segment's
    hosts (all on one worker, by placement), every other one on the first worker."""
    segment_at: dict[str, str] = {}
    for h in p.hosts:
        if h.site in p.segment_sites and h.name in placement:
            segment_at.setdefault(h.site, placement[h.name])
    out = {}
    for lk in p.links:
        if lk.kind == "core":
            at = {segment_at[n] for n in (lk.node1, lk.node2) if n in segment_at}
            out[(lk.node1, lk.node2)] = at.pop() if len(at) == 1 else first
    return out


def present(p: Plan, placement: dict[str, str], first: str) -> dict[str, set[str]]:
    """site -> the workers its switch exists on: those with a host on it, and the worker of
    every core link that touches it."""
    out: dict[str, set[str]] = {s: set() for s in sites(p)}
    for h in p.hosts:
        if h.site in out and not h.shares_netns:
            out[h.site].add(placement[h.name])
    for (a, b), w in core_workers(p, placement, first).items():
        out[a].add(w)
        out[b].add(w)
    return out


def vni(run_id: str, site_index: int) -> int:
    """A stretched site's VXLAN network identifier: 20 bits of the swarm's run tag, then the
    site's index. Two runs on one underlay collide only if their tags agree in 20 bits."""
    if not 0 <= site_index < VNI_SITES:
        raise ValueError(f"a swarm spread over workers has at most {VNI_SITES} sites")
    return (int(run_tag(run_id), 16) & 0xFFFFF) << 4 | (site_index + 1)


def not_splittable(p: Plan) -> str | None:
    """Why this plan cannot be spread over workers, or None."""
    if len(sites(p)) > VNI_SITES:
        return f"a swarm spread over workers has at most {VNI_SITES} sites (it has {len(sites(p))})"
    return None


def stretched(p: Plan, placement: dict[str, str], first: str, run_id: str) -> dict[str, tuple[int, list[str]]]:
    """site -> (VNI, the workers it spans), for each site on two workers or more. `run_id` is
    the swarm's (the coordinator's), so that every worker derives the same VNIs."""
    order = sites(p)
    return {s: (vni(run_id, order.index(s)), sorted(ws)) for s, ws in present(p, placement, first).items()
            if len(ws) > 1}


def restrict(p: Plan, placement: dict[str, str], worker: str, first: str) -> Plan:
    """The plan cut down to the hosts placed on `worker`: their access, control and LAN links,
    the core links that live on it, the switches those need, and the policies of its segments
    and its homes' routers."""
    missing = sorted(h.name for h in p.hosts if h.name not in placement)
    if missing:
        raise ValueError(f"placement has no worker for host(s) {', '.join(missing[:5])}")
    names = {h.name for h in p.hosts if placement[h.name] == worker}
    cores = core_workers(p, placement, first)
    links = tuple(lk for lk in p.links
                  if (lk.kind == "core" and cores[(lk.node1, lk.node2)] == worker)
                  or (lk.kind != "core" and lk.node1 in names))
    needed = {"control"} | {lk.node2 for lk in links if lk.kind != "core"} \
        | {n for lk in links if lk.kind == "core" for n in (lk.node1, lk.node2)}
    mine = {frozenset((lk.node1, lk.node2)) for lk in links if lk.kind == "core"}
    server = next((h for h in p.hosts if h.role == "server"), None)
    served = tuple(port for home in p.homes if home.name not in names for port, _, _ in background_flows(home)) \
        if server is not None and server.name in names else ()
    return replace(
        p, hosts=tuple(h for h in p.hosts if h.name in names),
        switches=tuple(s for s in p.switches if s.name in needed), links=links,
        timeline=tuple(e for e in p.timeline if e.host in names),
        homes=tuple(h for h in p.homes if h.name in names),
        # a segment's policy acts on its aggregation link and its subscribers: both here
        segment_policies=tuple(sp for sp in p.segment_policies if frozenset((sp.segment, sp.core)) in mine),
        # a protocol policy acts in each router it names: those of this worker's homes
        protocol_policies=tuple(replace(pp, routers=tuple(r for r in pp.routers if r in names))
                                for pp in p.protocol_policies if set(pp.routers) & names),
        peer_t_min_s={k: v for k, v in p.peer_t_min_s.items() if k in names},
        tracker_address=p.host("tracker").data_ip,
        server_address=p.server_ip, served_ports=served)
