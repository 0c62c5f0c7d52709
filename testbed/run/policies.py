"""Policies: rules that act on what the sampler measured, by pushing events into the
executor's timeline (they never act on the machine themselves).

- seeding: a peer that completed stops seeding at once (stop), after a time (duration), or
  once it uploaded `ratio` times the content. The testbed carries this out for every
  client alike, through the client's API as a user would: the clients' own ratio and time
  limits differ too much to share one meaning (transmission 3.00 has only an idle-time
  limit; others count the ratio against downloaded bytes, or check once a minute).
- abort_at: a peer gives up when its download reaches a share.
- data plans: at the cap the carrier throttles or cuts the line, or the user stops seeding.
"""
from __future__ import annotations

from testbed import metering
from testbed.clients import PeerStats
from testbed.plan import Event, Plan


class Policies:
    def __init__(self, plan_: Plan, push, emit, rd):
        self.plan, self.push, self.emit, self.rd = plan_, push, emit, rd
        self.seeding = {h.name: h.participant.seeding for h in plan_.hosts if h.participant}
        self.abort_at = {h.name: h.participant.abort_at for h in plan_.hosts
                         if h.participant and h.participant.abort_at is not None}
        self.caps = {h.name: metering.CapWatch(h.data_plan) for h in plan_.hosts if h.data_plan}
        self.members = {h.name: h.members for h in plan_.homes}     # a home's data plan covers its clients
        self.seed_start: dict[str, float] = {}
        self.asked: set[str] = set()            # peers already told to stop seeding or give up

    def completed(self, name: str, t: float) -> None:
        """The peer (or a seeder, at the swarm's start) has every piece: it begins to seed."""
        self.seed_start[name] = t
        policy, amount = self.seeding[name]
        if policy == "stop":
            self._stop(name, t, "seeding_done")
        elif policy == "duration":
            self.push(Event(t + amount, "leave", name, "seeding_done"))
            self.asked.add(name)

    def _stop(self, name: str, t: float, reason: str) -> None:
        if name not in self.asked:
            self.asked.add(name)
            self.push(Event(t, "leave", name, reason))

    def tick(self, stats: dict[str, tuple[PeerStats, float]], ip_usage: dict[str, tuple[int, int]],
             t: float) -> None:
        """`stats`: each sampled peer's stats and when its client answered; `t`: when the
        interface counters behind `ip_usage` were read."""
        for name, (s, t_read) in stats.items():
            policy, amount = self.seeding.get(name, ("forever", None))
            if name in self.seed_start and policy == "ratio" and s.bytes_up >= amount * self.plan.content_bytes:
                self._stop(name, t_read, "seeding_done")
            share = self.abort_at.get(name)
            if share is not None and name not in self.seed_start and s.progress >= share and name not in self.asked:
                self.asked.add(name)
                self.push(Event(t_read, "abort", name, "abort_at"))
        for name, watch in self.caps.items():
            up, down = ip_usage.get(name, (0, 0))
            if not watch.update(t, up, down):
                continue
            action, rate = metering.at_cap_action(watch.plan)
            self.emit(self.rd.event("cap_reached", host=name, t_swarm=round(t, 3), action=action,
                                    ip_bytes_up=up, ip_bytes_down=down))
            if action == "throttle":
                self.push(Event(t, "throttle", name, "cap", rate_bps=rate))
            elif action == "cut":
                self.push(Event(t, "cut", name, "cap"))
            elif action == "stop_seeding":
                # the user (a home: each of its clients) stops seeding: at once if the download
                # is complete, else on completion
                for who in self.members.get(name, (name,)):
                    self.seeding[who] = ("stop", None)
                    if who in self.seed_start:
                        self._stop(who, t, "cap")
