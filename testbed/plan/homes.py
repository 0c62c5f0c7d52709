"""Planning households: routers, LANs and who lives where (pure).

Addresses: the WAN side (every router, every peer not in a household, the tracker and the
internet server) is 198.18.0.0/17; each home's LAN is a /26 of 198.18.128.0/17, the router
taking its first address. Both halves are in 198.18.0.0/15 (RFC 2544), like everything the
testbed addresses.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from testbed.model import Experiment
from testbed.model.homes import LAN_PREFIX, MAX_HOMES, Background, ProtocolPolicy, Rfc6057

LAN_NET = ipaddress.ip_network("198.18.128.0/17")
SERVER = "internet"          # the host at the core that background traffic and probes talk to
RPC_PORT_BASE = 7100         # control ports of clients sharing one PC (their defaults may clash)
IPERF_PORT_BASE = 5201       # the internet server's iperf3 listeners, two per home with background


@dataclass(frozen=True)
class HomePlan:
    name: str                     # the router host's name
    kind: str                     # the household group it belongs to
    site: str                     # where its access link ends
    lan_net: str                  # CIDR
    lan_ip: str                   # the router's LAN address: its clients' gateway
    lan_switch: str               # the LAN's switch (logical name)
    one_pc: bool
    members: tuple[str, ...] = ()
    forwards: tuple[str, ...] = ()   # members whose listening port the router forwards
    background: Background | None = None
    probe_s: float | None = None
    iperf_ports: tuple[int, int] | None = None   # (upload, download) listeners at the internet server


@dataclass(frozen=True)
class SegmentPolicyPlan:
    """RFC 6057 on one segment's aggregation link."""

    segment: str                  # the segment's site
    core: str
    up_rate_bps: float            # the aggregation link's rates
    down_rate_bps: float
    subscribers: tuple[tuple[str, str, float, float], ...]   # (host, WAN address, provisioned up, down)
    rule: Rfc6057


@dataclass(frozen=True)
class ProtocolPolicyPlan:
    where: str                    # 'segment X' or 'household X', for the results
    routers: tuple[str, ...]      # the homes' routers that carry it out
    rule: ProtocolPolicy


def background_flows(home: HomePlan) -> list[tuple[int, float, str]]:
    """A home's background transfers: (server port, rate, iperf3's reverse flag), up then down."""
    bg = home.background
    if bg is None or home.iperf_ports is None:
        return []
    return [(port, rate, reverse) for port, rate, reverse in ((home.iperf_ports[0], bg.up, ""),
                                                              (home.iperf_ports[1], bg.down, " -R"))
            if rate is not None]


def lan_nets(count: int) -> list[ipaddress.IPv4Network]:
    if count > MAX_HOMES:
        raise ValueError(f"{count} homes is more than the {MAX_HOMES} LANs of the address plan")
    return list(LAN_NET.subnets(new_prefix=LAN_PREFIX))[:count]


def home_of(exp: Experiment) -> dict[str, str]:
    """Every household member's home (router name): member i of a group in home i mod count."""
    homes = exp.home_names()
    names = exp.host_names()
    out = {}
    for _, g in exp.groups():
        if g.household is not None:
            routers = homes[g.household]
            for i, name in enumerate(names[g.name]):
                out[name] = routers[i % len(routers)]
    return out
