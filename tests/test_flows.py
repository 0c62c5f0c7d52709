"""How netlink replies become the TCP table and the per-peer flows, without a kernel.

The replies are encoded with pyroute2's message classes, which follow the kernel's headers on
their own, so these tests check flows.py's hand-written decoding against a second reading.
"""
import socket
import struct
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyroute2.netlink.diag import inet_diag_msg
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from testbed import flows, wire
from testbed.flows import Conn, Socket, Tuple

HOST, OTHER, THIRD = "198.18.0.5", "198.18.0.6", "198.18.0.7"
TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP


def payload(msg) -> bytes:
    msg.encode()
    return bytes(msg.data[16:])         # without the nlmsghdr


def diag(src: str, sport: int, dst: str, dport: int, *, family=socket.AF_INET, inode=1, wqueue=0, info=None) -> bytes:
    def words(addr: str) -> tuple:
        raw = socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)
        return struct.unpack(">4I", raw.ljust(16, b"\0"))
    m = inet_diag_msg()
    m.update(idiag_family=family, idiag_state=1, idiag_sport=sport, idiag_dport=dport, idiag_src=words(src),
             idiag_dst=words(dst), idiag_inode=inode, idiag_wqueue=wqueue, idiag_rqueue=5)
    if info is not None:
        m["attrs"] = [("INET_DIAG_INFO", info)]
    return payload(m)


def tuple_attrs(src: str, sport: int, dst: str, dport: int, proto: int) -> dict:
    v = "V6" if ":" in src else "V4"
    ports = ([("CTA_PROTO_SRC_PORT", sport), ("CTA_PROTO_DST_PORT", dport)] if proto in (TCP, UDP)
             else [("CTA_PROTO_ICMP_ID", 7), ("CTA_PROTO_ICMP_TYPE", 8), ("CTA_PROTO_ICMP_CODE", 0)])
    return {"attrs": [("CTA_TUPLE_IP", {"attrs": [(f"CTA_IP_{v}_SRC", src), (f"CTA_IP_{v}_DST", dst)]}),
                      ("CTA_TUPLE_PROTO", {"attrs": [("CTA_PROTO_NUM", proto), *ports]})]}


def conntrack(src: str, sport: int, dst: str, dport: int, proto=TCP, counters=((3, 300), (2, 120))) -> bytes:
    m = nfct_msg()
    m["nfgen_family"] = socket.AF_INET6 if ":" in src else socket.AF_INET
    m["attrs"] = [("CTA_TUPLE_ORIG", tuple_attrs(src, sport, dst, dport, proto)),
                  ("CTA_TUPLE_REPLY", tuple_attrs(dst, dport, src, sport, proto)), ("CTA_STATUS", 14)]
    if counters:
        m["attrs"] += [(name, {"attrs": [("CTA_COUNTERS_PACKETS", p), ("CTA_COUNTERS_BYTES", b)]})
                       for name, (p, b) in zip(("CTA_COUNTERS_ORIG", "CTA_COUNTERS_REPLY"), counters)]
    return payload(m)


def test_a_diag_reply_gives_ports_addresses_queue_and_tcp_info_bytes():
    s = flows.parse_socket(diag(HOST, 6666, OTHER, 40000, inode=77, wqueue=3000,
                                info={"tcpi_bytes_acked": 123456, "tcpi_bytes_received": 789, "tcpi_rtt": 50}))
    assert s == Socket(HOST, 6666, OTHER, 40000, 77, 3000, 123456, 789)


def test_ipv4_mapped_addresses_read_as_ipv4_so_they_match_conntrack():
    s = flows.parse_socket(diag("::ffff:" + HOST, 6666, "::ffff:" + OTHER, 40000, family=socket.AF_INET6))
    assert (s.local, s.remote) == (HOST, OTHER)
    assert flows.parse_socket(diag("fe80::1", 6666, "fe80::2", 1, family=socket.AF_INET6)).remote == "fe80::2"


def test_a_tcp_info_too_short_for_byte_counts_counts_none():
    short = diag(HOST, 6666, OTHER, 40000)
    short += struct.pack("=HH", 4 + 104, flows.INET_DIAG_INFO) + bytes(104)
    assert flows.parse_socket(short)[6:] == (0, 0)


def test_tcp_rows_keep_wire_tcp_table_rules():
    """The sockets of tests/test_wire.py's `ss` output give the table wire.tcp_table gives."""
    sockets = [Socket(HOST, 40000, OTHER, 6666, 101, 3000, 80000, 20),     # dialed
               Socket(HOST, 6666, THIRD, 50000, 102, 0, 1, 200000),        # accepted
               Socket(HOST, 6666, "198.18.0.8", 50001, 0, 0, 1, 0),        # in the backlog, never accepted
               Socket(HOST, 41000, "198.18.0.1", 6969, 103, 0, 300, 100),  # the tracker
               Socket(HOST, 6666, HOST, 40001, 104, 0, 5, 5)]              # to itself
    assert flows.tcp_rows(sockets, 6666) == {(40000, OTHER, 6666): (False, 80000, 20, 3000),
                                             (6666, THIRD, 50000): (True, 1, 200000, 0)}


def dump_chunks(payloads: list[bytes], seq: int, per_chunk: int) -> list[bytes]:
    """A sock_diag dump as the kernel sends it: replies packed several to a datagram, a stray
    reply to an abandoned request first, NLMSG_DONE at the end."""
    msgs = [flows.request(0, b"x" * 80, seq - 1, flags=0)] + \
        [flows.request(flows.TCPDIAG_GETSOCK, p, seq, flags=0) + bytes(-len(p) % 4) for p in payloads]
    msgs.append(flows.request(flows.NLMSG_DONE, bytes(4), seq, flags=0))
    return [b"".join(msgs[i:i + per_chunk]) for i in range(0, len(msgs), per_chunk)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([HOST, "::ffff:" + HOST, "fe80::1"]), st.sampled_from([6666, 40001, 40002]),
                          st.sampled_from([OTHER, THIRD, HOST, "fe80::2"]), st.sampled_from([6666, 50000, 6969]),
                          st.integers(0, 3).map(bool), st.integers(0, 2**40), st.booleans()), max_size=12),
       st.integers(1, 5))
def test_the_fast_table_is_tcp_rows_of_parse_socket_on_every_dump(socks, per_chunk):
    """The sampler's path (tcp_rows_from, decoding each connection's addresses once and
    looking for tcp_info where the last reply had it) gives the table of the reference
    decoding: datagram boundaries, attributes before tcp_info on some sockets and not others,
    a tcp_info too short for byte counts or none, and a cache filled by an earlier dump in
    another order included."""
    payloads = []
    for k, (local, lport, remote, rport, accepted, nbytes, short) in enumerate(socks):
        inode = 100 + k if accepted else 0          # each socket's own, 0: never accepted
        family = socket.AF_INET6 if ":" in local or ":" in remote else socket.AF_INET
        if family == socket.AF_INET6 and ":" not in remote:
            remote = "::ffff:" + remote
        if family == socket.AF_INET6 and ":" not in local:
            local = "::ffff:" + local
        p = diag(local, lport, remote, rport, family=family, inode=inode, wqueue=nbytes % 5000)
        # attributes before tcp_info as the kernel sends them (INET_DIAG_SHUTDOWN, u8, and the
        # cgroup id, u64), on some sockets only, so that tcp_info moves between replies; tcp_info
        # itself full, too short for byte counts, or absent
        if k % 3:
            p += struct.pack("=HH", 5, 8) + b"\0\0\0\0"
        if k % 2:
            p += struct.pack("=HHQ", 12, 21, 77)
        if short:
            p += struct.pack("=HH", 4 + 104, flows.INET_DIAG_INFO) + bytes(104) if nbytes % 2 else b""
        else:
            info = bytearray(232)
            struct.pack_into("=QQ", info, flows.TCP_INFO_BYTES_AT, nbytes, nbytes // 3)
            p += struct.pack("=HH", 4 + len(info), flows.INET_DIAG_INFO) + bytes(info)
        payloads.append(p)
    known: dict = {}
    for order in (payloads, payloads[::-1]):    # the second dump reads through the cache the first filled
        chunks = iter(dump_chunks(order, 9, per_chunk))
        assert flows.tcp_rows_from(chunks.__next__, 9, 6666, known) == flows.tcp_rows(map(flows.parse_socket, order), 6666)
    assert len(known) == sum(1 for s in socks if s[4])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([HOST, "::ffff:" + HOST]), st.sampled_from([6666, 40001]),
                          st.sampled_from([OTHER, THIRD, HOST]), st.sampled_from([6666, 50000, 6969]),
                          st.integers(0, 3).map(bool), st.integers(0, 2**40)), min_size=1, max_size=20),
       st.integers(1, 8), st.integers(-1, 19), st.sampled_from(["short", "moved", "none", "first"]))
def test_replies_alike_are_read_as_a_run_and_one_that_differs_is_not(socks, per_chunk, odd, how):
    """A real dump's replies are alike (one family, the same attributes: each peer's table
    every second), and are read as runs with one struct (netlink._run_of): the table is
    still the reference decoding's, and a reply unlike the others (tcp_info too short for
    byte counts, behind one more attribute, absent, or first among the same attributes, so
    that the reply is as long as the others) is read on its own, wherever it is."""
    payloads = []
    for k, (local, lport, remote, rport, accepted, nbytes) in enumerate(socks):
        family = socket.AF_INET6 if ":" in local else socket.AF_INET
        if family == socket.AF_INET6:
            remote = "::ffff:" + remote
        p = diag(local, lport, remote, rport, family=family, inode=100 + k if accepted else 0, wqueue=nbytes % 5000)
        others = struct.pack("=HH", 5, 8) + b"\0\0\0\0" + struct.pack("=HHQ", 12, 21, 77)
        if not (k == odd and how == "first"):
            p += others
        info = bytearray(232)
        struct.pack_into("=QQ", info, flows.TCP_INFO_BYTES_AT, nbytes, nbytes // 3)
        if k == odd and how == "short":
            info = info[:flows.TCP_INFO_BYTES_AT + 8]
        if k == odd and how == "moved":
            p += struct.pack("=HH", 5, 8) + b"\0\0\0\0"
        if not (k == odd and how == "none"):
            p += struct.pack("=HH", 4 + len(info), flows.INET_DIAG_INFO) + bytes(info)
        if k == odd and how == "first":
            p += others                             # the same length as the others, tcp_info elsewhere
        payloads.append(p)
    known: dict = {}
    for order in (payloads, payloads[::-1]):
        chunks = iter(dump_chunks(order, 9, per_chunk))
        assert flows.tcp_rows_from(chunks.__next__, 9, 6666, known) == flows.tcp_rows(map(flows.parse_socket, order), 6666)
    # replies all alike, one with its byte counts read and two more after it in one datagram:
    # those after it are read as runs
    first = next((k for k, (local, lport, remote, rport, accepted, _) in enumerate(socks) if accepted
                  and remote != local.removeprefix("::ffff:") and 6666 in (lport, rport)), len(socks))
    if first <= len(socks) - 3 and not 0 <= odd < len(socks):
        import testbed.netlink as netlink
        runs = []
        real = netlink._run_of

        def counted(chunk, at, *a):
            after = real(chunk, at, *a)
            runs.append(after > at)
            return after
        old, netlink._run_of = netlink._run_of, counted
        try:
            flows.tcp_rows_from(iter(dump_chunks(payloads, 9, 30)).__next__, 9, 6666, {})
        finally:
            netlink._run_of = old
        assert any(runs)


def test_an_error_reply_to_the_dump_is_raised():
    err = flows.request(flows.NLMSG_ERROR, struct.pack("=i", -1) + bytes(16), 4, flags=0)
    with pytest.raises(OSError):
        flows.tcp_rows_from(iter([err]).__next__, 4, 6666, {})


def test_netlink_messages_and_attributes_are_split_at_their_padded_lengths():
    chunk = flows.request(20, b"abcde", 7) + bytes(3) + flows.request(3, b"", 8)
    assert [(t, seq, len(p)) for t, seq, p in flows.messages(chunk)] == [(20, 7, 5), (3, 8, 0)]
    attrs = struct.pack("=HH", 5, 0x8001) + b"x\0\0\0" + struct.pack("=HH", 8, 2) + b"yyyy"
    assert flows.attributes(attrs) == {1: b"x", 2: b"yyyy"}      # the nested flag is masked off


def test_conntrack_entries_give_their_original_tuple_and_counters():
    assert flows.parse_conn(conntrack(OTHER, 50000, HOST, 6666, counters=((4, 4000), (3, 150)))) == \
        Conn(Tuple(TCP, OTHER, 50000, HOST, 6666), 4, 4000, 3, 150)
    assert flows.parse_conn(conntrack("fe80::2", 6666, "fe80::1", 6666, proto=UDP)).tuple.src == "fe80::2"


def test_entries_without_counters_or_neither_tcp_nor_udp_are_left_out():
    assert flows.parse_conn(conntrack(OTHER, 50000, HOST, 6666, counters=None)) is None   # before accounting
    assert flows.parse_conn(conntrack(OTHER, 0, HOST, 0, proto=socket.IPPROTO_ICMP)) is None


def test_flow_rows_are_per_remote_peer_and_direction_comes_from_the_local_address():
    local = {HOST, "127.0.0.1"}
    conns = [Conn(Tuple(TCP, HOST, 40000, OTHER, 6666), 10, 1000, 20, 30000),    # dialed: orig is out
             Conn(Tuple(TCP, THIRD, 50000, HOST, 6666), 8, 9000, 5, 500),       # accepted: orig is in
             Conn(Tuple(UDP, OTHER, 6666, HOST, 6666), 2, 2000, 3, 300),        # uTP, begun by the other
             Conn(Tuple(UDP, HOST, 6666, THIRD, 6666), 1, 100, 0, 0),
             Conn(Tuple(UDP, HOST, 6666, THIRD, 6666), 1, 50, 1, 60),           # same key: added up
             Conn(Tuple(TCP, HOST, 41000, "198.18.0.1", 6969), 1, 1, 1, 1),     # the tracker
             Conn(Tuple(TCP, HOST, 40002, HOST, 6666), 1, 1, 1, 1),             # to itself
             Conn(Tuple(TCP, OTHER, 1, THIRD, 6666), 1, 1, 1, 1)]               # forwarded
    row = lambda bo, bi, po, pi: {"bytes_out": bo, "bytes_in": bi, "packets_out": po, "packets_in": pi}
    assert flows.flow_rows(conns, local, 6666) == {
        ("tcp", OTHER, 6666): row(1000, 30000, 10, 20),
        ("tcp", THIRD, 50000): row(500, 9000, 5, 8),
        ("udp", OTHER, 6666): row(300, 2000, 3, 2),
        ("udp", THIRD, 6666): row(150, 60, 2, 1)}


def test_events_add_and_remove_tracked_flows_and_lookups_echo_their_tuple():
    tracked: flows.Tracked = {}
    new = conntrack(OTHER, 50000, HOST, 6666, counters=None)
    flows.track(tracked, flows.CTNETLINK | flows.CT_NEW, new)
    flows.track(tracked, flows.CTNETLINK | flows.CT_NEW, conntrack(OTHER, 0, HOST, 0, proto=socket.IPPROTO_ICMP))
    [(raw, (family, t))] = tracked.items()
    assert (family, t) == (socket.AF_INET, Tuple(TCP, OTHER, 50000, HOST, 6666))
    [(kind, seq, body)] = flows.messages(flows.lookup(family, raw, 42))
    assert (kind, seq, body[0]) == (flows.CTNETLINK | flows.CT_GET, 42, socket.AF_INET)
    assert flows.parse_tuple(flows.attributes(body, 4)[flows.CTA_TUPLE_ORIG]) == t
    flows.track(tracked, flows.CTNETLINK | flows.CT_DELETE, conntrack(OTHER, 50000, HOST, 6666))
    assert tracked == {}


def test_an_interfaces_own_address_is_ifa_local_when_there_is_one():
    ptp = ifaddrmsg()
    ptp.update(family=socket.AF_INET, attrs=[("IFA_ADDRESS", OTHER), ("IFA_LOCAL", HOST)])
    v6 = ifaddrmsg()
    v6.update(family=socket.AF_INET6, attrs=[("IFA_ADDRESS", "fe80::1")])
    assert [flows.parse_address(payload(m)) for m in (ptp, v6)] == [HOST, "fe80::1"]


def test_conntrack_is_hooked_in_with_the_hosts_rules_and_accounting_switched_on(monkeypatch):
    done = []
    monkeypatch.setattr(flows, "in_namespace", lambda path, make: done.append(("sysctl", path)))

    def run(argv, input, **kw):
        done.append((argv[0], argv[1], argv[2], input))
        return subprocess.CompletedProcess(argv, 0, "", "")
    monkeypatch.setattr(wire.subprocess, "run", run)
    wire.install(42, "p1", "eth0", accounting=True)
    # the rules (they load conntrack, whose sysctls exist only then) with the hook, then the
    # sysctls: before the host has an interface, so before any flow
    assert [(d[0], d[1], d[2]) for d in done[:-1]] == [("nsenter", "--net=/proc/42/ns/net", wire.RESTORE)]
    assert done[-1] == ("sysctl", "/proc/42/ns/net")
    assert "-A " + " ".join(wire.HOOK_RULE) in done[0][3] and "TB_GUARD" in done[0][3]   # with the other rules
    done.clear()
    wire.enable_accounting("/run/netns/x")                      # any namespace: both families hooked
    assert [d[2] for d in done[:-1]] == [wire.RESTORE, wire.RESTORE6] and done[-1] == ("sysctl", "/run/netns/x")
    assert "-j" not in wire.HOOK_RULE and "conntrack" in wire.HOOK_RULE     # it only has to be there
    done.clear()
    wire.install(43, "tracker", None)                            # a host without a client: no accounting
    assert [d[0] for d in done] == ["nsenter"] and "tb_flows" not in done[0][3]
