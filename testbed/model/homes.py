"""Households, ISP segments and the carriers' policies (schema, and the segment generator).

A household is a home router (NAT on its WAN side) with one access link, and a LAN behind
it with one or more clients; `one_pc: true` puts its clients in one network namespace, as
several clients installed on one computer. An ISP topology (`generator: isp`) is expanded
here into ordinary sites and core links: one core site per ISP, one site per segment, and
each segment joined to its core by an aggregation link whose rate follows from the stated
oversubscription. Policies act on a segment's aggregation link (congestion management, as
RFC 6057) or on the BitTorrent protocol itself (throttle, block, reset), and every action
they take is an event in the results.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from testbed.model.fields import Duration, Percent, Rate, Ref, Strict

# The address plan's limits, which validation checks: each home's LAN is a /26 of
# 198.18.128.0/17 (the plan's), so 512 homes of at most 61 clients each.
LAN_PREFIX = 26
MAX_HOMES = 2 ** (LAN_PREFIX - 17)


class Background(Strict):
    """Other (non-P2P) traffic of a household: TCP transfers to and from the internet server
    at the given rates, steady, or `on` for a while then `off` for a while, repeatedly."""

    up: Rate | None = None
    down: Rate | None = None
    on: Duration | None = None
    off: Duration | None = None


class Rfc6057(Strict):
    """Comcast's protocol-agnostic congestion management (RFC 6057, sections 4 and 6): while
    the segment's aggregation link is in a Near Congestion State (average utilisation over
    `window` above `port_threshold`), a subscriber whose average use over `window` is above
    `user_threshold` of its provisioned rate is marked Priority Best Effort; it is unmarked
    when its use falls below `release_threshold`. Marked traffic is served only with the
    capacity unmarked traffic leaves (HTB: priority 0 for unmarked, 7 for marked). The RFC's
    starting values: 70 % upstream port, 80 % downstream port, 70 % user, 50 % release, and
    15 minutes for every window (emulations usually scale the window down)."""

    port_threshold: Percent = 0.70
    down_port_threshold: Percent = 0.80
    user_threshold: Percent = 0.70
    release_threshold: Percent = 0.50
    window: Duration = 900.0
    check_every: Duration = 1.0


class ProtocolPolicy(Strict):
    """A carrier acting on BitTorrent recognised by deep packet inspection: the plaintext
    handshake ("\\x13BitTorrent protocol") in a TCP packet, or a uTP packet carrying it.
    An encrypted (MSE/PE) connection never shows it.

    throttle: every connection that showed the handshake is policed to `rate` in each
    direction; block: its packets are dropped from the handshake on, so it never starts;
    reset: each of its TCP packets that reaches the router is answered with a reset to its
    sender, so both ends are reset as soon as each sends (Comcast's 2007 Sandvine deployment
    forged resets; FCC 08-183). uTP flows are dropped under reset."""

    action: Literal["throttle", "block", "reset"]
    rate: Rate | None = None


class Policy(Strict):
    """Where a carrier's policy applies: a segment (an ISP segment's site) or every home of a
    household group."""

    segment: Ref | None = None
    household: Ref | None = None
    congestion: Rfc6057 | None = None     # on a segment only
    protocol: ProtocolPolicy | None = None


class Isp(Strict):
    """One ISP: `segments` access segments of `homes` subscribers each, joined to the ISP's
    core by aggregation links sized from the oversubscription ratio:
    segment upstream = homes x subscribed_up / oversubscription (and likewise down)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9]{0,7}$")
    segments: int = 1
    homes: int
    subscribed_up: Rate
    subscribed_down: Rate
    oversubscription: float
    down_oversubscription: float | None = None
    delay: Duration = 0.0                 # one-way, each direction of an aggregation link
    queue: int = 1000


class Transit(Strict):
    rate: Rate
    delay: Duration = 0.0
    queue: int = 1000


class IspTopology(Strict):
    """The input of the ISP-segment generator (`generator: isp`)."""

    generator: Literal["isp"]
    name: str = "isp"
    description: str = ""
    source: str = ""                      # where the numbers come from
    switch: Literal["linuxbridge", "ovs"] = "linuxbridge"
    isps: list[Isp] = Field(min_length=1, max_length=2)
    transit: Transit | None = None        # joins the first two ISPs' cores

    def segment_site(self, isp: Isp, i: int) -> str:
        return f"{isp.name}{i}"

    def expand(self) -> dict:
        """The ordinary topology (sites, core links) and the segments it is made of."""
        sites, core, segments = [], [], []
        for isp in self.isps:
            sites.append(isp.name)
            for i in range(1, isp.segments + 1):
                site = self.segment_site(isp, i)
                sites.append(site)
                up = isp.homes * isp.subscribed_up / isp.oversubscription
                down = isp.homes * isp.subscribed_down / (isp.down_oversubscription or isp.oversubscription)
                core.append({"ends": [site, isp.name], "rate": _bits(up), "reverse_rate": _bits(down),
                             "queue": isp.queue, "delay": f"{isp.delay}s"})
                segments.append({"site": site, "core": isp.name, "homes": isp.homes,
                                 "subscribed_up": _bits(isp.subscribed_up),
                                 "subscribed_down": _bits(isp.subscribed_down),
                                 "oversubscription": isp.oversubscription,
                                 "down_oversubscription": isp.down_oversubscription or isp.oversubscription})
        if self.transit is not None and len(self.isps) == 2:
            t = self.transit
            core.append({"ends": [self.isps[0].name, self.isps[1].name], "rate": _bits(t.rate), "queue": t.queue,
                         "delay": f"{t.delay}s"})
        return {"name": self.name, "description": self.description, "switch": self.switch, "sites": sites,
                "core": core, "segments": segments}


def _bits(rate_bps: float) -> str:
    return f"{rate_bps:.6f}bit"       # a rate with its unit, exactly (the schema takes no bare number)


class Segment(Strict):
    """A generated segment: its site, the core site its aggregation link joins, and what it
    was sized for."""

    site: str
    core: str
    homes: int
    subscribed_up: Rate
    subscribed_down: Rate
    oversubscription: float
    down_oversubscription: float
