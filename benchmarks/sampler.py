"""What one sample of every peer's sockets costs: `ss` run in each namespace (wire.tcp_table)
against netlink handles kept open in each (flows.NamespaceFlows: tcp_table and flows).

    sudo .venv/bin/python benchmarks/sampler.py [N] [--ticks T] [--conns C]

N namespaces (default 100) tbbench<k>, each with a veth to the bridge tbbenchbr, an address in
198.18.254.0/23, conntrack accounting on, a `sleep` for `ss` to enter by its pid, and a
listener on the peer port. Each dials the next C namespaces (so 2C established connections
each, default 6) and sends each of them a few uTP-like UDP datagrams from the peer port. This
process holds all the sockets, made inside each namespace by a thread that entered it.

"new" reads as the run's sampler does: the socket table each tick, UDP flows' counters each
tick and TCP flows' every FLOW_TICKS ticks.

Printed: CPU time (this process and its children, user + system, from getrusage) per tick of
reading all N namespaces, each way, and what that is as a share of one core at one tick per
second. Everything made is removed at the end, Ctrl-C included.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from testbed import flows, wire
from testbed.run.sampler import FLOW_TICKS

PORT = 6881
BRIDGE = "tbbenchbr"
FIRST = ipaddress.ip_address("198.18.254.1")     # .. 198.18.255.254: 510 namespaces at most


def sh(*args: str) -> None:
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"`{' '.join(args)}` failed: {r.stderr.strip()}")


def no_ipv6(ifname: str) -> None:
    """IPv6 off on a root-namespace interface before it goes up, so it sends nothing of its own."""
    Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6").write_text("1")


def cpu_seconds() -> float:
    return sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))


def per_tick(ticks: int, sample: Callable[[], object]) -> tuple[float, float]:
    """CPU and wall milliseconds per call of sample()."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    for _ in range(ticks):
        sample()
    return (cpu_seconds() - cpu) * 1000 / ticks, (time.perf_counter() - wall) * 1000 / ticks


class Bench:
    """The namespaces and everything in them; close() removes what was made, whatever happened."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.names = [f"tbbench{k}" for k in range(n)]
        self.addrs = [str(FIRST + k) for k in range(n)]
        self.made_ns: list[str] = []
        self.made_links: list[str] = []
        self.sleepers: list[subprocess.Popen] = []
        self.socks: list[socket.socket] = []
        self.handles: list[flows.NamespaceFlows] = []

    def path(self, k: int) -> str:
        return f"/run/netns/{self.names[k]}"

    def build(self, conns: int) -> None:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        self.made_links.append(BRIDGE)
        no_ipv6(BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        listeners, udps = [], []
        for k, ns in enumerate(self.names):
            sh("ip", "netns", "add", ns)
            self.made_ns.append(ns)
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
               "net.ipv6.conf.default.disable_ipv6=1")
            sh("ip", "link", "add", f"tbbv{k}", "type", "veth", "peer", "name", f"tbbp{k}", "netns", ns)
            self.made_links.append(f"tbbv{k}")
            no_ipv6(f"tbbv{k}")
            sh("ip", "link", "set", f"tbbv{k}", "master", BRIDGE, "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.addrs[k]}/23", "dev", f"tbbp{k}")
            sh("ip", "-n", ns, "link", "set", f"tbbp{k}", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            wire.enable_accounting(self.path(k))
            self.sleepers.append(subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "1800"]))
            listener, udp = flows.in_namespace(self.path(k), lambda a=self.addrs[k]: (
                socket.create_server((a, PORT), backlog=64), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)))
            udp.bind((self.addrs[k], PORT))
            self.socks += [listener, udp]
            listeners.append(listener)
            udps.append(udp)
        for k in range(self.n):
            targets = [self.addrs[(k + j) % self.n] for j in range(1, conns + 1)]
            dialed = flows.in_namespace(self.path(k), lambda: [socket.create_connection((t, PORT), timeout=5) for t in targets])
            self.socks += dialed
            for sock, target in zip(dialed, targets):
                sock.sendall(b"d" * 16384)
                for _ in range(4):
                    udps[k].sendto(b"u" * 1024, (target, PORT))
        for listener in listeners:
            for _ in range(conns):
                accepted = listener.accept()[0]
                self.socks.append(accepted)
                accepted.sendall(b"a" * 32768)
        time.sleep(0.5)                 # the last ACKs arrive

    def close(self) -> None:
        for handle in self.handles:
            handle.close()
        for sock in self.socks:
            sock.close()
        for proc in self.sleepers:
            proc.kill()                 # by pid: the sleep that `ip netns exec` became
            proc.wait()
        for ns in self.made_ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for link in reversed(self.made_links):
            subprocess.run(["ip", "link", "del", link], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", nargs="?", type=int, default=100, help="namespaces (peers), at most 510")
    ap.add_argument("--ticks", type=int, default=10)
    ap.add_argument("--conns", type=int, default=3, help="peers each namespace dials")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: sudo .venv/bin/python benchmarks/sampler.py")
    if not 1 <= args.conns < args.n <= 510:
        sys.exit("need 1 <= conns < n <= 510")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    bench = Bench(args.n)
    try:
        t0 = time.monotonic()
        bench.build(args.conns)
        print(f"built {args.n} namespaces with {2 * args.conns} TCP connections each in {time.monotonic() - t0:.0f} s")
        pids = [p.pid for p in bench.sleepers]
        old_cpu, old_wall = per_tick(args.ticks, lambda: [wire.tcp_table(pid, PORT) for pid in pids])

        cpu = cpu_seconds()
        bench.handles = [flows.NamespaceFlows(bench.path(k)) for k in range(args.n)]
        opened = cpu_seconds() - cpu
        first_cpu, _ = per_tick(1, lambda: [h.flows(PORT) for h in bench.handles])   # the one dump each
        tcp_cpu, _ = per_tick(args.ticks, lambda: [h.tcp_table(PORT) for h in bench.handles])
        every_cpu, _ = per_tick(args.ticks, lambda: [(h.tcp_table(PORT), h.flows(PORT)) for h in bench.handles])
        # the sampler's way: TCP flows' counters every FLOW_TICKS ticks, UDP ones each tick
        tick = iter(range(10**9))
        new_cpu, new_wall = per_tick(args.ticks, lambda: (full := next(tick) % FLOW_TICKS == 0) is not None and [
            (h.tcp_table(PORT), h.entries(PORT, tcp=full)) for h in bench.handles])

        agree = sum(h.tcp_table(PORT) == wire.tcp_table(pid, PORT) for h, pid in zip(bench.handles, pids))
        counts = [len(h.flows(PORT)) for h in bench.handles]
        expected = 2 * args.conns + min(2 * args.conns, args.n - 1)    # a TCP flow per connection, a UDP one per peer
        print(f"tables agree with ss in {agree} of {args.n} namespaces; flows per namespace: "
              f"{min(counts)}..{max(counts)} (expected {expected})")
        print(f"set-up of the new way: opening all handles {opened * 1000:.0f} ms CPU, "
              f"first flows() (one conntrack dump each) {first_cpu:.0f} ms CPU\n")
        print(f"{'N':>4}  {'old CPU ms/tick':>15}  {'new CPU ms/tick':>15}  {'ratio':>6}  "
              f"{'old: share of a core':>20}  {'new: share of a core':>20}   (at one tick per second)")
        print(f"{args.n:>4}  {old_cpu:>15.1f}  {new_cpu:>15.1f}  {old_cpu / new_cpu:>5.0f}x  "
              f"{old_cpu / 10:>19.1f}%  {new_cpu / 10:>19.1f}%")
        print(f"\nold: wire.tcp_table (nsenter + ss) per namespace, {old_wall:.0f} ms wall per tick")
        print(f"new: NamespaceFlows.tcp_table + entries (TCP flows every {FLOW_TICKS} ticks), {new_wall:.0f} ms wall "
              f"per tick; tcp_table alone {tcp_cpu:.1f} ms CPU per tick; every flow each tick {every_cpu:.1f} ms CPU")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        bench.close()


if __name__ == "__main__":
    main()
