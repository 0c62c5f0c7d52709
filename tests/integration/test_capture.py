"""Packet captures at the wire and where the client is, proven from the pcap files.

A leecher behind a line with 80 ms of delay and 3 % loss on its download (the userspace delay
element, this machine having no netem) captures at both points while it downloads from the
origin over TCP. In the files: each packet the element let through is in both, the client's
copy later by the path's delay; the packets it dropped are only in the wire's.
"""
from __future__ import annotations

import json
import socket
import statistics
import struct
from pathlib import Path

import pytest

from testbed.run import run
from tests.integration.conftest import small_experiment

DELAY_S, LOSS = 0.080, 0.03
LINKTYPE_ETHERNET, LINKTYPE_NFLOG, NFULA_PAYLOAD = 1, 239, 9


def pcap(path: Path) -> tuple[int, list[tuple[float, bytes]]]:
    """(link type, [(time, IPv4 packet)]) of a pcap file (microsecond, little-endian: tcpdump's)."""
    data = path.read_bytes()
    magic, _, _, _, _, _, linktype = struct.unpack_from("<IHHiIII", data, 0)
    assert magic == 0xA1B2C3D4, f"{path.name}: not a little-endian microsecond pcap"
    at, out = 24, []
    while at + 16 <= len(data):
        sec, usec, caplen, _ = struct.unpack_from("<IIII", data, at)
        frame = data[at + 16:at + 16 + caplen]
        at += 16 + caplen
        if linktype == LINKTYPE_ETHERNET:
            if frame[12:14] == b"\x08\x00":
                out.append((sec + usec / 1e6, frame[14:]))
        else:       # NFLOG: a 4-byte header, then TLVs (16-bit length and type, host order), 4-aligned
            i = 4
            while i + 4 <= len(frame):
                length, kind = struct.unpack_from("<HH", frame, i)
                if length < 4:
                    break
                if kind == NFULA_PAYLOAD:
                    out.append((sec + usec / 1e6, frame[i + 4:i + length]))
                i += (length + 3) & ~3
    return linktype, out


def key(ip: bytes) -> tuple | None:
    """A TCP segment's identity: addresses, IP id, ports, sequence number."""
    if len(ip) < 40 or ip[9] != socket.IPPROTO_TCP:
        return None
    ihl = (ip[0] & 0x0F) * 4
    return (ip[12:16], ip[16:20], ip[4:6], ip[ihl:ihl + 8])


@pytest.fixture(scope="module")
def captured(docker_client, tmp_path_factory):
    exp = small_experiment(content={"size": "2MiB"}, seed=3, timeout="3m", peers=[
        {"name": "leecher", "count": 1, "client": "aria2", "capture": "both",
         "access": {"up": "4mbit", "down": "8mbit", "delay": {"up": "0ms", "down": "80ms"}, "loss": {"up": "0%", "down": "3%"}}}])
    result = run(exp, tmp_path_factory.mktemp("results"))
    host = result.run_dir / "hosts" / "leecher"
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    me = socket.inet_aton(next(h["data_ip"] for h in manifest["hosts"] if h["name"] == "leecher"))
    return result, host, me


def test_both_captures_were_written_and_counted(captured):
    result, host, _ = captured
    assert result.summary["status"] == "complete", result.summary["error"]
    got = result.summary["captures"]["leecher"]
    assert set(got) == {"wire", "client"}
    assert pcap(host / "capture-wire.pcap")[0] == LINKTYPE_ETHERNET
    assert pcap(host / "capture-client.pcap")[0] == LINKTYPE_NFLOG
    for point in got.values():
        assert point["captured"] > 100 and point["dropped_by_kernel"] == 0


def test_the_client_sees_arriving_packets_one_delay_later_and_not_the_dropped_ones(captured):
    _, host, me = captured
    wire = {k: t for t, ip in pcap(host / "capture-wire.pcap")[1] if ip[16:20] == me and (k := key(ip))}
    client = {k: t for t, ip in pcap(host / "capture-client.pcap")[1] if ip[16:20] == me and (k := key(ip))}
    assert len(wire) > 500
    # everything the client got crossed the wire first, one path delay (the origin's up
    # delay is 0, the leecher's down delay 80 ms) earlier
    assert set(client) <= set(wire)
    held = [client[k] - wire[k] for k in client]
    assert DELAY_S - 0.005 <= statistics.median(held) <= DELAY_S + 0.010
    assert min(held) >= DELAY_S - 0.005
    # what the element dropped is on the wire only: 3 % of n > 500 packets. Binomial(n, 0.03)
    # falls outside [0.5 %, 7 %] with probability below 1e-4 at n = 500 (less for larger n)
    lost = 1 - len(client) / len(wire)
    assert 0.005 <= lost <= 0.07, f"{len(wire) - len(client)} of {len(wire)} arriving packets not seen by the client"
