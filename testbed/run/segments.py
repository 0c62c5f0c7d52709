"""RFC 6057 congestion management on a segment's aggregation link, carried out with tc.

Both directions of the aggregation link get two HTB classes under the link's own class:
1:10 for unmarked subscribers (priority 0, guaranteed the whole link) and 1:20 for marked
ones (priority 7, guaranteed almost nothing, may borrow the whole link). HTB serves the
guaranteed rate first and lends what is left by priority, so a marked subscriber's packets
get only what unmarked ones leave: RFC 6057's "Best Effort" under "Priority Best Effort".
A mark is a u32 filter on the subscriber's address (source upstream, destination
downstream). The manager reads interface counters (the subscriber's access link, the
aggregation link) every `check_every`, averages them over `window`, and marks and unmarks
as the RFC says; each mark and unmark is an event and a row of policy.csv.
"""
from __future__ import annotations

import subprocess
import threading
from collections import deque

from testbed.errors import RunError
from testbed.plan import Plan
from testbed.plan.homes import SegmentPolicyPlan
from testbed.run.sampler import all_dev_stats
from testbed.shaping import MTU_FRAME, burst_bytes
from testbed.units import tc_rate

UNMARKED, MARKED = "1:10", "1:20"
FLOOR_BPS = 8000.0           # what a marked class is guaranteed (HTB needs a rate)


def tree_commands(dev: str, rate_bps: float, queue: int, leaf: str | None = None) -> list[str]:
    """The two-class tree on one direction of the aggregation link (pure). `leaf` is the
    link's own leaf qdisc line (the shaper's: pfifo, or netem with the link's delay, jitter
    and loss), put under each class; each class has the link's queue."""
    rate, burst = tc_rate(rate_bps), burst_bytes(rate_bps)
    if leaf:
        leaves = [leaf.replace("parent 1:1 handle 10:", f"parent {UNMARKED} handle 10:"),
                  leaf.replace("parent 1:1 handle 10:", f"parent {MARKED} handle 20:")]
    else:
        leaves = [f"tc qdisc replace dev {dev} parent {UNMARKED} handle 10: pfifo limit {queue}",
                  f"tc qdisc replace dev {dev} parent {MARKED} handle 20: pfifo limit {queue}"]
    cls = f"burst {burst}b cburst {burst}b quantum {MTU_FRAME}"
    # the link's shaping is replaced whole (an HTB root's default class cannot be changed)
    return [f"tc qdisc del dev {dev} root",
            f"tc qdisc add dev {dev} root handle 1: htb default 10",
            f"tc class replace dev {dev} parent 1: classid 1:1 htb rate {rate} ceil {rate} {cls}",
            f"tc class replace dev {dev} parent 1:1 classid {UNMARKED} htb rate {rate} ceil {rate} prio 0 {cls}",
            f"tc class replace dev {dev} parent 1:1 classid {MARKED} htb rate {tc_rate(FLOOR_BPS)} ceil {rate} "
            f"prio 7 {cls}",
            *leaves]


def mark_command(dev: str, verb: str, prio: int, field: str, addr: str) -> str:
    if verb == "del":
        return f"tc filter del dev {dev} parent 1: protocol ip prio {prio}"
    return f"tc filter add dev {dev} parent 1: protocol ip prio {prio} u32 match ip {field} {addr}/32 flowid {MARKED}"


def _tc(line: str) -> None:
    r = subprocess.run(line.split(), capture_output=True, text=True)
    if r.returncode != 0:
        raise RunError(f"segment policy: `{line}`: {r.stderr.strip()}")


class Window:
    """Byte counter readings over a sliding window; the average rate across it."""

    def __init__(self, seconds: float):
        self.seconds, self.points = seconds, deque()

    def add(self, t: float, count: int) -> None:
        self.points.append((t, count))
        while len(self.points) > 2 and self.points[1][0] <= t - self.seconds:
            self.points.popleft()

    def full(self) -> bool:
        return len(self.points) >= 2 and self.points[-1][0] - self.points[0][0] >= self.seconds * 0.95

    def rate_bps(self) -> float:
        if len(self.points) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self.points[0], self.points[-1]
        return (c1 - c0) * 8 / max(t1 - t0, 1e-9)


class CongestionManager:
    """One segment's RFC 6057 policy, run in its own thread while the swarm runs."""

    def __init__(self, plan_: Plan, pol: SegmentPolicyPlan, rd, emit, clock, shaper=None):
        self.pol, self.rd, self.emit, self.clock = pol, rd, emit, clock
        link = next(lk for lk in plan_.links if lk.kind == "core" and {lk.node1, lk.node2} == {pol.segment, pol.core})
        seg_first = link.node1 == pol.segment
        # upstream leaves the segment's end; downstream leaves the core's end
        self.dev = {"up": link.intf1 if seg_first else link.intf2, "down": link.intf2 if seg_first else link.intf1}
        self.queue = (link.egress1 or link.egress2).queue_pkts
        self.shaping = {"up": link.egress1 if seg_first else link.egress2,
                        "down": link.egress2 if seg_first else link.egress1}
        self.shaper = shaper
        self.access = {lk.node1: lk.intf2 for lk in plan_.links if lk.kind == "access"}
        w = pol.rule.window
        self.port = {d: Window(w) for d in ("up", "down")}
        self.users = {(s[0], d): Window(w) for s in pol.subscribers for d in ("up", "down")}
        self.marked: dict[tuple[str, str], bool] = {}
        self.prio = {s[0]: 100 + i for i, s in enumerate(pol.subscribers)}
        self.actions = 0
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.error: str | None = None

    def install(self) -> None:
        for d in ("up", "down"):
            rate = self.pol.up_rate_bps if d == "up" else self.pol.down_rate_bps
            leaf = self.shaper.leaf("replace", self.dev[d], self.shaping[d], rate) if self.shaper else None
            for line in tree_commands(self.dev[d], rate, self.queue, leaf):
                _tc(line)

    def start(self) -> None:
        self.thread = threading.Thread(target=self.loop, name=f"rfc6057-{self.pol.segment}", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join(5)

    def loop(self) -> None:
        try:
            while not self.stop.wait(self.pol.rule.check_every):
                self.check(self.clock(), all_dev_stats())
        except Exception as exc:    # reported; the marks stay as they were
            self.error = str(exc)
            self.emit(self.rd.event("policy_error", segment=self.pol.segment, error=self.error))

    def check(self, t: float, devs: dict) -> None:
        rule = self.pol.rule
        # counters: (rx, tx, ...). The aggregation link's devices transmit in their direction;
        # a subscriber's upload is what the switch end of its access link received.
        for d in ("up", "down"):
            c = devs.get(self.dev[d])
            if c:
                self.port[d].add(t, c[1])
        for name, _addr, _up, _down in self.pol.subscribers:
            c = devs.get(self.access.get(name, ""))
            if c:
                self.users[(name, "up")].add(t, c[0])
                self.users[(name, "down")].add(t, c[1])
        for d in ("up", "down"):
            capacity = self.pol.up_rate_bps if d == "up" else self.pol.down_rate_bps
            port_util = self.port[d].rate_bps() / capacity
            congested = self.port[d].full() and port_util > (rule.port_threshold if d == "up"
                                                              else rule.down_port_threshold)
            for name, addr, up, down in self.pol.subscribers:
                win = self.users[(name, d)]
                use = win.rate_bps() / (up if d == "up" else down)
                key = (name, d)
                if not self.marked.get(key) and congested and win.full() and use > rule.user_threshold:
                    self.set_mark(t, name, addr, d, True, use, port_util)
                elif self.marked.get(key) and win.full() and use < rule.release_threshold:
                    self.set_mark(t, name, addr, d, False, use, port_util)

    def set_mark(self, t: float, name: str, addr: str, d: str, on: bool, use: float, port_util: float) -> None:
        field = "src" if d == "up" else "dst"
        prio = self.prio[name] * 2 + (d == "down")
        _tc(mark_command(self.dev[d], "add" if on else "del", prio, field, addr))
        self.marked[(name, d)] = on
        self.actions += 1
        row = {"t": round(t, 3), "segment": self.pol.segment, "host": name, "direction": d,
               "action": "mark" if on else "unmark", "user_share": round(use, 4), "port_util": round(port_util, 4)}
        self.rd.row("policy", row)
        self.emit(self.rd.event("policy_mark" if on else "policy_unmark", **row))

    def summary(self) -> dict:
        return {"segment": self.pol.segment, "policy": "rfc6057", "window_s": self.pol.rule.window,
                "actions": self.actions, "marked_at_end": sorted(f"{n}:{d}" for (n, d), on in self.marked.items() if on),
                "error": self.error}
