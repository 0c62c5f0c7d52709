"""The userspace delay element: delay, jitter and loss where the kernel has no sch_netem.

One process per run serves every receiving host. For each host it enters the host's
network namespace (setns), binds NFQUEUE queue 0 there and returns, so one select() loop
sees every host's queue. The run installs, in each host's namespace,

    iptables -t raw -A PREROUTING -i eth0 -j NFQUEUE --queue-num 0

so every packet arriving on the data interface is handed here before the host's stack
sees it (on the RECEIVING side: holding packets at the sender would count them against its
sockets and collapse TCP: with 50 ms, about 1 Mbit/s of TCP against 1.45 Gbit/s at the
receiver, measured on the development machine). Each packet is dropped with the
path's loss probability, or held for the path's delay (the sender's upload delay plus this
host's download delay, each +/- its jitter, uniformly, as netem does) and then accepted.
Unless `reorder` is set, a packet is never released before the previous one from the same
sender, so jitter does not reorder a flow.

Only the first 20 bytes (the IPv4 header: the source address) are copied to userspace;
the verdict leaves the packet itself untouched. The python netfilterqueue binding does the
netlink work; the scheduling is written here because no library does it.

Run as:  python -m testbed.delayer CONFIG.json   (prints "ready" once every queue is bound)
It exits on SIGTERM, when the process that started it dies, or when all its hosts are
gone, and writes its counters to the config's `stats` path.
"""
from __future__ import annotations

import ctypes
import heapq
import json
import os
import random
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
QUEUE_NUM = 0
QUEUE_MAXLEN = 20000
COPY_RANGE = 20

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass
class Path_:
    """What packets from one sender (or from anyone, `default`) go through at this host."""

    delay: float
    jitters: tuple[float, ...]
    loss: float


@dataclass
class HostQueue:
    name: str
    pid: int
    paths: dict[bytes, Path_]
    default: Path_
    reorder: bool
    last_release: dict[bytes, float] = field(default_factory=dict)
    packets: int = 0
    dropped: int = 0
    held: int = 0
    delay_sum: float = 0.0
    max_held: int = 0
    holding: int = 0
    overflow: int = 0      # dropped by the kernel: the queue was full or its socket overran
    # how late held packets were released against their due time (measured, not scheduled):
    # the element's own lag when select() wakes late or a burst of verdicts queues up
    released: int = 0
    late_sum: float = 0.0
    late_max: float = 0.0
    late_over_1ms: int = 0
    late_over_10ms: int = 0


def queue_overflow(pid: int, queue_num: int = QUEUE_NUM) -> int | None:
    """Packets the kernel dropped before the element saw them, in `pid`'s namespace: the
    queue's queue_dropped plus user_dropped (/proc/net/netfilter/nfnetlink_queue, per
    namespace; fields as nfnetlink_queue.c seq_show prints them). None once it is gone."""
    try:
        with open(f"/proc/{pid}/net/netfilter/nfnetlink_queue") as f:
            return overflow_in(f.read(), queue_num)
    except OSError:
        return None


def overflow_in(text: str, queue_num: int) -> int | None:
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 7 and int(f[0]) == queue_num:
            return int(f[5]) + int(f[6])
    return None


def compose(down: dict, up: dict | None) -> Path_:
    """The path from a sender whose own stages add `up` (its upload and the core links on the
    way), through this host's download. Jitter: one value or a list, one per stage."""
    up = up or {"delay": 0.0, "jitter": [], "loss": 0.0}
    jitters = [j for part in (up["jitter"], down["jitter"])
               for j in (part if isinstance(part, list) else [part]) if j]
    loss = 1 - (1 - up["loss"]) * (1 - down["loss"])
    return Path_(up["delay"] + down["delay"], tuple(jitters), loss)


def host_queue(name: str, spec: dict) -> HostQueue:
    paths = {socket.inet_aton(ip): compose(spec["down"], up) for ip, up in spec["from"].items()}
    return HostQueue(name, spec["pid"], paths, compose(spec["down"], None), spec.get("reorder", False))


class Delayer:
    def __init__(self, config: dict):
        self.rng = random.Random(config.get("seed", 1))
        self.hosts = [host_queue(name, spec) for name, spec in config["hosts"].items()]
        self.stats_path = config.get("stats")
        self.heap: list[tuple[float, int, object, HostQueue]] = []
        self.seq = 0
        self.queues: dict[int, object] = {}
        self.stop = False

    def bind_all(self) -> None:
        from netfilterqueue import COPY_PACKET, NetfilterQueue
        own = os.open("/proc/self/ns/net", os.O_RDONLY)
        try:
            for h in self.hosts:
                fd = os.open(f"/proc/{h.pid}/ns/net", os.O_RDONLY)
                try:
                    setns(fd)
                    q = NetfilterQueue()
                    q.bind(QUEUE_NUM, self.callback(h), max_len=QUEUE_MAXLEN, mode=COPY_PACKET, range=COPY_RANGE)
                finally:
                    setns(own)
                    os.close(fd)
                self.queues[q.get_fd()] = q
        finally:
            os.close(own)

    def callback(self, h: HostQueue):
        rng, heap = self.rng, self.heap

        def on_packet(pkt) -> None:
            now = time.monotonic()
            h.packets += 1
            src = pkt.get_payload()[12:16]
            path = h.paths.get(src, h.default)
            if path.loss and rng.random() < path.loss:
                h.dropped += 1
                pkt.drop()
                return
            delay = path.delay
            for j in path.jitters:
                delay += rng.uniform(-j, j)
            release = now + max(0.0, delay)
            if not h.reorder:
                release = max(release, h.last_release.get(src, 0.0))
                h.last_release[src] = release
            if release <= now:
                pkt.accept()
                return
            pkt.retain()
            h.held += 1
            h.holding += 1
            h.max_held = max(h.max_held, h.holding)
            h.delay_sum += release - now
            self.seq += 1
            heapq.heappush(heap, (release, self.seq, pkt, h))
        return on_packet

    def release_due(self) -> None:
        now = time.monotonic()
        heap = self.heap
        while heap and heap[0][0] <= now:
            due, _, pkt, h = heapq.heappop(heap)
            h.holding -= 1
            pkt.accept()
            late = time.monotonic() - due
            h.released += 1
            h.late_sum += late
            h.late_max = max(h.late_max, late)
            h.late_over_1ms += late > 1e-3
            h.late_over_10ms += late > 1e-2

    def alive(self) -> bool:
        return any(os.path.exists(f"/proc/{h.pid}") for h in self.hosts)

    def loop(self) -> None:
        fds = list(self.queues)
        next_check = time.monotonic() + 1.0
        while not self.stop:
            now = time.monotonic()
            timeout = min(1.0, max(0.0, self.heap[0][0] - now)) if self.heap else 1.0
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                continue
            for fd in ready:
                try:
                    self.queues[fd].run(block=False)
                except OSError:
                    pass        # the namespace went away
            self.release_due()
            if now > next_check:
                next_check = now + 1.0
                if not self.alive():
                    break
                self.write_stats()
        self.release_due()

    def write_stats(self) -> None:
        if not self.stats_path:
            return
        for h in self.hosts:
            h.overflow = queue_overflow(h.pid) or h.overflow       # kept once the host is gone
        data = {h.name: {"packets": h.packets, "dropped": h.dropped, "held": h.held,
                         "mean_added_delay_ms": round(1000 * h.delay_sum / h.held, 3) if h.held else 0.0,
                         "max_held": h.max_held, "overflow": h.overflow, "released": h.released,
                         "late_mean_ms": round(1000 * h.late_sum / h.released, 3) if h.released else 0.0,
                         "late_max_ms": round(1000 * h.late_max, 3), "late_over_1ms": h.late_over_1ms,
                         "late_over_10ms": h.late_over_10ms} for h in self.hosts}
        tmp = f"{self.stats_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, self.stats_path)


def main(argv: list[str]) -> int:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    with open(argv[1]) as f:
        config = json.load(f)
    d = Delayer(config)

    def on_term(signum, frame):
        d.stop = True
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if os.getppid() != config.get("parent", os.getppid()):
        return 1                # the parent died before the death signal was armed
    d.bind_all()
    print("ready", flush=True)
    d.loop()
    d.write_stats()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
