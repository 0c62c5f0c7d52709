"""Metering and billing: what a carrier counts, and what a peer's data plan makes it pay.

Pure: the orchestrator feeds it interface counters each second; nothing here touches the
machine. Carriers count IP bytes, so the link-layer header (14 bytes of Ethernet on the
veth) is taken off each packet. GB is 10^9 bytes, as carriers bill.
"""
from __future__ import annotations

from dataclasses import dataclass

from testbed.model import DataPlan, Throttle

ETHERNET_HEADER = 14
GB = 1e9


def ip_bytes(l2_bytes: int, packets: int) -> int:
    return max(0, l2_bytes - ETHERNET_HEADER * packets)


def counted(plan: DataPlan, up: int, down: int) -> int:
    """The bytes of a run that count against the plan."""
    return {"both": up + down, "up": up, "down": down}[plan.counts]


def at_cap_action(plan: DataPlan) -> tuple[str, float | None]:
    """('overage'|'throttle'|'cut'|'stop_seeding', throttle rate or None)."""
    if isinstance(plan.at_cap, Throttle):
        return "throttle", plan.at_cap.throttle
    return plan.at_cap, None


def charge(plan: DataPlan, usage: float, minutes: float) -> dict:
    """The bill for a period in which `usage` bytes were counted and `minutes` spent online."""
    over = max(0.0, usage - plan.cap) if plan.cap is not None else 0.0
    parts = {"fee": plan.fee, "data": plan.per_gb * usage / GB, "overage": plan.overage_per_gb * over / GB,
             "time": plan.per_minute * minutes}
    return {"total": sum(parts.values()), **parts, "usage_bytes": usage, "over_cap_bytes": over}


def bill(plan: DataPlan, up: int, down: int, minutes: float) -> dict:
    """The period's bill after the run, and the parts of it the run and its uploading caused.

    caused_by_run: the bill less the bill had the run not happened (the plan's earlier usage
    only). caused_by_upload: the bill less the bill had the peer uploaded nothing in the run,
    everything else equal."""
    total = charge(plan, plan.used + counted(plan, up, down), minutes)
    without_run = charge(plan, plan.used, 0.0)
    without_upload = charge(plan, plan.used + counted(plan, 0, down), minutes)
    r = lambda x: round(x, 6)    # noqa: E731 - money to a millionth, enough for any tariff
    return {
        "currency": plan.currency,
        "total": r(total["total"]),
        "parts": {k: r(total[k]) for k in ("fee", "data", "overage", "time")},
        "caused_by_run": r(total["total"] - without_run["total"]),
        "caused_by_upload": r(total["total"] - without_upload["total"]),
        "counted_bytes": int(total["usage_bytes"]), "over_cap_bytes": int(total["over_cap_bytes"]),
        "run_bytes_up": up, "run_bytes_down": down, "minutes": round(minutes, 3),
    }


@dataclass
class CapWatch:
    """Watches one peer's usage against its cap; says once when the cap is reached."""

    plan: DataPlan
    reached_at: float | None = None

    def update(self, t: float, up: int, down: int) -> bool:
        """True on the sample at which usage first reaches the cap."""
        if self.plan.cap is None or self.reached_at is not None:
            return False
        if self.plan.used + counted(self.plan, up, down) >= self.plan.cap:
            self.reached_at = t
            return True
        return False
