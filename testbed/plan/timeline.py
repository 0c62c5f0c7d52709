"""The timeline of a run: every event the executor carries out, with its time, drawn from
the experiment's named random streams. Pure.

Event kinds (t in seconds after the swarm starts):
  arrive        the peer's user adds the torrent (its client is already running, idle)
  leave         it stops the torrent and leaves (reason: session_end, offline, fault)
  abort         it gives up, if it has not completed by then
  crash         its client is killed (SIGKILL); rejoin restarts it with the data it had
  rejoin        it comes back with the data it had (after leave: offline, or crash)
  pause/resume  it is frozen (no process runs, no packet crosses its link) and thawed
  set_rate      a traced link's next rate
  tracker_down/tracker_up   the tracker fails and comes back
  throttle/cut  a carrier slows or cuts a line at a data plan's cap (pushed by a policy)
Events that depend on what happens in the run (completing, a ratio, a cap) are not here:
the executor's policies push them while it runs.
"""
from __future__ import annotations

from dataclasses import dataclass

from testbed.model.churn import ProfileUse
from testbed.model.schema import Behaviour, Experiment, PeerGroup
from testbed.plan import draws

ORDER = {"tracker_up": 0, "set_rate": 1, "throttle": 1, "rejoin": 2, "resume": 3, "arrive": 4, "pause": 5,
         "crash": 6, "abort": 7, "leave": 8, "cut": 8, "tracker_down": 9}
TIMELINE_FIELDS = ["t", "kind", "host", "reason", "direction", "rate_bps"]


@dataclass(frozen=True)
class Event:
    t: float
    kind: str
    host: str
    reason: str = ""
    direction: str = ""           # set_rate: up or down
    rate_bps: float = 0.0         # set_rate: the new rate

    def row(self) -> dict:
        return {"t": f"{self.t:.6f}", "kind": self.kind, "host": self.host, "reason": self.reason,
                "direction": self.direction, "rate_bps": f"{self.rate_bps:.0f}" if self.kind == "set_rate" else ""}

    @property
    def key(self) -> tuple:
        return (self.t, ORDER[self.kind], self.host, self.direction)


@dataclass(frozen=True)
class Participant:
    """What one peer's user does: the profile it follows and what the run's policies act on."""

    profile: str                  # the participation profile, or "full"
    arrival_s: float | None       # None: the arrival process never brought it
    seeding: tuple[str, float | None]   # forever | stop | duration | ratio, and its amount
    abort_at: float | None = None       # gives up at this share of the download


def behaviour_of(g: PeerGroup, use: ProfileUse | None, up_bps: float) -> Behaviour:
    """The group's client knobs with the profile's on top."""
    if use is None:
        return g.behaviour
    update = {}
    if use.upload_limit is not None:
        update["upload_limit"] = use.upload_limit
    elif use.upload_share is not None:
        update["upload_limit"] = max(8 * 1024.0, use.upload_share * up_bps)
    if use.connectable is not None:
        update["connectable"] = use.connectable
    return g.behaviour.model_copy(update=update)


def seeding_of(g: PeerGroup, use: ProfileUse | None, seed_time: float | None) -> tuple[str, float | None]:
    if use is not None:
        if use.seeding is not None:
            return use.seeding, None
        if use.ratio is not None:
            return "ratio", use.ratio
        if seed_time is not None:
            return "duration", seed_time
    return g.behaviour.seeding_policy()


def _cycles(name: str, start: float, online: list[float], offline: list[float], horizon: float) -> list[Event]:
    out, t = [], start
    for on, off in zip(online, offline):
        t += on
        if t >= horizon:
            break
        out.append(Event(t, "leave", name, "offline"))
        t += off
        if t >= horizon:
            break
        out.append(Event(t, "rejoin", name, "online"))
    return out


def group_events(exp: Experiment, g: PeerGroup, names: tuple[str, ...], repetition: int,
                 horizon: float) -> tuple[dict[str, tuple[ProfileUse | None, Participant]], list[Event]]:
    """Each member's profile use and participant record, and its planned events."""
    seed = exp.seed
    arrivals = draws.arrival_times(g.arrivals, len(names), draws.stream(seed, repetition, f"arrivals/{g.name}"))
    uses: list[ProfileUse | None] = [None] * len(names)
    if g.participation:
        which = draws.assign_shares([u.share or 1.0 for u in g.participation], len(names),
                                    draws.stream(seed, repetition, f"profiles/{g.name}"))
        uses = [g.participation[i] for i in which]
    rng = draws.stream(seed, repetition, f"durations/{g.name}")

    def one(dist) -> float | None:
        return None if dist is None else draws.durations(dist, 1, rng)[0]

    members, events = {}, []
    for name, arrival, use in zip(names, arrivals, uses):
        # every member draws every duration, used or not, so that one member's profile does not
        # shift the next member's draws
        d = {k: one(getattr(use, k, None)) for k in
             ("seed_time", "session", "abort_after", "crash_after", "rejoin_after")}
        cycles = 0 if use is None or use.online is None else max(8, int(horizon / 10))
        on = draws.durations(use.online, cycles, rng) if cycles else []
        off = draws.durations(use.offline, cycles, rng) if cycles else []
        members[name] = (use, Participant(use.profile if use else "full", arrival,
                                          seeding_of(g, use, d["seed_time"]), getattr(use, "abort_at", None)))
        if arrival is None or arrival >= horizon:
            continue
        events.append(Event(arrival, "arrive", name))
        if d["session"] is not None:
            events.append(Event(arrival + d["session"], "leave", name, "session_end"))
        if d["abort_after"] is not None:
            events.append(Event(arrival + d["abort_after"], "abort", name, "abort_after"))
        if d["crash_after"] is not None:
            events.append(Event(arrival + d["crash_after"], "crash", name, "crash_after"))
            if d["rejoin_after"] is not None:
                events.append(Event(arrival + d["crash_after"] + d["rejoin_after"], "rejoin", name, "after_crash"))
        events += _cycles(name, arrival, on, off, horizon)
    return members, [e for e in events if e.t < horizon]


def fault_events(exp: Experiment, horizon: float) -> list[Event]:
    out = []
    for f in exp.faults:
        host = f.host or "tracker"
        if f.kind == "tracker_down":
            out.append(Event(f.at, "tracker_down", "tracker", "fault"))
            if f.for_:
                out.append(Event(f.at + f.for_, "tracker_up", "tracker", "fault"))
        elif f.kind == "pause":
            out += [Event(f.at, "pause", host, "fault"), Event(f.at + f.for_, "resume", host, "fault")]
        elif f.kind == "stop":
            out.append(Event(f.at, "leave", host, "fault"))
        else:
            out.append(Event(f.at, f.kind, host, "fault"))
    return [e for e in out if e.t < horizon]


def rate_events(host: str, direction: str, trace, horizon: float) -> list[Event]:
    return [Event(t, "set_rate", host, "trace", direction, r) for t, r in trace.changes(horizon) if 0 < t < horizon]


def ordered(events: list[Event]) -> tuple[Event, ...]:
    return tuple(sorted(events, key=lambda e: e.key))
