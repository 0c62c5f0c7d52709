"""Link shapers: one small interface, implementations side by side, chosen by name.

A shaper turns what one direction of a link should do (plan.Shaping) into tc commands
for the egress of one interface. The commands are generated purely here and run by the
network layer inside the right namespace.

htb: rate via an HTB class and a drop-tail pfifo of `queue` packets beneath it. HTB and
pfifo are present on every Linux kernel this project has met, netem-less ones included.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from testbed.plan import Shaping
from testbed.units import tc_rate

MTU_FRAME = 1514


class LinkShaper(ABC):
    name: str

    @abstractmethod
    def commands(self, dev: str, shaping: Shaping) -> list[str]:
        """tc command lines that make `dev`'s egress behave as `shaping`."""


class HtbShaper(LinkShaper):
    name = "htb"

    @staticmethod
    def burst_bytes(rate_bps: float) -> int:
        # HTB needs a bucket of at least one full frame, and about a timer tick's worth
        # of bytes at high rates (4 ms here) or it undershoots the rate.
        return max(2 * MTU_FRAME, int(rate_bps / 8 * 0.004))

    def commands(self, dev: str, shaping: Shaping) -> list[str]:
        rate = tc_rate(shaping.rate_bps)
        burst = self.burst_bytes(shaping.rate_bps)
        # quantum only matters between sibling classes; one class here, so keep it at a
        # frame and spare the kernel's "quantum is big" warning at high rates.
        return [
            f"tc qdisc replace dev {dev} root handle 1: htb default 1",
            f"tc class replace dev {dev} parent 1: classid 1:1 htb rate {rate} ceil {rate} "
            f"burst {burst}b cburst {burst}b quantum {MTU_FRAME}",
            f"tc qdisc replace dev {dev} parent 1:1 handle 10: pfifo limit {shaping.queue_pkts}",
        ]


SHAPERS: dict[str, type[LinkShaper]] = {HtbShaper.name: HtbShaper}
