"""Link shapers: one small interface, implementations side by side, chosen by name.

Every shaper makes one direction of a link do what plan.Shaping says: a rate with a
drop-tail queue of `queue` packets, and delay, jitter and random loss. The rate is always
an HTB class on the egress of the link's interface (HTB is on every kernel this project has
met). Delay, jitter and loss are made one of two ways, with the same meaning:

netem      the kernel's sch_netem, as the child of the HTB class (ordinary distribution
           kernels have it). netem's queue holds the packets in flight too, so its limit is
           the queue plus the link's bandwidth-delay product. With jitter and no reordering,
           netem is also given the link's rate: netem then schedules each packet after the
           one before it (netem_enqueue), so jitter cannot reorder.
userspace  for kernels without sch_netem: a pfifo beneath HTB, and a userspace element on
           NFQUEUE at each receiving host (testbed.delayer) that holds each arriving packet
           for the path's delay, drops it with the path's loss probability and releases it
           in order. A receiver applies the sender's upload delay and loss as well as its
           own download ones, so a path's impairments are applied once, at its end (the
           approach of Kollaps, Gouveia et al., EuroSys 2020). Measured on the development
           machine with 50 ms: held at the sender, TCP fell to about 1 Mbit/s (held packets
           count against the sender's socket); at the receiver, iperf3 ran at 1.45 Gbit/s.

Commands are generated purely here and run by the network layer inside the namespace.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

from testbed.plan import Plan, Shaping
from testbed.units import tc_rate, tc_time

MTU_FRAME = 1514


def burst_bytes(rate_bps: float) -> int:
    # HTB needs a bucket of at least one full frame, and about a timer tick's worth of
    # bytes at high rates (4 ms here) or it undershoots the rate.
    return max(2 * MTU_FRAME, int(rate_bps / 8 * 0.004))


def htb_class(verb: str, dev: str, rate_bps: float) -> str:
    rate = tc_rate(rate_bps)
    burst = burst_bytes(rate_bps)
    # quantum only matters between sibling classes; one class here, so keep it at a frame
    # and spare the kernel's "quantum is big" warning at high rates.
    return (f"tc class {verb} dev {dev} parent 1: classid 1:1 htb rate {rate} ceil {rate} "
            f"burst {burst}b cburst {burst}b quantum {MTU_FRAME}")


class LinkShaper(ABC):
    name: str
    # whether receiving hosts need the userspace delay element for impaired links
    userspace_element: bool = False

    def commands(self, dev: str, shaping: Shaping) -> list[str]:
        """tc command lines that make `dev`'s egress behave as `shaping`."""
        return [f"tc qdisc replace dev {dev} root handle 1: htb default 1",
                htb_class("replace", dev, shaping.rate_bps),
                self.leaf("replace", dev, shaping, shaping.rate_bps)]

    def rate_change(self, dev: str, shaping: Shaping, rate_bps: float) -> list[str]:
        """tc command lines that move a shaped direction to a new rate while traffic flows."""
        return [htb_class("change", dev, rate_bps)]

    @abstractmethod
    def leaf(self, verb: str, dev: str, shaping: Shaping, rate_bps: float) -> str:
        """The qdisc beneath the HTB class."""


class HtbShaper(LinkShaper):
    """Rate and queue only: for links without delay, jitter or loss."""

    name = "htb"

    def leaf(self, verb: str, dev: str, shaping: Shaping, rate_bps: float) -> str:
        return f"tc qdisc {verb} dev {dev} parent 1:1 handle 10: pfifo limit {shaping.queue_pkts}"


class NetemShaper(HtbShaper):
    name = "netem"

    @staticmethod
    def limit(shaping: Shaping, rate_bps: float) -> int:
        in_flight = rate_bps * (shaping.delay_s + shaping.jitter_s) / 8 / MTU_FRAME
        return shaping.queue_pkts + math.ceil(in_flight) + 1

    def leaf(self, verb: str, dev: str, shaping: Shaping, rate_bps: float) -> str:
        if not shaping.impaired:
            return super().leaf(verb, dev, shaping, rate_bps)
        line = f"tc qdisc {verb} dev {dev} parent 1:1 handle 10: netem limit {self.limit(shaping, rate_bps)}"
        if shaping.delay_s or shaping.jitter_s:
            line += f" delay {tc_time(shaping.delay_s)}"
            if shaping.jitter_s:
                line += f" {tc_time(shaping.jitter_s)}"
        if shaping.loss:
            line += f" loss random {shaping.loss * 100:.6g}%"
        if shaping.jitter_s and not shaping.reorder:
            line += f" rate {tc_rate(rate_bps)}"
        return line

    def rate_change(self, dev: str, shaping: Shaping, rate_bps: float) -> list[str]:
        lines = super().rate_change(dev, shaping, rate_bps)
        if shaping.impaired:
            lines.append(self.leaf("change", dev, shaping, rate_bps))
        return lines


class UserspaceShaper(HtbShaper):
    name = "userspace"
    userspace_element = True


SHAPERS: dict[str, type[LinkShaper]] = {s.name: s for s in (HtbShaper, NetemShaper, UserspaceShaper)}


def choose(requested: str, netem_available: bool) -> type[LinkShaper]:
    """The shaper for a run: `auto` takes netem where the kernel has it, else userspace."""
    if requested == "auto":
        return NetemShaper if netem_available else UserspaceShaper
    return SHAPERS[requested]


def core_paths(plan: Plan) -> dict[tuple[str, str], list[Shaping]]:
    """For each ordered pair of sites, the core-link directions a packet crosses (fewest hops)."""
    adjacent: dict[str, list[tuple[str, Shaping]]] = {}
    for lk in plan.links:
        if lk.kind == "core":
            adjacent.setdefault(lk.node1, []).append((lk.node2, lk.egress1))
            adjacent.setdefault(lk.node2, []).append((lk.node1, lk.egress2))
    sites = {h.site for h in plan.hosts}
    paths: dict[tuple[str, str], list[Shaping]] = {}
    for start in sites:
        seen, frontier = {start: []}, [start]
        while frontier:
            nxt = []
            for site in frontier:
                for other, shaping in adjacent.get(site, []):
                    if other not in seen:
                        seen[other] = seen[site] + [shaping]
                        nxt.append(other)
            frontier = nxt
        paths.update({(start, end): hops for end, hops in seen.items()})
    return paths


def _params(stages: list[Shaping | None]) -> dict:
    """Stages crossed one after another: delays add, jitters stay separate, losses compound."""
    stages = [s for s in stages if s is not None]
    keep = 1.0
    for s in stages:
        keep *= 1 - s.loss
    return {"delay": sum(s.delay_s for s in stages), "jitter": [s.jitter_s for s in stages if s.jitter_s],
            "loss": 1 - keep}


def path_impairments(plan: Plan, whole: Plan | None = None) -> dict[str, dict]:
    """For the userspace element: per receiving host, what its own download direction adds,
    and what each sender's path adds before it (its upload, then the core links between
    their sites), keyed by the sender's data address. Hosts that receive nothing impaired
    are left out (they need no element). `whole`: for a shard of a swarm split over workers
    (`plan` its own hosts), the whole plan, whose senders and core links on other workers
    impair the paths into this one's receivers just the same."""
    core = core_paths(whole or plan)
    out = {}
    # Behind a home router, packets arrive through the router, which applies the path's
    # impairments on its WAN side; the LAN adds none. Clients behind NAT are neither
    # receivers nor senders here (their packets carry the router's address).
    wan = [h for h in plan.hosts if not h.behind_nat]
    senders = [h for h in (whole or plan).hosts if not h.behind_nat]
    for h in wan:
        from_ = {}
        for s in senders:
            if s.name == h.name:
                continue
            p = _params([s.up, *core.get((s.site, h.site), [])])
            if p["delay"] or p["jitter"] or p["loss"]:
                from_[s.data_ip] = p
        own = _params([h.down])
        if from_ or own["delay"] or own["jitter"] or own["loss"]:
            out[h.name] = {"down": own, "from": from_,
                           "reorder": bool(h.down.reorder) if h.down is not None else False}
    return out


# Packets per second that crossed the delay element with under 0.1 % loss: benchmarks/delayer.py
# on this project's 2-core CI machine (400 Mbit/s of 1400-byte datagrams, 7.5 us of element
# CPU each). At 71,000/s the element still passed every packet, but the machine's other work
# (the receiving application) lost 6-12 %. A figure for a warning, not a limit.
ELEMENT_CAPACITY_PPS = 35_000


def peak_rate(s: Shaping | None) -> float | None:
    """The highest rate a direction can reach over the run (None: not shaped)."""
    if s is None:
        return None
    return max([s.rate_bps, *(r for _, r in s.trace.steps)] if s.trace else [s.rate_bps])


def element_load_pps(plan: Plan, tables: dict[str, dict]) -> float | None:
    """An upper bound on the packets per second the element must pass: full frames into its
    receiving hosts (`tables`), at most the smaller of their summed download rates and every
    peer's summed upload rate, plus one ACK per two segments (delayed ACK). None when both
    sums are unbounded (an unshaped link)."""
    if not tables:
        return 0.0
    downs = [peak_rate(plan.host(n).down) for n in tables]
    # what peers send: their own links, or their home's (a router's) for clients behind one
    ups = [peak_rate(h.up) for h in plan.hosts if (h.client and not h.behind_nat) or h.role == "router"]
    bounds = [sum(rates) for rates in (downs, ups) if None not in rates]
    if not bounds:
        return None
    return min(bounds) / (MTU_FRAME * 8) * 1.5


def nfqueue_rules(table: dict, data_if: str = "eth0") -> list[list[str]]:
    """iptables argument lists that hand a receiving host's impaired arrivals to the element:
    everything, if its own download is impaired, else only what comes from impaired senders
    (so an unimpaired path never passes through userspace)."""
    base = ["-t", "raw", "-A", "PREROUTING", "-i", data_if]
    target = ["-j", "NFQUEUE", "--queue-num", "0"]
    if any(table["down"].values()):
        return [base + target]
    return [base + ["-s", f"{ip}/32"] + target for ip in sorted(table["from"])]
