"""The emulated network's segments stretched over workers: on each worker a segment's bridge is
joined to the same segment's bridges on the other workers by a VXLAN device, one VNI per
segment, unicast to each other worker's underlay address (head-end replication: the
underlay needs no multicast, as between machines in different racks or clouds).

Pure: from the segments and the workers to each worker's `ip -batch` lines; Ansible carries
them out (playbooks/segments.yml), so the same lines are what a test reads.

Overhead: VXLAN wraps each Ethernet frame in outer Ethernet (14), IP (20), UDP (8) and
VXLAN (8) headers, 50 bytes a packet. The tunnel device's MTU is the underlay's less 50; the
harness's underlay carries 1550 so the emulated hosts keep 1500. A link that crosses workers
is shaped once, on the sending side's tunnel device (shape_lines), on the inner packets, so
its rate means what a one-machine link's does. The tunnel device counts inner IP bytes (the
kernel's iptunnel_xmit leaves the inner Ethernet header out), as the testbed's meters do;
the underlay carries each such packet as an Ethernet frame 64 bytes longer (ETHERNET +
OVERHEAD; measured in tests/integration/test_workers.py). With segmentation offload a
device counts a whole super-packet once, so the overhead on a real wire, one per MTU-sized
packet, is at least that.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

OVERHEAD = 50           # bytes a VXLAN packet adds on the underlay (IPv4 outer) to the inner frame
ETHERNET = 14           # the inner frame's own header, which the tunnel device's counters leave out
PORT = 4789             # IANA's VXLAN port
ZERO_MAC = "00:00:00:00:00:00"
NAME = re.compile(r"[A-Za-z0-9_-]{1,15}")     # what goes into ip, bridge and sysctl lines as it is


@dataclass(frozen=True)
class Segment:
    """One emulated segment that spans workers: its VNI and the bridge name it has on each."""
    vni: int
    bridge: str
    rate_bits: int | None = None        # a cap on what each worker sends into the segment

    def device(self) -> str:
        return f"{self.bridge}x"


def join_lines(segments: list[Segment], local: str, underlay_mtu: int = 1550) -> list[str]:
    """A worker's `ip -batch` lines: each segment's bridge and its VXLAN device into it, left
    down (IPv6 goes off on them first, see up_lines)."""
    return [line for s in segments for line in (f"link add {s.bridge} type bridge",
                                                *attach_lines([s], local, underlay_mtu))]


def attach_lines(segments: list[Segment], local: str, underlay_mtu: int = 1550) -> list[str]:
    """Each segment's VXLAN device into its bridge, which exists (a shard's switch), left down."""
    out = []
    for s in segments:
        if not 1 <= s.vni < 1 << 24:
            raise ValueError(f"VNI {s.vni} is not in 1..16777215")
        if not NAME.fullmatch(s.device()):
            raise ValueError(f"bridge name {s.bridge!r}: its tunnel's name must be 1 to 15 letters, digits, _ or -")
        dev = s.device()
        out += [f"link add {dev} type vxlan id {s.vni} local {local} dstport {PORT} nolearning",
                f"link set {dev} mtu {underlay_mtu - OVERHEAD}",
                f"link set {dev} master {s.bridge}"]
    return out


def flood_lines(segments: list[Segment], remotes: list[str]) -> list[str]:
    """`bridge -batch` lines: a frame for an unknown or broadcast address goes to every other
    worker (one all-zeros entry per remote)."""
    return [f"fdb append {ZERO_MAC} dev {s.device()} dst {r}" for s in segments for r in remotes]


def devices(segments: list[Segment]) -> list[str]:
    return [d for s in segments for d in (s.bridge, s.device())]


def up_lines(segments: list[Segment]) -> list[str]:
    return [f"link set {d} up" for d in devices(segments)]


def shape_lines(segments: list[Segment]) -> list[str]:
    """`tc -batch` lines: each capped segment's tunnel device gets a token bucket of its rate,
    on what it sends (the inner packets, before encapsulation)."""
    out = []
    for s in segments:
        if s.rate_bits:
            burst = max(1600, s.rate_bits // 8 // 100)      # 10 ms of the rate, at least a packet
            out.append(f"qdisc replace dev {s.device()} root tbf rate {s.rate_bits}bit burst {burst} latency 50ms")
    return out


def leave_lines(segments: list[Segment]) -> list[str]:
    """Removing a segment's bridge removes nothing else: its tunnel device goes explicitly."""
    return [line for s in segments for line in (f"link del {s.device()}", f"link del {s.bridge}")]


def per_worker(segments: list[Segment], underlays: dict[str, str]) -> dict[str, dict[str, list[str]]]:
    """{worker: {"ip", "fdb", "devices", "up", "tc", "leave"}} for all workers: what
    playbooks/segments.yml carries out on each."""
    return {w: {"ip": join_lines(segments, addr), "fdb": flood_lines(segments, [a for v, a in underlays.items() if v != w]),
                "devices": devices(segments), "up": up_lines(segments),
                "tc": shape_lines(segments), "leave": leave_lines(segments)}
            for w, addr in underlays.items()}
