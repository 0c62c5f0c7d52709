"""Experiment file, version 1: the typed schema (layer 1 of validation).

Pydantic models with unknown keys forbidden and units parsed by testbed.units. Meaning
(names unique, references resolve, rates positive) is layer 2, in check.py. Neither layer
looks at the machine (images, kernel, daemon): that is preflight's job, so a file that
validates here validates everywhere.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Discriminator, Field, PrivateAttr, Tag

from testbed.textfile import excerpt
from testbed.model.churn import Arrivals, End, Fault, FlashCrowd, ParticipationMix
from testbed.model.homes import Background, IspTopology, Policy, Segment
from testbed.model.fields import (
    NO_IMPAIRMENT,
    DirDuration,
    DirPercent,
    Duration,
    Percent,
    Rate,
    Ref,
    Size,
    Strict,
)


class RateStep(Strict):
    """One step of a rate schedule: from `at` (seconds after the swarm starts) the rate is `rate`."""

    at: Duration
    rate: Rate


# A time-varying rate: a trace file (Mahimahi: one 1500-byte delivery opportunity per line,
# in ms; or a .csv of time,rate) or an inline schedule of steps.
RateTrace = str | list[RateStep]


class Throttle(Strict):
    throttle: Rate


class DataPlan(Strict):
    """A metered access plan: what the carrier counts, the cap, what happens there, the tariff.

    Bytes are counted at the IP layer (what carriers bill), GB = 10^9 bytes. Prices are in
    `currency` units."""

    cap: Size | None = None             # data included per billing period; None: no cap
    period: Duration = 30 * 86400.0     # billing period
    used: Size = 0                      # already used in this period when the run starts
    counts: Literal["both", "up", "down"] = "both"
    # overage: traffic goes on, billed at overage_per_gb; {throttle: RATE}: the carrier slows
    # the link to RATE both ways; cut: the carrier cuts the link; stop_seeding: the user's
    # client stops seeding once the cap is reached (downloading goes on, billed as overage)
    at_cap: Literal["overage", "cut", "stop_seeding"] | Throttle = "overage"
    fee: float = 0.0                    # per billing period
    per_gb: float = 0.0                 # every GB counted
    per_minute: float = 0.0             # every minute the peer is in the swarm
    overage_per_gb: float = 0.0         # every GB counted above the cap
    currency: str = "EUR"


class AccessLink(Strict):
    """A host's access link. `profile` takes every field from topologies/profiles.yaml; a field
    written here overrides the profile's value."""

    profile: Ref | None = None
    up: Rate | None = None              # host -> network
    down: Rate | None = None            # network -> host
    # each one value for both directions, or {up: ..., down: ...}
    delay: DirDuration = NO_IMPAIRMENT  # one-way, added in each direction of this link
    jitter: DirDuration = NO_IMPAIRMENT  # +/- uniformly around the delay
    loss: DirPercent = NO_IMPAIRMENT    # random per packet
    reorder: bool = False               # True: jitter may reorder packets (as netem's own default)
    queue: int = Field(100, description="drop-tail queue length, packets, each direction")
    up_trace: RateTrace | None = None   # the upload rate follows this trace instead of `up`
    down_trace: RateTrace | None = None
    # where in its traces the link starts: a duration, or `spread`: the members of a group
    # start evenly spaced over the trace's length, so they do not move in step
    trace_offset: Duration | Literal["spread"] = 0.0
    plan: DataPlan | None = None
    _traces: dict = PrivateAttr(default_factory=dict)   # direction -> traces.Trace, read while loading

    def trace(self, direction: str):
        """The trace this direction follows (read while loading the model), or None."""
        return self._traces.get(direction)


class LinkProfile(Strict):
    description: str = ""
    source: str
    up: Rate
    down: Rate
    delay: DirDuration = NO_IMPAIRMENT
    jitter: DirDuration = NO_IMPAIRMENT
    loss: DirPercent = NO_IMPAIRMENT
    queue: int = 100


class CoreLink(Strict):
    """A link between two sites (switches); rate applies to each direction unless reverse_rate."""

    ends: tuple[Ref, Ref]
    rate: Rate
    reverse_rate: Rate | None = None
    queue: int = 1000
    delay: Duration = 0.0       # one-way, each direction (e.g. the distance between two ISPs)
    jitter: Duration = 0.0
    loss: Percent = 0.0


class Topology(Strict):
    """Sites are switches (Linux bridges); core links join them. Hosts attach to a site."""

    name: str = "inline"
    description: str = ""
    switch: Literal["linuxbridge", "ovs"] = "linuxbridge"   # ovs: Open vSwitch in standalone mode
    sites: list[Ref] = Field(min_length=1)
    core: list[CoreLink] = []
    segments: list[Segment] = []    # ISP segments, as the generator (generator: isp) made them

    def segment(self, site: str) -> Segment | None:
        return next((s for s in self.segments if s.site == site), None)


def _topology_form(value: Any) -> str:
    if isinstance(value, str):
        return "name"
    if isinstance(value, dict) and "generator" in value:
        return "generated"
    return "plain"


TopologyRef = Annotated[Annotated[str, Tag("name")] | Annotated[Topology, Tag("plain")]
                        | Annotated[IspTopology, Tag("generated")], Discriminator(_topology_form)]


class Content(Strict):
    size: Size
    piece_size: Size | None = None


class Tracker(Strict):
    site: Ref | None = None
    port: int = 6969


class SeedFor(Strict):
    """Seed for this long after completing (a seeder: after the swarm starts), then stop."""

    duration: Duration


class SeedUntilRatio(Strict):
    """Seed until bytes uploaded reach ratio x content size (counted from the start), then stop."""

    ratio: float


def _seeding_form(value: Any) -> str:
    """Which form of `seeding:` was written, so an error speaks about that form only."""
    if isinstance(value, dict):
        return "SeedUntilRatio" if "ratio" in value else "SeedFor"
    return type(value).__name__ if isinstance(value, (SeedFor, SeedUntilRatio)) else "Word"


# forever: never stop; stop: stop the moment the download completes (leave at once);
# {duration: 10m}: seed that long, then stop; {ratio: 1.0}: seed until that share ratio
def _seeding_word(value: Any) -> str:
    if value not in ("forever", "stop"):
        raise ValueError(f"{excerpt(value)} is not a seeding policy: use forever, stop, {{duration: 10m}} or {{ratio: 1.0}}")
    return value


Seeding = Annotated[Annotated[Literal["forever", "stop"], BeforeValidator(_seeding_word), Tag("Word")] | Annotated[SeedFor, Tag("SeedFor")]
                    | Annotated[SeedUntilRatio, Tag("SeedUntilRatio")], Discriminator(_seeding_form)]


class Behaviour(Strict):
    """Client behaviour knobs, the same names for every client. None: the client's own default."""

    utp: bool | Literal["only"] | None = None   # True/None: uTP and TCP; False: TCP only; only: uTP only
    upload_limit: Rate | None = None      # the client's own cap on payload upload
    download_limit: Rate | None = None
    max_connections: int | None = None   # peer connections for the torrent
    upload_slots: int | None = None      # peers unchoked at once (regular slots)
    seeding: Seeding = "forever"         # enforced by the testbed through the client's API
    connectable: bool = True             # False: accepts no incoming connection (as behind a NAT)
    # require: only encrypted connections (MSE/PE handshake and RC4 payload); prefer: try
    # encrypted, accept plaintext (payload cipher as the client chooses); disable: plaintext only
    encryption: Literal["require", "prefer", "disable"] | None = None
    # the port the client listens on for peers: a number, `default` (the client's own default,
    # as installed: what a one-PC household shows), or None: the testbed's common port
    listen_port: int | Literal["default"] | None = None

    def seeding_policy(self) -> tuple[str, float | None]:
        """('forever'|'stop'|'duration'|'ratio', the number or None)."""
        if isinstance(self.seeding, SeedFor):
            return "duration", self.seeding.duration
        if isinstance(self.seeding, SeedUntilRatio):
            return "ratio", self.seeding.ratio
        return self.seeding, None


class ClientBuild(Strict):
    """A client build to test instead of the released one (a client's own CI comparing its
    new build): a local Docker image that carries the client, or a binary put in place of
    the client's executable, or a Debian package installed over the client's image. Paths
    are relative to the experiment file; load fills in sha256 (written here, it must match)."""
    image: str | None = None
    binary: str | None = None
    package: str | None = None
    sha256: str | None = None


class Limits(Strict):
    """What each member's container may use: its memory (a client beyond it is killed by the
    kernel, and the run records it) and its share of CPU cores."""

    memory: Size | None = None
    cpus: float | None = None


class PeerGroup(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9]{0,11}$")
    count: int = 1
    client: Ref = "transmission"
    access: AccessLink | None = None     # required, except behind a household (its link is the home's)
    site: Ref | None = None
    behaviour: Behaviour = Behaviour()
    arrivals: Arrivals = FlashCrowd()
    # a participation profile, a profile with fields overridden, or a mix by share; None:
    # every member participates fully, with the group's behaviour
    participation: ParticipationMix | None = None
    household: Ref | None = None        # the members live in this household group's homes
    forward: bool = False                # behind a household: the router forwards the client's port
    build: ClientBuild | None = None     # a client build to test instead of the image's release
    limits: Limits = Limits()            # each member's container: memory and CPU
    # packet captures of each member (tcpdump, pcap files in its host directory): `wire`, as
    # packets cross its interface (arriving ones before the delay element holds them);
    # `client`, as its own network stack gets and sends them (after the element); or `both`
    capture: Literal["wire", "client", "both"] | None = None


class Household(Strict):
    """Homes of one kind: `count` routers, each with its own access link, NAT (masquerade) on
    its WAN side and a LAN behind it. Peer groups join with `household: NAME`; their members
    are spread over the homes in turn (member i lives in home i modulo count)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9]{0,9}$")
    count: int = 1
    access: AccessLink                    # the home's one link: any profile, trace or data plan
    site: Ref | None = None               # the site (or ISP segment) the home's link ends on
    one_pc: bool = False                  # the clients share one network namespace (one computer)
    background: Background | None = None  # the home's other traffic, to and from the internet server
    probe: Duration | None = 0.2          # the router pings the internet server this often; null: never


class Experiment(Strict):
    version: Literal[1] = 1
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
    description: str = ""
    seed: int = 1
    content: Content
    topology: TopologyRef = "star"
    households: list[Household] = []
    policies: list[Policy] = []
    tracker: Tracker = Tracker()
    seeders: list[PeerGroup] = Field(min_length=1)
    peers: list[PeerGroup] = Field(min_length=1)
    faults: list[Fault] = []
    end: End = "all_done"
    timeout: Duration = 600.0
    repetitions: int = 1
    # how delay, jitter and loss are made: netem (the kernel's), userspace (an NFQUEUE element
    # at each receiving host), or auto: netem where the kernel has it, else userspace
    shaper: Literal["auto", "netem", "userspace"] = "auto"

    def groups(self) -> list[tuple[str, PeerGroup]]:
        return [("seeder", g) for g in self.seeders] + [("leecher", g) for g in self.peers]

    def home_names(self) -> dict[str, tuple[str, ...]]:
        """Each household group's homes (router host names), numbered when it has several."""
        return {h.name: tuple(f"{h.name}{i}" for i in range(1, h.count + 1)) if h.count > 1 else (h.name,)
                for h in self.households}

    def household(self, name: str) -> Household:
        return next(h for h in self.households if h.name == name)

    def host_names(self) -> dict[str, tuple[str, ...]]:
        """Each group's member names: the group's name, numbered when it has several members."""
        out = {}
        for _, g in self.groups():
            width = len(str(g.count))
            out[g.name] = tuple(f"{g.name}{i:0{width}d}" for i in range(1, g.count + 1)) if g.count > 1 \
                else (g.name,)
        return out

    @property
    def flash_crowd(self) -> bool:
        """Every peer arrives when the swarm starts: the setting the Kumar-Ross bound is for.
        (Leaving, capping or failing only slows a swarm, so the bound stays a lower bound.)"""
        return all(isinstance(g.arrivals, FlashCrowd) and g.arrivals.at == 0 for _, g in self.groups())

