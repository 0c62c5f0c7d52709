"""Experiment -> immutable Plan. Pure: no I/O, no clock, no randomness beyond the seed.

The plan names every object the executor will create, with the run's identity in it:
containers 'tb-<run_id>-<host>', bridges and root-namespace veth ends 'tb<tag>...'
(tag = 6 hex digits of the run id, so names fit Linux's 15-character limit).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from testbed import catalog
from testbed.model import AccessLink, Behaviour, DataPlan, Experiment, Topology
from testbed.model.churn import EndAfter
from testbed.plan import bounds, draws
from testbed.plan.homes import (IPERF_PORT_BASE, LAN_PREFIX, RPC_PORT_BASE, SERVER, HomePlan, ProtocolPolicyPlan,
                                SegmentPolicyPlan, home_of, lan_nets)
from testbed.plan.timeline import (Event, Participant, behaviour_of, fault_events, group_events, ordered,
                                   rate_events)
from testbed.traces import Trace

DATA_NET = ipaddress.ip_network("198.18.0.0/17")       # RFC 2544 benchmarking range (homes' LANs: the upper half)
CONTROL_NET = ipaddress.ip_network("198.19.0.0/16")    # split in /22 blocks, one per run
CONTROL_BLOCKS = 63        # the 64th /22, 198.19.252.0/22, is the workers' underlay (testbed.workers)
WORKER_UNDERLAY = ipaddress.ip_network("198.19.252.0/22")
TRACKER_IMAGE = "tracker"
ROUTER_IMAGE = "router"         # home routers and the internet server
DEFAULT_PIECE = 256 * 1024


@dataclass(frozen=True)
class Shaping:
    """What one direction of a link does to the packets crossing it."""

    rate_bps: float               # the starting rate when `trace` is set
    queue_pkts: int
    delay_s: float = 0.0          # one-way delay added in this direction
    jitter_s: float = 0.0         # +/- uniformly around the delay
    loss: float = 0.0             # random loss per packet
    reorder: bool = False         # whether jitter may reorder packets
    trace: Trace | None = None    # the rate follows this over the run

    @property
    def impaired(self) -> bool:
        """Whether this direction needs a delay element (netem or userspace), not only a rate."""
        return bool(self.delay_s or self.jitter_s or self.loss)


def access_shaping(a: AccessLink, direction: str, member: int = 0, members: int = 1) -> Shaping:
    """One direction of a group member's access link (member counts from 0)."""
    trace = a.trace(direction)
    if trace is not None:
        offset = trace.length() * member / members if a.trace_offset == "spread" else a.trace_offset
        trace = trace.starting_at(offset)
    rate = trace.rate_at(0.0) if trace else getattr(a, direction)
    pick = 0 if direction == "up" else 1
    return Shaping(rate, a.queue, a.delay[pick], a.jitter[pick], a.loss[pick], a.reorder, trace)


@dataclass(frozen=True)
class HostPlan:
    name: str
    role: Literal["tracker", "seeder", "leecher", "router", "server"]
    group: str
    client: str | None
    image: str
    site: str
    data_ip: str
    ctl_ip: str
    up: Shaping | None            # host -> network
    down: Shaping | None          # network -> host
    container: str
    machine: str = "local"        # placement: which machine runs it (multi-machine later)
    behaviour: Behaviour = Behaviour()
    profile: str | None = None    # the access link's named profile, if any
    data_plan: DataPlan | None = None
    participant: Participant | None = None   # peers: what its user does
    prefix: int = DATA_NET.prefixlen         # of data_ip
    home: str | None = None       # household members: their home's router
    gateway: str | None = None    # household members: the router's LAN address
    shares_netns: str | None = None   # one-PC members after the first: whose namespace they live in
    rpc_port: int | None = None   # the client's control port, when its default could clash (one PC)
    memory_limit: int | None = None   # bytes its container may use
    cpus: float | None = None         # CPU cores its container may use
    capture: tuple[str, ...] = ()     # capture points: "wire", "client"

    @property
    def behind_nat(self) -> bool:
        return self.gateway is not None


CAPTURE_POINTS = {None: (), "wire": ("wire",), "client": ("client",), "both": ("wire", "client")}


@dataclass(frozen=True)
class SwitchPlan:
    name: str                     # logical site name, or 'control'
    device: str                   # Linux bridge name
    machine: str = "local"


@dataclass(frozen=True)
class LinkPlan:
    kind: Literal["access", "core", "control", "lan"]
    node1: str                    # host name or site name
    node2: str
    intf1: str
    intf2: str
    egress1: Shaping | None       # shaping of node1 -> node2
    egress2: Shaping | None       # shaping of node2 -> node1


@dataclass(frozen=True)
class Plan:
    run_id: str
    tag: str
    name: str                     # the experiment's
    repetition: int
    seeds: dict                   # purpose -> derived integer seed (content, impairments)
    switch: str                   # linuxbridge | ovs
    shaper: str                   # auto | netem | userspace, as asked
    end: str                      # all_done | duration
    horizon_s: float              # the end's duration, or the timeout
    timeout_s: float
    content_bytes: int
    piece_bytes: int
    hosts: tuple[HostPlan, ...]
    switches: tuple[SwitchPlan, ...]
    links: tuple[LinkPlan, ...]
    timeline: tuple[Event, ...]
    control_gateway: str          # the orchestrator's address on the control network
    control_prefix: int
    data_prefix: int
    t_min_s: float | None         # Kumar-Ross, for a flash crowd only
    t_min_terms: dict = field(default_factory=dict)
    peer_t_min_s: dict = field(default_factory=dict)
    tracker_port: int = 6969
    homes: tuple[HomePlan, ...] = ()
    segment_policies: tuple[SegmentPolicyPlan, ...] = ()
    protocol_policies: tuple[ProtocolPolicyPlan, ...] = ()
    segment_sites: tuple[str, ...] = ()     # sites that are ISP segments (generated topologies)
    builds: dict = field(default_factory=dict)   # image name -> a client build it is made from
    # a shard's plan (plan/shard.py), whose tracker and internet server may live on another
    # worker: their addresses, and the ports its server listens on for other workers' homes
    tracker_address: str | None = None
    server_address: str | None = None
    served_ports: tuple[int, ...] = ()

    def host(self, name: str) -> HostPlan:
        return next(h for h in self.hosts if h.name == name)

    @property
    def tracker_ip(self) -> str:
        return self.tracker_address or self.host("tracker").data_ip

    @property
    def server_ip(self) -> str | None:
        """The internet server's address (None: the plan has no households)."""
        server = next((h for h in self.hosts if h.role == "server"), None)
        return server.data_ip if server is not None else self.server_address

    @property
    def tracker_url(self) -> str:
        return f"http://{self.tracker_ip}:{self.tracker_port}/announce"

    def by_role(self, role: str) -> list[HostPlan]:
        return [h for h in self.hosts if h.role == role]

    def home(self, name: str) -> HomePlan:
        return next(h for h in self.homes if h.name == name)


def rate_steps(s: Shaping, horizon: float, cap: float | None = None) -> bounds.Steps:
    """A direction's rate over the run as steps (a trace's, or one constant), under a client cap."""
    steps = tuple(s.trace.changes(horizon)) if s.trace else bounds.constant(s.rate_bps)
    return bounds.capped(steps, cap)


def run_tag(run_id: str) -> str:
    tag = run_id.rsplit("-", 1)[-1]
    if len(tag) != 6 or any(c not in "0123456789abcdef" for c in tag):
        raise ValueError(f"run id {run_id!r} must end in 6 hex digits")
    return tag


def control_block(tag: str) -> int:
    return int(tag, 16) % CONTROL_BLOCKS


def piece_size(content_bytes: int) -> int:
    """A piece size giving roughly 100 to 2000 pieces, as common clients choose."""
    size = DEFAULT_PIECE
    while content_bytes / size > 2000 and size < 16 * 1024 * 1024:
        size *= 2
    while content_bytes / size < 100 and size > 16 * 1024:
        size //= 2
    return size



def plan(exp: Experiment, run_id: str, block: int | None = None, repetition: int = 1) -> Plan:
    """Turn a validated experiment into the plan of one run (one repetition)."""
    topo = exp.topology
    assert isinstance(topo, Topology), "parse_experiment resolves the topology"
    tag = run_tag(run_id)
    block = control_block(tag) if block is None else block
    ctl = list(CONTROL_NET.subnets(new_prefix=22))[block]
    ctl_addrs = ctl.hosts()
    gateway = str(next(ctl_addrs))
    data_addrs = DATA_NET.hosts()
    default_site = topo.sites[0]
    horizon = exp.end.duration if isinstance(exp.end, EndAfter) else exp.timeout

    switches = [SwitchPlan(site, f"tb{tag}s{i}") for i, site in enumerate(topo.sites, 1)]
    switches.append(SwitchPlan("control", f"tb{tag}c"))
    device = {s.name: s.device for s in switches}

    hosts: list[HostPlan] = [HostPlan(
        name="tracker", role="tracker", group="tracker", client=None, image=TRACKER_IMAGE,
        site=exp.tracker.site or default_site, data_ip=str(next(data_addrs)),
        ctl_ip=str(next(ctl_addrs)), up=None, down=None, container=f"tb-{run_id}-tracker")]
    events: list[Event] = fault_events(exp, horizon)
    names = exp.host_names()
    home_names = exp.home_names()
    if exp.households:
        hosts.append(HostPlan(
            name=SERVER, role="server", group=SERVER, client=None, image=ROUTER_IMAGE,
            site=exp.tracker.site or default_site, data_ip=str(next(data_addrs)), ctl_ip=str(next(ctl_addrs)),
            up=None, down=None, container=f"tb-{run_id}-{SERVER}"))
    nets = lan_nets(sum(len(r) for r in home_names.values()))
    homes: dict[str, dict] = {}
    iperf = IPERF_PORT_BASE
    for h in exp.households:
        for i, r in enumerate(home_names[h.name]):
            net = nets[len(homes)]
            lan = net.hosts()
            up = access_shaping(h.access, "up", i, h.count)
            down = access_shaping(h.access, "down", i, h.count)
            hosts.append(HostPlan(
                name=r, role="router", group=h.name, client=None, image=ROUTER_IMAGE, site=h.site or default_site,
                data_ip=str(next(data_addrs)), ctl_ip=str(next(ctl_addrs)), up=up, down=down,
                container=f"tb-{run_id}-{r}", profile=h.access.profile, data_plan=h.access.plan))
            for direction, sh in (("up", up), ("down", down)):
                if sh.trace:
                    events += rate_events(r, direction, sh.trace, horizon)
            ports = None
            if h.background is not None:
                ports, iperf = (iperf, iperf + 1), iperf + 2
            homes[r] = dict(name=r, kind=h.name, site=h.site or default_site, lan_net=str(net), lan_ip=str(next(lan)),
                            lan_switch=f"{r}.lan", one_pc=h.one_pc, members=[], forwards=[], addrs=lan,
                            background=h.background, probe_s=h.probe, iperf_ports=ports, up=up)
    where = home_of(exp)
    for role, g in exp.groups():
        members, planned = group_events(exp, g, names[g.name], repetition, horizon)
        events += planned
        for i, name in enumerate(names[g.name]):
            use, who = members[name]
            home = homes.get(where.get(name, ""))
            if home is None:
                up = access_shaping(g.access, "up", i, g.count)
                down = access_shaping(g.access, "down", i, g.count)
                place = dict(site=g.site or default_site, data_ip=str(next(data_addrs)), ctl_ip=str(next(ctl_addrs)),
                             up=up, down=down, profile=g.access.profile, data_plan=g.access.plan)
                line = up
            else:
                line = home["up"]
                first = hosts_by_name(hosts, home["members"][0]) if home["one_pc"] and home["members"] else None
                place = dict(site=home["lan_switch"], up=None, down=None, home=home["name"], gateway=home["lan_ip"],
                             prefix=LAN_PREFIX,
                             data_ip=first.data_ip if first else str(next(home["addrs"])),
                             ctl_ip=first.ctl_ip if first else str(next(ctl_addrs)),
                             shares_netns=first.name if first else None,
                             rpc_port=RPC_PORT_BASE + len(home["members"]) if home["one_pc"] else None)
                home["members"].append(name)
                if g.forward:
                    home["forwards"].append(name)
            hosts.append(HostPlan(
                name=name, role=role, group=g.name, client=g.client, image=client_image(g),
                container=f"tb-{run_id}-{name}",
                behaviour=behaviour_of(g, use, line.trace.mean_rate() if line.trace else line.rate_bps),
                participant=who, memory_limit=g.limits.memory, cpus=g.limits.cpus,
                capture=CAPTURE_POINTS[g.capture], **place))
            for direction, sh in (("up", place["up"]), ("down", place["down"])):
                if sh is not None and sh.trace:
                    events += rate_events(name, direction, sh.trace, horizon)

    links: list[LinkPlan] = []
    port = {s.name: 0 for s in switches}

    def switch_port(site: str) -> str:
        port[site] += 1
        return f"{device[site]}p{port[site]}"

    for hp in homes.values():
        switches.append(SwitchPlan(hp["lan_switch"], f"tb{tag}l{len(port) - len(topo.sites)}"))
        device[hp["lan_switch"]] = switches[-1].device
        port[hp["lan_switch"]] = 0
    for h in hosts:
        if h.shares_netns is None:
            links.append(LinkPlan("access", h.name, h.site, "eth0", switch_port(h.site), h.up, h.down))
    for hp in homes.values():
        links.append(LinkPlan("lan", hp["name"], hp["lan_switch"], "lan0", switch_port(hp["lan_switch"]), None, None))
    for link in topo.core:
        a, b = link.ends
        fwd = Shaping(link.rate, link.queue, link.delay, link.jitter, link.loss)
        rev = Shaping(link.reverse_rate or link.rate, link.queue, link.delay, link.jitter, link.loss)
        links.append(LinkPlan("core", a, b, switch_port(a), switch_port(b), fwd, rev))
    for h in hosts:
        if h.shares_netns is None:
            links.append(LinkPlan("control", h.name, "control", "ctl0", switch_port("control"), None, None))

    size = exp.content.size
    seeders = [h for h in hosts if h.role == "seeder"]
    leechers = [h for h in hosts if h.role == "leecher"]
    bound_horizon = 10 * exp.timeout
    seed_up = [rate_steps(h.up, bound_horizon, h.behaviour.upload_limit) for h in seeders if h.up]
    t_min, terms, peer_t_min = None, {}, {}
    # the bound is for peers with links of their own; households share one (issue: one bound per home)
    if exp.flash_crowd and not homes:
        cuts = bounds.seedless_cuts(list(topo.sites), [(c.ends[0], c.ends[1], c.rate, c.reverse_rate or c.rate)
                                                       for c in topo.core],
                                    {h.site for h in seeders}, {h.site for h in leechers})
        t_min, terms = bounds.kumar_ross(size, seed_up, [bounds.PeerRates(
            rate_steps(h.up, bound_horizon, h.behaviour.upload_limit),
            rate_steps(h.down, bound_horizon, h.behaviour.download_limit)) for h in leechers], cuts)
        peer_t_min = {h.name: bounds.peer_t_min(size, seed_up, rate_steps(h.down, bound_horizon,
                                                                          h.behaviour.download_limit))
                      for h in leechers}
    return Plan(
        run_id=run_id, tag=tag, name=exp.name, repetition=repetition,
        seeds={purpose: draws.derived_seed(exp.seed, repetition, purpose) for purpose in ("content", "impairments")},
        switch=topo.switch, shaper=exp.shaper, end="duration" if isinstance(exp.end, EndAfter) else "all_done",
        horizon_s=horizon, timeout_s=exp.timeout, content_bytes=size,
        piece_bytes=exp.content.piece_size or piece_size(size),
        hosts=tuple(hosts), switches=tuple(switches), links=tuple(links), timeline=ordered(events),
        control_gateway=gateway, control_prefix=ctl.prefixlen, data_prefix=DATA_NET.prefixlen,
        t_min_s=t_min, t_min_terms=terms, peer_t_min_s=peer_t_min, tracker_port=exp.tracker.port,
        homes=tuple(HomePlan(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in hp.items()
                                if k not in ("addrs", "up")}) for hp in homes.values()),
        segment_policies=segment_policies(exp, hosts, links),
        protocol_policies=protocol_policies(exp, hosts), segment_sites=tuple(sg.site for sg in topo.segments),
        builds={client_image(g): build_plan(g) for _, g in exp.groups() if g.build is not None})


def client_image(g) -> str:
    """The image a group's clients run: the client's own, or one named after a client build's
    content (its file's sha256, or the local image's tag)."""
    base = catalog.CLIENTS[g.client].image
    if g.build is None:
        return base
    import hashlib
    return f"{base}-build-{hashlib.sha256((g.build.image or g.build.sha256).encode()).hexdigest()[:12]}"


def build_plan(g) -> dict:
    b = g.build
    kind = "image" if b.image else "binary" if b.binary else "package"
    return {"group": g.name, "client": g.client, "base": catalog.CLIENTS[g.client].image, "kind": kind,
            "source": getattr(b, kind), "sha256": b.sha256, "dest": catalog.CLIENTS[g.client].binary}


def hosts_by_name(hosts: list[HostPlan], name: str) -> HostPlan:
    return next(h for h in hosts if h.name == name)


def segment_policies(exp: Experiment, hosts: list[HostPlan], links: list[LinkPlan]) -> tuple:
    out = []
    for p in exp.policies:
        if p.segment is None or p.congestion is None:
            continue
        seg = exp.topology.segment(p.segment)
        link = next(lk for lk in links if lk.kind == "core" and {lk.node1, lk.node2} == {seg.site, seg.core})
        up, down = (link.egress1, link.egress2) if link.node1 == seg.site else (link.egress2, link.egress1)
        subs = tuple((h.name, h.data_ip, h.up.rate_bps, h.down.rate_bps) for h in hosts
                     if h.site == seg.site and h.up is not None and h.role != "tracker")
        out.append(SegmentPolicyPlan(seg.site, seg.core, up.rate_bps, down.rate_bps, subs, p.congestion))
    return tuple(out)


def protocol_policies(exp: Experiment, hosts: list[HostPlan]) -> tuple:
    out = []
    for p in exp.policies:
        if p.protocol is None:
            continue
        if p.segment is not None:
            routers = tuple(h.name for h in hosts if h.role == "router" and h.site == p.segment)
            where = f"segment {p.segment}"
        else:
            routers = tuple(h.name for h in hosts if h.role == "router" and h.group == p.household)
            where = f"household {p.household}"
        out.append(ProtocolPolicyPlan(where, routers, p.protocol))
    return tuple(out)
