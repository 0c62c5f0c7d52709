"""The kernel's netlink messages that testbed.flows sends and reads, packed and parsed with
`struct`: pure functions and constants, no socket (testbed.flows holds the sockets).

Written here rather than taken from pyroute2: its generic decoder takes about 80 us per
socket and 600 us per conntrack entry (measured), more than the `ss` process the sampler
replaced; the unit tests encode kernel replies with pyroute2 to check these against it.
"""
from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

# From linux/netlink.h, sock_diag.h, inet_diag.h, tcp.h, rtnetlink.h, if_addr.h, netfilter/nfnetlink*.h
NETLINK_ROUTE, NETLINK_SOCK_DIAG, NETLINK_NETFILTER = 0, 4, 12
NLM_F_REQUEST, NLM_F_DUMP, NLA_F_NESTED, NLA_TYPE_MASK = 0x1, 0x300, 0x8000, 0x3FFF
NLMSG_ERROR, NLMSG_DONE = 2, 3
SO_RCVBUFFORCE = 33
TCPDIAG_GETSOCK, INET_DIAG_INFO, TCP_ESTABLISHED = 18, 2, 1
RTM_GETADDR, IFA_ADDRESS, IFA_LOCAL = 22, 1, 2
CTNETLINK, CT_NEW, CT_GET, CT_DELETE = 1 << 8, 0, 1, 2
NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY = 1, 3
CTA_TUPLE_ORIG, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY = 1, 9, 10
CTA_TUPLE_IP, CTA_TUPLE_PROTO, CTA_IP_V4_SRC, CTA_IP_V6_SRC = 1, 2, 1, 3      # each DST is SRC + 1
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2
PROTOCOLS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp"}

HEADER, ATTR = struct.Struct("=IHHII"), struct.Struct("=HH")   # nlmsghdr, nlattr
DIAG_MSG_SIZE = 72                      # struct inet_diag_msg
TCP_INFO_BYTES_AT = 120                 # tcpi_bytes_acked, tcpi_bytes_received (u64) in struct tcp_info
V4_MAPPED = bytes(10) + b"\xff\xff"
BATCH = 128                             # lookups per send: all their replies must fit the receive buffer


TcpRow = tuple[bool, int, int, int]     # inbound, bytes acked, bytes received, send queue
FLOW_FIELDS = ("bytes_out", "bytes_in", "packets_out", "packets_in")


class Socket(NamedTuple):
    local: str
    local_port: int
    remote: str
    remote_port: int
    inode: int
    send_queue: int
    bytes_acked: int
    bytes_received: int


class Tuple(NamedTuple):
    """A conntrack flow in its original direction: src sent the first packet."""
    proto: int
    src: str
    src_port: int
    dst: str
    dst_port: int


class Conn(NamedTuple):
    tuple: Tuple
    packets_orig: int
    bytes_orig: int
    packets_reply: int
    bytes_reply: int


class Entries(NamedTuple):
    """One reading of a namespace's conntrack entries with the peer port at either end, each
    known by its original tuple as the kernel sent it."""
    live: dict[bytes, Conn]             # the entries looked up now, with their counters now
    finished: list[tuple[bytes, Conn]]  # those that ended since the last reading, with their last counters
    local: set[str]                     # the namespace's own addresses


def address(raw: bytes) -> str:
    """Text form of a 4- or 16-byte address; IPv4-mapped IPv6 as plain IPv4, as conntrack has it."""
    if len(raw) == 16 and raw[:12] == V4_MAPPED:
        raw = raw[12:]
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def request(msg_type: int, body: bytes, seq: int, flags: int = NLM_F_DUMP) -> bytes:
    return HEADER.pack(HEADER.size + len(body), msg_type, NLM_F_REQUEST | flags, seq, 0) + body


def messages(chunk: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, sequence number, payload) of each netlink message in one datagram."""
    at = 0
    while at + HEADER.size <= len(chunk):
        length, msg_type, _, seq, _ = HEADER.unpack_from(chunk, at)
        if length < HEADER.size:
            return
        yield msg_type, seq, chunk[at + HEADER.size:at + length]
        at += (length + 3) & ~3


def attributes(data: bytes, at: int = 0) -> dict[int, bytes]:
    """Netlink attributes from `at` to the end of `data`: payload by type."""
    found = {}
    while at + ATTR.size <= len(data):
        length, kind = ATTR.unpack_from(data, at)
        if length < ATTR.size:
            break
        found[kind & NLA_TYPE_MASK] = data[at + ATTR.size:at + length]
        at += (length + 3) & ~3
    return found


def parse_socket(payload: bytes) -> Socket:
    """A sock_diag reply: struct inet_diag_msg, then attributes, tcp_info among them. With
    tcp_rows, the plain statement of the TCP table's reading: the unit tests check it against
    pyroute2's decoding, and the sampler's tcp_rows_from against it."""
    sport, dport = struct.unpack_from(">HH", payload, 4)
    _, wqueue, _, inode = struct.unpack_from("=IIII", payload, 56)
    size = 4 if payload[0] == socket.AF_INET else 16
    info = attributes(payload, DIAG_MSG_SIZE).get(INET_DIAG_INFO, b"")
    # an old kernel's shorter tcp_info has no byte counts, and `ss` prints none
    acked, received = struct.unpack_from("=QQ", info, TCP_INFO_BYTES_AT) if len(info) >= TCP_INFO_BYTES_AT + 16 else (0, 0)
    return Socket(address(payload[8:8 + size]), sport, address(payload[24:24 + size]), dport, inode, wqueue, acked, received)


def tcp_rows(sockets: Iterable[Socket], peer_port: int) -> dict[tuple, TcpRow]:
    """The table of `wire.tcp_table`, by its rules: only sockets the client holds (inode != 0;
    one the kernel completed in a listen backlog that the client never accepted is not its
    connection), with the peer port at either end, not to itself. All peers listen on the same
    port: a connection to that remote port was dialed, one from another remote port accepted."""
    return {(s.local_port, s.remote, s.remote_port): (s.remote_port != peer_port, s.bytes_acked, s.bytes_received, s.send_queue)
            for s in sockets if s.inode and peer_port in (s.local_port, s.remote_port) and s.remote != s.local}


Ident = tuple[tuple, bool] | None       # (row key, inbound), or None: not a row of the table
DIAG_ID, DIAG_TAIL = struct.Struct(">HH"), struct.Struct("=I4xI")   # ports; wqueue, (uid skipped) inode
BYTES = struct.Struct("=QQ")


def ident(payload: bytes, at: int, peer_port: int) -> Ident:
    """What `tcp_rows` makes of a socket's addresses and ports (a diag reply's payload at `at`)."""
    size = 4 if payload[at] == socket.AF_INET else 16
    sport, dport = DIAG_ID.unpack_from(payload, at + 4)
    local, remote = address(payload[at + 8:at + 8 + size]), address(payload[at + 24:at + 24 + size])
    if peer_port not in (sport, dport) or remote == local:
        return None
    return (sport, remote, dport), dport != peer_port


_LAYOUTS: dict[tuple[int, int], struct.Struct] = {}


def _record(length: int, info_at: int) -> struct.Struct | None:
    """A struct reading, from one sock_diag reply of `length` bytes (header included) whose
    tcp_info attribute starts `info_at` bytes into its body: its header's length, type and
    sequence number, its send queue and inode, tcp_info's attribute header and byte counts;
    padded to the next reply. None if tcp_info's byte counts do not fit."""
    stride = (length + 3) & ~3
    used = HEADER.size + info_at + ATTR.size + TCP_INFO_BYTES_AT + BYTES.size
    if info_at < DIAG_MSG_SIZE or used > length:
        return None
    if (rec := _LAYOUTS.get((length, info_at))) is None:
        rec = _LAYOUTS[length, info_at] = struct.Struct(
            f"=IH2xI4x60xI4xI{info_at - DIAG_MSG_SIZE}xHH{TCP_INFO_BYTES_AT}xQQ{stride - used}x")
    return rec


def _run_of(chunk: bytes, at: int, seq: int, peer_port: int, known: dict, seen: dict, rows: dict,
            length: int, info_at: int) -> int:
    """The replies from `at` on that have the layout of the one before (`length`, tcp_info at
    `info_at`): a dump's replies are alike, so they are read with one struct.iter_unpack, in C,
    rather than attribute by attribute. Stops at the first that differs; returns where."""
    stride = (length + 3) & ~3
    n = (len(chunk) - at) // stride
    if n < 2 or (rec := _record(length, info_at)) is None:
        return at
    budget = length - HEADER.size - info_at           # tcp_info must end within its reply
    for got_len, kind, got, wqueue, inode, alen, akind, acked, received in rec.iter_unpack(
            memoryview(chunk)[at:at + n * stride]):
        if got_len != length or got != seq or kind in (NLMSG_DONE, NLMSG_ERROR) \
                or akind & NLA_TYPE_MASK != INET_DIAG_INFO or not TCP_INFO_BYTES_AT + BYTES.size <= alen - ATTR.size \
                or alen > budget:
            return at
        if inode:               # else not the client's: completed in a listen backlog, never accepted
            if (it := known.get(inode, 0)) == 0:
                it = ident(chunk, at + HEADER.size, peer_port)
            seen[inode] = it
            if it is not None:
                rows[it[0]] = (it[1], acked, received, wqueue)
        at += stride
    return at


def tcp_rows_from(recv: Callable[[], bytes], seq: int, peer_port: int, known: dict[int, Ident]) -> dict[tuple, TcpRow]:
    """`tcp_rows(map(parse_socket, replies))` straight from the datagrams of one sock_diag dump
    (sequence number `seq`; `recv` gives the next datagram), for the sampler's hot path: each
    peer's table is read every second, and a peer of a large swarm has ~50 connections. A
    socket's addresses and ports are decoded once (`known`: its inode -> Ident, keeping those
    seen in this dump); after that only its queue, inode and byte counts are unpacked, in
    place, with no message copied, and tcp_info is looked for where the last reply had it;
    replies laid out as the one before are read as a run (`_run_of`). Raises OSError on an
    error reply."""
    rows: dict[tuple, TcpRow] = {}
    seen: dict[int, Ident] = {}
    head, attr, tail, counts = HEADER.unpack_from, ATTR.unpack_from, DIAG_TAIL.unpack_from, BYTES.unpack_from
    info_at = 0                     # tcp_info's attribute, from the start of the last reply's body
    like = None                     # (length, info_at) of the last reply read with its byte counts
    while True:
        chunk = recv()
        at, end = 0, len(chunk)
        while at + HEADER.size <= end:
            if like is not None and head(chunk, at)[0] == like[0] \
                    and (after := _run_of(chunk, at, seq, peer_port, known, seen, rows, *like)) > at:
                at = after
                continue
            length, kind, _, got, _ = head(chunk, at)
            if length < HEADER.size:
                break
            body, stop = at + HEADER.size, at + length
            at += (length + 3) & ~3
            if got != seq:
                continue
            if kind == NLMSG_DONE or kind == NLMSG_ERROR:
                if kind == NLMSG_ERROR and (err := -struct.unpack_from("=i", chunk, body)[0]):
                    raise OSError(err, os.strerror(err))
                known.clear()
                known.update(seen)
                return rows
            wqueue, inode = tail(chunk, body + 60)
            if not inode:
                continue            # not the client's: completed in a listen backlog, never accepted
            if (it := known.get(inode, 0)) == 0:
                it = ident(chunk, body, peer_port)
            seen[inode] = it
            if it is None:
                continue
            a = body + info_at
            if not info_at or a + ATTR.size > stop or attr(chunk, a)[1] & NLA_TYPE_MASK != INET_DIAG_INFO:
                a = body + DIAG_MSG_SIZE
                while a + ATTR.size <= stop:
                    alen, akind = attr(chunk, a)
                    if alen < ATTR.size or akind & NLA_TYPE_MASK == INET_DIAG_INFO:
                        break
                    a += (alen + 3) & ~3
                info_at = a - body
            if a + ATTR.size <= stop and (alen := attr(chunk, a)[0]) - ATTR.size >= TCP_INFO_BYTES_AT + 16 \
                    and a + alen <= stop and attr(chunk, a)[1] & NLA_TYPE_MASK == INET_DIAG_INFO:
                acked, received = counts(chunk, a + ATTR.size + TCP_INFO_BYTES_AT)
                like = (length, info_at)
            else:
                acked = received = 0    # no tcp_info, or an old kernel's without byte counts
            rows[it[0]] = (it[1], acked, received, wqueue)


def parse_tuple(payload: bytes) -> Tuple | None:
    """A CTA_TUPLE_ORIG attribute, or None if the flow is neither TCP nor UDP."""
    outer = attributes(payload)
    ip, l4 = attributes(outer[CTA_TUPLE_IP]), attributes(outer[CTA_TUPLE_PROTO])
    if (proto := l4[CTA_PROTO_NUM][0]) not in PROTOCOLS:
        return None
    src = CTA_IP_V4_SRC if CTA_IP_V4_SRC in ip else CTA_IP_V6_SRC
    (sport,), (dport,) = struct.unpack(">H", l4[CTA_PROTO_SRC_PORT]), struct.unpack(">H", l4[CTA_PROTO_DST_PORT])
    return Tuple(proto, address(ip[src]), sport, address(ip[src + 1]), dport)


def parse_conn(payload: bytes) -> Conn | None:
    """A ctnetlink entry (struct nfgenmsg, then attributes), or None if it is neither TCP nor UDP
    or has no counters (it began while accounting was off)."""
    top = attributes(payload, 4)
    if CTA_COUNTERS_REPLY not in top or (t := parse_tuple(top[CTA_TUPLE_ORIG])) is None:
        return None
    return Conn(t, *counters(payload))


def counters(payload: bytes) -> tuple[int, int, int, int] | None:
    """(packets, bytes) of the original direction, then of the reply, of a ctnetlink entry, or
    None if it has none. The sampler's hot path: a lookup's reply belongs to a flow already
    known, so only the two counter attributes are read (the whole entry, tuples included, took
    three times as long)."""
    at, orig, reply = 4, None, None
    while at + ATTR.size <= len(payload):
        length, kind = ATTR.unpack_from(payload, at)
        if length < ATTR.size:
            break
        kind &= NLA_TYPE_MASK
        if kind == CTA_COUNTERS_ORIG or kind == CTA_COUNTERS_REPLY:
            c = attributes(payload[at + ATTR.size:at + length])
            pair = struct.unpack(">Q", c[CTA_COUNTERS_PACKETS])[0], struct.unpack(">Q", c[CTA_COUNTERS_BYTES])[0]
            if kind == CTA_COUNTERS_ORIG:
                orig = pair
            else:
                reply = pair
        at += (length + 3) & ~3
    return (*orig, *reply) if orig and reply else None


Tracked = dict[bytes, tuple[int, Tuple]]   # CTA_TUPLE_ORIG payload: (address family, flow)


def track(tracked: Tracked, msg_type: int, payload: bytes) -> None:
    """Updates `tracked` from one ctnetlink message: an entry (from a dump or a new-flow event)
    adds its TCP or UDP flow, a destroy event removes it."""
    if (raw := attributes(payload, 4).get(CTA_TUPLE_ORIG)) is None:
        return
    if msg_type & 0xFF == CT_DELETE:
        tracked.pop(raw, None)
    elif (t := parse_tuple(raw)) is not None:
        tracked[raw] = (payload[0], t)


def lookup(family: int, raw_tuple: bytes, seq: int) -> bytes:
    """A request for one conntrack entry by its original tuple, as the kernel sent it."""
    attr = ATTR.pack(ATTR.size + len(raw_tuple), CTA_TUPLE_ORIG | NLA_F_NESTED) + raw_tuple
    return request(CTNETLINK | CT_GET, struct.pack("=BBH", family, 0, 0) + attr, seq, flags=0)


def flow_rows(conns: Iterable[Conn], local: set[str], peer_port: int) -> dict[tuple, dict[str, int]]:
    """{(proto, remote address, remote port): bytes and packets each way} for flows with the peer
    port at either end, in a namespace whose own addresses are `local` (a flow it began has a
    local source, one it accepted a local destination; no NAT inside it). Entries with the same
    key add up. Conntrack counts IP packets: bytes include IP and TCP/UDP headers."""
    table: dict[tuple, dict[str, int]] = {}
    for c in conns:
        t = c.tuple
        orig, reply = (c.packets_orig, c.bytes_orig), (c.packets_reply, c.bytes_reply)
        if t.src == t.dst:
            continue                    # the client's connection to itself
        if t.src in local:
            lport, remote, out, in_ = t.src_port, (t.dst, t.dst_port), orig, reply
        elif t.dst in local:
            lport, remote, out, in_ = t.dst_port, (t.src, t.src_port), reply, orig
        else:
            continue                    # forwarded through, not this namespace's
        if peer_port in (lport, remote[1]):
            row = table.setdefault((PROTOCOLS[t.proto], *remote), dict.fromkeys(FLOW_FIELDS, 0))
            for name, (packets, size) in (("out", out), ("in", in_)):
                row[f"packets_{name}"] += packets
                row[f"bytes_{name}"] += size
    return table


def parse_address(payload: bytes) -> str | None:
    """An RTM_NEWADDR reply (struct ifaddrmsg, then attributes): the interface's own address,
    IFA_LOCAL first because on a point-to-point link IFA_ADDRESS is the other end."""
    attrs = attributes(payload, 8)
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    return address(raw) if raw else None
