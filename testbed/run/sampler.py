"""The sampler: one tick of measurement -> rows of samples.csv, meter.csv and swarm.csv.

It is the testbed's hot path, so it stays out of the clients' way: interface counters are
read from sysfs, client stats over each client's control API (in a small thread pool), and
sockets over netlink from handles kept open in each peer's namespace. It measures; it does
not act. What it sees (a completion, usage) goes back to the executor, whose policies act.
"""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from testbed import flows, metering, wire
from testbed.catalog import CLIENTS
from testbed.clients import PeerStats
from testbed.plan import Plan
from testbed.results import RunDir
from testbed.run.hostload import HostLoad

Counters = tuple[int, int, int, int]     # rx_bytes, tx_bytes, rx_packets, tx_packets
# TCP flows' per-remote counters are looked up every this many ticks: they feed only the run's
# totals, a flow that ends hands over its last counters in its destroy event, and a peer that
# leaves, or the run's end, reads its live ones once more. Each lookup is a netlink request and
# reply, about 10 us of CPU a flow (a 100-peer swarm holds thousands); every 5th tick, they were
# a third of the socket readings' CPU in a 100-peer aria2 swarm, and every 30th, 0.9 s of the
# testbed's 10.2 s. What the periodic reading guards against is a burst of events lost to a
# full receive buffer (8 MiB a peer; the whole table is then read again): the counters that
# flows ending in it had gained since their last lookup, at most this many seconds' worth.
FLOW_TICKS = 60


def speaks_utp(host) -> bool:
    """Whether a peer's client can have uTP flows: one that has no uTP (aria2, rtorrent) or has
    it turned off (`utp: false`) has only TCP ones, so its conntrack flows (and the events
    that tell which ended) are read every FLOW_TICKS ticks with the TCP ones', not each tick.
    Read each tick, they cost 0.10 ms of CPU a peer a tick in a 100-peer aria2 swarm (the
    conntrack events of connections dialed and dropped), for columns that stay 0."""
    return CLIENTS[host.client].utp and host.behaviour.utp is not False


def parse_net_dev(text: str) -> dict[str, Counters]:
    """(rx_bytes, tx_bytes, rx_packets, tx_packets) of every interface, from /proc/net/dev."""
    out = {}
    for line in text.splitlines()[2:]:
        name, _, fields = line.partition(":")
        f = fields.split()
        out[name.strip()] = (int(f[0]), int(f[8]), int(f[1]), int(f[9]))
    return out


def all_dev_stats() -> dict[str, Counters]:
    """Every interface of this namespace in one read (not four sysfs files per interface)."""
    return parse_net_dev(Path("/proc/net/dev").read_text())


@dataclass
class Observed:
    """What the run has measured so far, per peer."""

    last: dict[str, PeerStats] = field(default_factory=dict)
    counters: dict[str, Counters] = field(default_factory=dict)
    baseline: dict[str, Counters] = field(default_factory=dict)
    ip_usage: dict[str, tuple[int, int]] = field(default_factory=dict)   # IP bytes since the swarm start
    tcp_max: dict[str, dict[str, int]] = field(default_factory=dict)
    # each peer's verified pieces, from its client (a peer that completed has them all)
    pieces: dict[str, list[bool]] = field(default_factory=dict)
    # per peer: its conntrack entries (TCP and UDP, peer port at either end) with their latest
    # counters, what those that ended counted (per remote), its addresses and peer port
    entries: dict[str, dict[bytes, flows.Conn]] = field(default_factory=dict)
    flows_closed: dict[str, dict[tuple, dict[str, int]]] = field(default_factory=dict)
    local: dict[str, set[str]] = field(default_factory=dict)
    port: dict[str, int] = field(default_factory=dict)

    def add_entries(self, name: str, port: int, e: flows.Entries) -> None:
        live, closed = self.entries.setdefault(name, {}), self.flows_closed.setdefault(name, {})

        def close(c: flows.Conn) -> None:
            for key, row in flows.flow_rows([c], e.local, port).items():
                acc = closed.setdefault(key, dict.fromkeys(row, 0))
                for k, v in row.items():
                    acc[k] += v
        # the ended first: a uTP flow's tuple is the same for the entry that replaces it
        for raw, c in e.finished:
            live.pop(raw, None)
            close(c)
        for raw, c in e.live.items():
            old = live.get(raw)
            if old is not None and (c.bytes_orig < old.bytes_orig or c.bytes_reply < old.bytes_reply):
                close(old)      # a new entry of the same tuple, whose predecessor's end was not seen
            live[raw] = c
        self.local[name], self.port[name] = e.local, port

    def flow_totals(self, name: str) -> dict[tuple, dict[str, int]]:
        """Per remote (proto, address, port), bytes and packets each way over the run: what
        its ended conntrack entries counted (every connection to a peer's listening port has
        the same key) and the live ones' latest counters."""
        out = {k: dict(v) for k, v in self.flows_closed.get(name, {}).items()}
        live = flows.flow_rows(self.entries.get(name, {}).values(), self.local.get(name, set()), self.port.get(name, 0))
        for key, c in live.items():
            acc = out.setdefault(key, dict.fromkeys(c, 0))
            for k, v in c.items():
                acc[k] += v
        return out
    errors: dict[str, str] = field(default_factory=dict)

    def if_bytes(self, name: str) -> tuple[int, int]:
        c, b = self.counters.get(name, (0, 0, 0, 0)), self.baseline.get(name, (0, 0, 0, 0))
        return c[0] - b[0], c[1] - b[1]


class CpuLedger:
    """The sampler's own CPU time (user + system of the thread that did the work), per part:
    each client kind's control calls, the socket and flow tables, the counters. The run's
    summary gives it, so a user sees where the testbed's share of the machine went."""

    def __init__(self):
        self._lock, self.seconds, self.calls = threading.Lock(), {}, {}

    def add(self, part: str, since: float, calls: int = 1) -> None:
        """The CPU this thread used since `since`, for `calls` calls (0: a call's first half,
        counted with its second)."""
        used = time.thread_time() - since
        with self._lock:
            self.seconds[part] = self.seconds.get(part, 0.0) + used
            self.calls[part] = self.calls.get(part, 0) + calls

    def as_dict(self) -> dict:
        return {part: {"cpu_s": round(s, 3), "calls": self.calls[part],
                       "ms_per_call": round(s * 1000 / self.calls[part], 3)} for part, s in sorted(self.seconds.items())}


class Sampler:
    def __init__(self, plan_: Plan, rd: RunDir, drivers: dict, pids: dict[str, int], emit, t0: float,
                 handles: dict[str, flows.NamespaceFlows] | None = None):
        self.plan, self.rd, self.drivers, self.pids, self.emit, self.t0 = plan_, rd, drivers, pids, emit, t0
        self.seen = Observed()
        self.tables: dict[str, dict | None] = {}
        # the switch end of each host's access link, where its traffic is counted
        self.access_dev = {lk.node1: lk.intf2 for lk in plan_.links if lk.kind == "access"}
        # clients sharing one PC are counted at its one interface (each of them sees the PC's bytes)
        self.access_dev.update({h.name: self.access_dev[h.shares_netns] for h in plan_.hosts if h.shares_netns})
        self.routers = [h.name for h in plan_.hosts if h.role == "router"]
        # a core link's counters are read at its first end's interface: tx is ends[0] -> ends[1]
        self.segments = {f"{lk.node1}-{lk.node2}": lk.intf1 for lk in plan_.links if lk.kind == "core"}
        self.seg_baseline: dict[str, Counters] = {}
        self.tracker_dev = self.access_dev.get("tracker")
        # control calls of clients that cannot split them (no sample_begin) in 4 threads: in a
        # 100-peer aria2 swarm a call took 0.39 ms of CPU with 8 (threads handing the
        # interpreter lock around) and 0.32 ms with 2; 4 leaves room for a hung client's 5 s
        # timeout without stalling every tick
        self.pool = ThreadPoolExecutor(4)
        # long-lived netlink handles in each peer's namespace: no process per peer per tick. The
        # swarm's, made at set-up (`handles`), have seen every flow; others read the table first
        handles = handles or {}
        self.handles = {n: handles.get(n) or flows.NamespaceFlows(f"/proc/{pid}/ns/net")
                        for n, pid in pids.items() if n in drivers}
        self.udp_before: dict[str, dict[tuple, dict[str, int]]] = {}
        self.cpu = CpuLedger()
        # the ledger's part for each peer's control calls (looked up once: plan.host scans)
        self.client_part = {h.name: f"client:{h.client}" for h in plan_.hosts if h.client}
        self.utp = {h.name for h in plan_.hosts if h.client and speaks_utp(h)}
        self.ticks, self.active_before = 0, set()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self) -> None:
        """The baselines: counters are reported from the swarm's start."""
        devs = all_dev_stats()
        self.seen.baseline = {n: devs.get(self.access_dev[n], (0, 0, 0, 0)) for n in self.drivers}
        self.seen.counters = dict(self.seen.baseline)
        self.seg_baseline = {seg: devs[dev] for seg, dev in [*self.segments.items(), ("tracker", self.tracker_dev)]
                             if dev in devs}
        self.home_baseline = {r: devs.get(self.access_dev[r], (0, 0, 0, 0)) for r in self.routers}
        self.home_usage: dict[str, tuple[int, int]] = {}
        self.load = HostLoad(list(self.pids.values()))

    def close(self) -> None:
        """Takes the last TCP flow counters of the peers still in the swarm, then lets go."""
        for name in sorted(self.active_before):
            try:
                _, e = self._table(name, "all")
            except Exception:   # a namespace in an odd state: the totals keep what was read
                continue
            if e is not None:
                self.seen.add_entries(name, self.drivers[name].peer_port, e)
        self.pool.shutdown(wait=True)
        for h in self.handles.values():     # they keep the namespace alive
            h.close()

    def _want_pieces(self, name: str) -> bool:
        # its pieces while it lacks some (a peer that completed has them all), in the same
        # request where its client allows
        last = self.seen.last.get(name)
        return last is None or last.progress < 1.0 or name not in self.seen.pieces

    def _answered(self, name: str, read: Callable[[], tuple[PeerStats, list[bool] | None]]) -> PeerStats | None:
        """Its stats from `read` (a control call, or the second half of one), pieces kept; a
        crashed or hung client's error recorded once, and the run goes on."""
        since = time.thread_time()
        try:
            s, have = read()
            if have is not None:
                self.seen.pieces[name] = have
        except Exception as exc:
            if name not in self.seen.errors:
                self.seen.errors[name] = f"{exc.__class__.__name__}: {exc}"
                self.emit(self.rd.event("client_error", host=name, error=self.seen.errors[name]))
            s = None
        self.cpu.add(self.client_part[name], since)
        return s

    def _stats(self, name: str) -> tuple[PeerStats | None, float]:
        return self._answered(name, lambda: self.drivers[name].sample(self._want_pieces(name))), self.now()

    def _ask(self, name: str) -> Callable[[], tuple[PeerStats | None, float]]:
        """Asks a peer's client for its sample; what is returned gives the answer and its swarm
        time. A client that can take the request and give the answer apart (sample_begin) is
        asked here, in this thread, and its answer is timed when it was asked: the client
        answers at once, while the answer is read only after the netlink readings and the
        answers before it (tens of ms later in a 100-peer swarm). Any other client is called
        from the pool meanwhile, and timed when its call returned."""
        since, asked_at = time.thread_time(), self.now()
        try:
            finish = self.drivers[name].sample_begin(self._want_pieces(name))
        except Exception as exc:    # the request could not be sent: recorded when read
            def finish(exc=exc):
                raise exc
        self.cpu.add(self.client_part[name], since, calls=0)
        if finish is None:
            return self.pool.submit(self._stats, name).result
        return lambda: (self._answered(name, finish), asked_at)

    def _table(self, name: str, tcp_flows: str | None) -> tuple[dict | None, flows.Entries | None]:
        """Its TCP table, and its conntrack flows: UDP ones, and TCP ones if `tcp_flows` ("live":
        those of the connections in the table; "all"); those of a peer without uTP only with
        the TCP ones (None otherwise)."""
        h, port, since = self.handles[name], self.drivers[name].peer_port, time.thread_time()
        try:
            table = h.tcp_table(port)
        except OSError:
            return None, None
        finally:
            self.cpu.add("sockets", since)
        if tcp_flows is None and name not in self.utp:
            return table, None
        since = time.thread_time()
        try:
            return table, h.entries(port, tcp=tcp_flows is not None, established=tcp_flows == "live")
        except OSError:
            return None, None
        finally:
            self.cpu.add("flows", since)

    def udp_activity(self, name: str, now: dict | None) -> dict[str, int]:
        """uTP peers (UDP flows on the peer port that the other end answered: conntrack also
        keeps unanswered uTP SYNs, and closed flows for a while) and how many moved a block
        each way."""
        before = self.udp_before.get(name, {})
        if not now and not before:          # no uTP flow (each tick of a client without uTP)
            return {"utp_flows": 0, "utp_uploading": 0, "utp_downloading": 0}
        udp = {k: v for k, v in (now or {}).items() if k[0] == "udp" and v["bytes_in"] and v["bytes_out"]}
        self.udp_before[name] = udp
        out = {"utp_flows": len(udp), "utp_uploading": 0, "utp_downloading": 0}
        for k, v in udp.items():
            b = before.get(k, {"bytes_out": 0, "bytes_in": 0})
            out["utp_uploading"] += v["bytes_out"] - b["bytes_out"] >= wire.BLOCK
            out["utp_downloading"] += v["bytes_in"] - b["bytes_in"] >= wire.BLOCK
        return out

    def tick(self, active: set[str]) -> dict[str, tuple[PeerStats, float]]:
        """One sample. `active`: peers whose client is in the swarm and can answer (not
        frozen, not crashed, not yet arrived). Returns their stats, each with the swarm time
        its client answered."""
        names = sorted(active)
        # every client is asked first (those that take a request apart from its answer, here;
        # the others from the pool), the netlink readings are made meanwhile (quick system
        # calls: in the pool they only add threads contending for the interpreter), then the
        # answers are read
        asked = {name: self._ask(name) for name in names}
        try:
            # TCP flows' counters every FLOW_TICKS ticks, and one last time for a peer that left
            # (a flow that ends meanwhile gives its last counters anyway); UDP ones (uTP) each
            # tick, for clients that speak it
            self.ticks += 1
            full = (self.ticks - 1) % FLOW_TICKS == 0
            left = [n for n in self.active_before - active if n in self.handles]
            self.active_before = set(active)
            tables = {name: self._table(name, "live" if full else None) for name in names}
            for name in left:
                if (e := self._table(name, "all")[1]) is not None:
                    self.seen.add_entries(name, self.drivers[name].peer_port, e)
        finally:
            # every answer is read, whatever happened meanwhile: a request left unread would
            # make the next one on its connection fail
            stats = {name: answer() for name, answer in asked.items()}
        t = self.now()          # the counters' own time: read now, after the clients answered
        since = time.thread_time()
        self.meter(t)
        self.cpu.add("counters", since)
        since = time.thread_time()
        out = {}
        for name in names:
            table, e = tables[name]
            udp = None
            if e is not None:
                port = self.drivers[name].peer_port
                self.seen.add_entries(name, port, e)
                udp = flows.flow_rows([c for c in e.live.values() if c.tuple.proto == socket.IPPROTO_UDP], e.local, port)
            s, t_read = stats[name]
            if s is None:
                continue
            out[name] = (s, t_read)
            self.seen.last[name] = s
            tcp = {**wire.tcp_activity(self.tables.get(name), table), **self.udp_activity(name, udp)}
            self.tables[name] = table
            most = self.seen.tcp_max.setdefault(name, {})
            for k, v in tcp.items():
                if v > most.get(k, -1):
                    most[k] = v
            up, down = self.seen.if_bytes(name)
            # t: when its client answered; t_if: when its interface counters were read (swarm time)
            self.rd.sample({"t": round(t_read, 3), "t_if": round(t, 3), "peer": name, "progress": round(s.progress, 5),
                            "rate_up_Bps": s.rate_up, "rate_down_Bps": s.rate_down, "client_bytes_up": s.bytes_up,
                            "client_bytes_down": s.bytes_down, "if_bytes_up": up, "if_bytes_down": down,
                            "peers": s.peers, **tcp})
        self.cpu.add("rows", since)
        return out

    def meter(self, t: float) -> None:
        """Interface counters of every peer (whatever its state) and core link: one meter.csv row
        each, IP bytes since the swarm started. Bytes the switch received from a host are its
        upload."""
        devs = all_dev_stats()
        self.rd.row("host", self.load.sample(t))
        for name in self.drivers:
            c = devs.get(self.access_dev[name]) or self.seen.counters[name]
            self.seen.counters[name] = c
            b = self.seen.baseline[name]
            up = metering.ip_bytes(c[0] - b[0], c[2] - b[2])
            down = metering.ip_bytes(c[1] - b[1], c[3] - b[3])
            self.seen.ip_usage[name] = (up, down)
            self.rd.row("meter", {"t": round(t, 3), "scope": "peer", "name": name, "ip_bytes_up": up,
                                  "ip_bytes_down": down, "packets_up": c[2] - b[2], "packets_down": c[3] - b[3]})
        for r in self.routers:
            c, b = devs.get(self.access_dev[r]), self.home_baseline[r]
            if c is None:
                continue
            up, down = metering.ip_bytes(c[0] - b[0], c[2] - b[2]), metering.ip_bytes(c[1] - b[1], c[3] - b[3])
            self.home_usage[r] = (up, down)
            self.rd.row("meter", {"t": round(t, 3), "scope": "household", "name": r, "ip_bytes_up": up,
                                  "ip_bytes_down": down, "packets_up": c[2] - b[2], "packets_down": c[3] - b[3]})
        for seg, dev in [*self.segments.items(), *([("tracker", self.tracker_dev)] if self.tracker_dev else [])]:
            c = devs.get(dev)
            if c is None:
                continue
            b = self.seg_baseline.setdefault(seg, c)
            if seg == "tracker":    # the tracker's own line: up is what it sent
                self.rd.row("meter", {"t": round(t, 3), "scope": "tracker", "name": seg,
                                      "ip_bytes_up": metering.ip_bytes(c[0] - b[0], c[2] - b[2]),
                                      "ip_bytes_down": metering.ip_bytes(c[1] - b[1], c[3] - b[3]),
                                      "packets_up": c[2] - b[2], "packets_down": c[3] - b[3]})
                continue
            # ends[0] -> ends[1] leaves through the first end's interface (tx)
            self.rd.row("meter", {"t": round(t, 3), "scope": "segment", "name": seg,
                                  "ip_bytes_up": metering.ip_bytes(c[1] - b[1], c[3] - b[3]),
                                  "ip_bytes_down": metering.ip_bytes(c[0] - b[0], c[2] - b[2]),
                                  "packets_up": c[3] - b[3], "packets_down": c[2] - b[2]})
