"""A peer's TCP connections and per-peer flows, read over netlink handles kept open in its
network namespace: sampling starts no process (`wire.tcp_table` runs `nsenter ... ss` per peer
per sample, most of a core at 100 peers).

The handles are made inside the namespace once (a socket stays in the namespace it was made
in) and ask the kernel directly:
- sock_diag, what `ss` uses: established TCP sockets and their tcp_info, the table of
  `wire.tcp_table`;
- ctnetlink: connection tracking's byte and packet counters per remote peer, for TCP and UDP.
  uTP is one UDP socket for all peers; only conntrack, which tracks each remote address and
  port as a flow, tells them apart.

Conntrack is not dumped each sample: a dump walks the machine's whole conntrack hash (262144
buckets here, shared by all namespaces), about 9 ms of kernel time even for an empty namespace.
The handle follows the namespace's new/destroy events and looks each flow up by its tuple (a
hash lookup); it dumps only at the first call and after events were lost.

Messages are packed and read with `struct` on purpose (in testbed/netlink.py): pyroute2's generic decoder takes about
80 us per socket and 600 us per conntrack entry (measured), more than the `ss` process this
replaces, and its sockets belong to the thread that made them, while the sampler calls from a
thread pool. pyroute2 enters the namespace; the unit tests encode kernel replies with it.

Conntrack counts a flow only if, when the flow began, the namespace tracked connections with
accounting on: `wire.enable_accounting` (or `wire.install` for a client's host) does both,
before the client starts. A flow leaves `flows()` when conntrack forgets it (a closed TCP
connection after TIME_WAIT, a UDP flow idle past its timeout). When two uTP peers send their
first datagrams to each other at the same instant, both create an entry for one tuple; the
kernel merges the loser into the winner (nf_ct_resolve_clash), and that one packet is counted in
the other direction (the total is right; measured: 9 of 200 forced-simultaneous flows off by one
packet).
"""
from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from pyroute2.netns import setns

from testbed.netlink import (  # noqa: F401 (also reached as flows.NAME by callers and tests)
    NETLINK_ROUTE, NETLINK_SOCK_DIAG, NETLINK_NETFILTER, NLM_F_REQUEST, NLM_F_DUMP, NLA_F_NESTED,
    NLA_TYPE_MASK, NLMSG_ERROR, NLMSG_DONE, SO_RCVBUFFORCE, TCPDIAG_GETSOCK, INET_DIAG_INFO, TCP_ESTABLISHED,
    RTM_GETADDR, IFA_ADDRESS, IFA_LOCAL, CTNETLINK, CT_NEW, CT_GET, CT_DELETE, NFNLGRP_CONNTRACK_NEW,
    NFNLGRP_CONNTRACK_DESTROY, CTA_TUPLE_ORIG, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY, CTA_TUPLE_IP,
    CTA_TUPLE_PROTO, CTA_IP_V4_SRC, CTA_IP_V6_SRC, CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT,
    CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES, PROTOCOLS, HEADER, ATTR, DIAG_MSG_SIZE, TCP_INFO_BYTES_AT,
    V4_MAPPED, BATCH, TcpRow, FLOW_FIELDS, Socket, Tuple, Conn, Entries, address, request, messages,
    attributes, parse_socket, tcp_rows, tcp_rows_from, parse_tuple, parse_conn, counters, Tracked, track, lookup, flow_rows,
    parse_address)

T = TypeVar("T")
OPEN_CHECK_S = 5.0      # _open looks at the namespace's path at most this often


def in_namespace(ns_path: str, make: Callable[[], T]) -> T:
    """make() run inside the network namespace at `ns_path`; sockets it makes stay there.
    setns(2) moves only the calling thread, so a throwaway thread enters, runs it and ends."""
    result: list = []

    def enter_and_make() -> None:
        try:
            fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd, flags=0, fork=False)
            finally:
                os.close(fd)
            result.append(("ok", make()))
        except BaseException as exc:    # handed to the caller's thread
            result.append(("error", exc))

    thread = threading.Thread(target=enter_and_make, name="tb-netns")
    thread.start()
    thread.join()
    outcome, value = result[0]
    if outcome == "error":
        raise value
    return value


class NamespaceFlows:
    """Netlink handles in one network namespace (`/proc/<pid>/ns/net`, `/run/netns/<name>`),
    safe to call from any thread. They keep the namespace, and so its interfaces, alive: close
    them when the peer is gone (a call that finds the namespace gone closes them itself)."""

    def __init__(self, ns_path: str, timeout: float = 5.0, fresh: bool = False) -> None:
        """`fresh`: made before anything in the namespace could have a flow with the peer port
        (at set-up, before its client starts). Every flow is then learnt from its events from
        the start, and the whole conntrack table is read only if events were lost. A dump walks
        the machine's whole conntrack hash, whatever the namespace holds (262144 buckets on
        the CI machine): 7 ms of CPU for an empty namespace on an idle machine, at each peer's
        first reading."""
        self.ns_path = ns_path
        self._identity = self._namespace()
        self._lock = threading.Lock()
        self._seq = 0
        self._local: set[str] = set()
        self._tracked: Tracked = {}
        self._finished: list[tuple[bytes, Conn]] = []   # destroyed tracked flows, since the last reading
        self._missed: set[bytes] = set()                # tracked flows a lookup did not find once
        self._stale = not fresh         # read the whole conntrack table at the first call
        self._checked = float("-inf")   # when _open last looked at the namespace's path
        self._known: tuple[int, dict] = (0, {})     # tcp_table's decoded sockets, for one peer port
        self._established: dict[tuple, TcpRow] | None = None     # tcp_table's last reading
        self._version = 0                           # of the tracked flows: one more at each change
        self._wanted: tuple[tuple, list[bytes]] = ((), [])    # the flows entries() looks up, for that version
        self._socks: list[socket.socket] | None = in_namespace(ns_path, lambda: [
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, p)
            for p in (NETLINK_SOCK_DIAG, NETLINK_NETFILTER, NETLINK_NETFILTER, NETLINK_ROUTE)])
        self._diag, self._ct, self._events, self._route = self._socks
        try:
            for s in (self._diag, self._ct, self._route):
                s.settimeout(timeout)
            self._events.setblocking(False)
            for s in (self._ct, self._events):  # room for a batch of lookups, and for seconds of events
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
            self._events.bind((0, 1 << (NFNLGRP_CONNTRACK_NEW - 1) | 1 << (NFNLGRP_CONNTRACK_DESTROY - 1)))
        except OSError:
            self._release()
            raise

    def _namespace(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.ns_path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _open(self) -> bool:
        """Whether the path still names the namespace of the handles; closes them if not.
        Looked at once in OPEN_CHECK_S: a stat of /proc/<pid>/ns/net was 3 % of the testbed's
        CPU in a 100-peer swarm, each peer's table read every second. Meanwhile a namespace
        whose process ended reads as it was left, with no sockets (the handles keep it)."""
        now = time.monotonic()
        if self._socks is not None and now - self._checked >= OPEN_CHECK_S:
            self._checked = now
            if self._namespace() != self._identity:
                self._release()
        return self._socks is not None

    def _release(self) -> None:
        socks, self._socks = self._socks, None
        for s in socks or ():
            s.close()

    def _next_seq(self, count: int = 1) -> int:
        self._seq += count
        return self._seq - count + 1

    def _dump(self, sock: socket.socket, msg_type: int, body: bytes) -> list[bytes]:
        """Payloads of all replies to one dump request."""
        seq = self._next_seq()
        sock.send(request(msg_type, body, seq))
        payloads = []
        while True:
            for kind, got, payload in messages(sock.recv(65536)):
                if got != seq:
                    continue            # left from a request abandoned mid-way
                if kind == NLMSG_DONE:
                    return payloads
                if kind == NLMSG_ERROR:
                    if err := -struct.unpack_from("=i", payload)[0]:
                        raise OSError(err, f"netlink dump in {self.ns_path}: {os.strerror(err)}")
                    return payloads
                payloads.append(payload)

    def _lookup(self, wanted: list[bytes]) -> list[tuple[bytes, bytes]]:
        """(tuple, entry) of the tracked flows `wanted`, as conntrack has them now; those it no
        longer has are forgotten (their destroy event may have been lost)."""
        found = []
        for start in range(0, len(wanted), BATCH):
            batch = wanted[start:start + BATCH]
            first = self._next_seq(len(batch))
            self._ct.send(b"".join(lookup(self._tracked[raw][0], raw, first + i) for i, raw in enumerate(batch)))
            left = len(batch)
            while left:
                for kind, seq, payload in messages(self._ct.recv(65536)):
                    if 0 <= seq - first < len(batch):
                        left -= 1
                        raw = batch[seq - first]
                        if kind == NLMSG_ERROR:
                            # its destroy event, with the last counters, may be on its way;
                            # missed twice, it was lost
                            if raw in self._missed:
                                self._tracked.pop(raw, None)
                                self._version += 1
                                self._missed.discard(raw)
                            else:
                                self._missed.add(raw)
                        else:
                            self._missed.discard(raw)
                            found.append((raw, payload))
        return found

    def _learn(self) -> None:
        """Takes in the conntrack events since the last call; at the start, or once events were
        lost to a full receive buffer, reads the whole table instead."""
        while True:
            try:
                chunk = self._events.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self._stale = True
                continue
            self._version += 1
            for kind, _, payload in messages(chunk):
                # a destroy event carries the flow's last counters (accounting is on)
                if kind & 0xFF == CT_DELETE and (raw := attributes(payload, 4).get(CTA_TUPLE_ORIG)) in self._tracked \
                        and (c := counters(payload)):
                    self._finished.append((raw, Conn(self._tracked[raw][1], *c)))
                    self._missed.discard(raw)
                track(self._tracked, kind, payload)
        if self._stale:
            self._stale = False
            self._version += 1
            self._tracked.clear()
            self._missed.clear()
            for payload in self._dump(self._ct, CTNETLINK | CT_GET, bytes(4)):
                track(self._tracked, CT_NEW, payload)

    def tcp_table(self, peer_port: int) -> dict[tuple, TcpRow] | None:
        """As `wire.tcp_table`: {(local port, remote address, remote port): (inbound, bytes acked,
        bytes received, send queue)}, or None if the namespace is gone. Addresses are written as
        `flows()` writes them, where `ss` writes IPv6 as [addr] and IPv4-mapped as [::ffff:a.b.c.d]."""
        with self._lock:
            if not self._open():
                return None
            # The old TCPDIAG_GETSOCK request (struct inet_diag_req) dumps both address families
            # in one walk of the machine-wide established hash, where SOCK_DIAG_BY_FAMILY needs
            # two; the walk is most of the cost (0.16 ms against 0.44 ms here).
            seq = self._next_seq()
            self._diag.send(request(TCPDIAG_GETSOCK, struct.pack(
                "=BxxB48xII", socket.AF_UNSPEC, 1 << (INET_DIAG_INFO - 1), 1 << TCP_ESTABLISHED, 0), seq))
            if self._known[0] != peer_port:
                self._known = (peer_port, {})
            try:
                self._established = tcp_rows_from(lambda: self._diag.recv(65536), seq, peer_port, self._known[1])
                return self._established
            except OSError as exc:
                if exc.errno is None or type(exc) is not OSError:
                    raise                   # a timeout, or the socket's own failure: as it is
                raise OSError(exc.errno, f"netlink dump in {self.ns_path}: {exc.strerror}") from None

    def flows(self, peer_port: int) -> dict[tuple, dict[str, int]] | None:
        """{(proto, remote address, remote port): {bytes_out, bytes_in, packets_out, packets_in}}
        for TCP and UDP flows with the peer port at either end, as conntrack counted them since
        accounting was on (see the module's docstring), or None if the namespace is gone."""
        e = self.entries(peer_port)
        return None if e is None else flow_rows(e.live.values(), e.local, peer_port)

    def entries(self, peer_port: int, tcp: bool = True, established: bool = False) -> Entries | None:
        """The conntrack entries with the peer port at either end: UDP ones, and TCP ones if
        `tcp`, looked up now; and every one that ended since the last call, with its last
        counters (from its destroy event). None if the namespace is gone.

        `established`: of the TCP ones, only those with a connection in the last `tcp_table`
        reading. The others are closing or closed (conntrack keeps a closed connection for up
        to 2 minutes in TIME_WAIT, and one refused for 10 s): their counters barely move, and
        their destroy events bring the last ones. In a 100-peer aria2 swarm, where clients
        dial and drop peers all the time, a namespace tracked hundreds of them, and looking
        them all up cost 2.9 ms of the sampler's CPU."""
        with self._lock:
            if not self._open():
                return None
            self._learn()
            # the flows to look up change only with the tracked ones (each tick reads UDP's, and
            # every FLOW_TICKS-th TCP's too): a list of ~50 TCP flows is not filtered again each tick
            if self._wanted[0] != (peer_port, tcp, self._version):
                self._wanted = ((peer_port, tcp, self._version), [
                    raw for raw, (_, t) in self._tracked.items()
                    if peer_port in (t.src_port, t.dst_port) and (tcp or t.proto == socket.IPPROTO_UDP)])
            wanted = self._wanted[1]
            if tcp and established and self._established is not None:
                rows = self._established
                wanted = [raw for raw in wanted if (t := self._tracked[raw][1]).proto == socket.IPPROTO_UDP
                          or (t.src_port, t.dst, t.dst_port) in rows or (t.dst_port, t.src, t.src_port) in rows]
            found = self._lookup(wanted)
            live = {raw: Conn(self._tracked[raw][1], *c) for raw, payload in found
                    if raw in self._tracked and (c := counters(payload))}
            if len(found) < len(wanted):
                # A flow that timed out is reaped lazily, by conntrack's garbage collector (up
                # to a minute later) or by the first lookup that meets it: ours, just now,
                # which sent its destroy event with the last counters. Read it here, or a
                # flow closed near the end of a run (an RST: 10 s in CLOSE) is lost
                self._learn()
            finished, self._finished = self._finished, []
            # the namespace's addresses, read again only when a flow has neither end among them
            if any(c.tuple.src not in self._local and c.tuple.dst not in self._local
                   for c in (*live.values(), *(c for _, c in finished))):
                self._local = {a for a in map(parse_address, self._dump(self._route, RTM_GETADDR, bytes(8))) if a}
            return Entries(live, finished, self._local)

    def close(self) -> None:
        with self._lock:
            self._release()

    def __enter__(self) -> NamespaceFlows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
