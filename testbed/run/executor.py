"""The timeline executor: carries out the plan's events at their times, samples once per
interval, lets the policies push events of their own, and decides when the run ends.

Each peer is in one state: pending (not arrived), online, paused, offline (left, may come
back), crashed, or gone (left for good). An event that does not fit the peer's state (a
pause of a peer that has not arrived, a rejoin of one that is online) is skipped and
recorded as such in events.jsonl.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from testbed import availability
from testbed.errors import RunError
from testbed.plan import Event, Plan
from testbed.run.policies import Policies
from testbed.run.sampler import Sampler
from testbed.run.swarm import Swarm


@dataclass
class Peer:
    state: str = "pending"
    arrived_s: float | None = None
    completed_s: float | None = None
    left_s: float | None = None
    left_reason: str | None = None
    stop_decided_s: float | None = None   # the sample on which a seeding policy saw its condition
    sessions: int = 0                 # times its client was (re)started in the swarm
    carry_up: int = 0                 # client-reported bytes of earlier client lives
    carry_down: int = 0


DAEMON_LOST = ("the Docker daemon went away during the run (its event stream ended): it stops its containers "
               "when it stops, so the swarm is gone (container_died events name them); the results so far are kept")


class Executor:
    def __init__(self, plan_: Plan, swarm: Swarm, sampler: Sampler, rd, emit, interval: float):
        self.plan, self.swarm, self.sampler, self.rd, self.emit = plan_, swarm, sampler, rd, emit
        self.interval = interval
        self.barrier = None         # a shard's sync (workers/shard.py): its end is the swarm's
        self.peers = {h.name: Peer() for h in plan_.hosts if h.client}
        self.heap: list = []
        self.seq = itertools.count()
        self.lock = threading.Lock()
        self.policies = Policies(plan_, self.push, emit, rd)
        self.deaths_seen = 0
        self.died: dict[str, str] = {}     # host -> why its container died during the run
        self.rate_now: dict[tuple[str, str], float] = {}
        self.throttle: dict[str, float] = {}
        self.cut_lines: set[str] = set()          # hosts (peers or home routers) whose line was cut
        self.members = {h.name: h.members for h in plan_.homes}
        self.ended_by: str | None = None
        self.completion_bytes: dict[str, tuple[int, int]] = {}   # (interface, client) bytes up at completion
        self.copies: list[tuple[float, float]] = []       # (t, distributed copies among the peers online)
        # adding a torrent or restarting a client takes from 0.1 s to seconds: done aside, so
        # that the loop keeps its times; the peer is 'starting' meanwhile and not sampled
        self.slow = ThreadPoolExecutor(4, thread_name_prefix="peer-action")
        for ev in plan_.timeline:
            self.push(ev)

    def push(self, ev: Event) -> None:
        with self.lock:
            heapq.heappush(self.heap, (ev.key, next(self.seq), ev))

    def now(self) -> float:
        return self.sampler.now()

    # ------------------------------------------------------------ events
    def apply(self, ev: Event) -> None:
        t = self.now()
        p = self.peers.get(ev.host)
        handler = getattr(self, f"_{ev.kind}")
        try:
            done = handler(ev, p, t)
        except Exception as exc:   # reported; the run goes on without this event
            self.emit(self.rd.event("event_error", host=ev.host, event=ev.kind, error=f"{exc.__class__.__name__}: "
                                    f"{exc}"))
            return
        if done is False:
            self.rd.event("event_skipped", host=ev.host, event=ev.kind, reason=ev.reason,
                          state=p.state if p else None, t_planned=round(ev.t, 3))
            return
        late = round(t - ev.t, 3)
        self.emit(self.rd.event(ev.kind if ev.kind != "set_rate" else "rate_set", host=ev.host, reason=ev.reason,
                                t_swarm=round(t, 3), t_planned=round(ev.t, 3), late_s=late))

    def aside(self, ev: Event, p: Peer, action) -> None:
        """Run a slow action off the loop; the peer is online once it is done."""
        p.state = "starting"

        def go():
            try:
                action()
                p.state = "online"
            except Exception as exc:
                p.state = "crashed"
                self.emit(self.rd.event("event_error", host=ev.host, event=ev.kind,
                                        error=f"{exc.__class__.__name__}: {exc}"))
        self.slow.submit(go)

    def _arrive(self, ev: Event, p: Peer, t: float):
        if p.state != "pending":
            return False
        p.arrived_s, p.sessions = self.now(), 1
        if self.plan.host(ev.host).role == "seeder":    # added and verified before the swarm started
            p.state, p.completed_s = "online", 0.0
            self.completion_bytes[ev.host] = (0, 0)
            self.policies.completed(ev.host, 0.0)
            return
        self.aside(ev, p, lambda: self.swarm.drivers[ev.host].add_torrent(self.swarm.torrent, seed=False))

    def _leave(self, ev: Event, p: Peer, t: float):
        if p.state not in ("online", "paused") or (ev.reason == "offline" and p.state != "online"):
            return False
        if p.state == "paused":
            self.swarm.freeze(ev.host, False)
        self.swarm.drivers[ev.host].stop_torrent()
        p.state = "offline" if ev.reason == "offline" else "gone"
        p.left_s, p.left_reason = self.now(), ev.reason
        if ev.reason in ("seeding_done", "cap"):
            p.stop_decided_s = ev.t
            last = self.sampler.seen.last.get(ev.host)
            self.emit(self.rd.event("seeding_stopped", host=ev.host, policy=self.policies.seeding[ev.host][0],
                                    t_swarm=round(ev.t, 3), bytes_up=(last.bytes_up if last else 0) + p.carry_up))

    def _abort(self, ev: Event, p: Peer, t: float):
        if p.completed_s is not None:
            return False
        return self._leave(ev, p, t)

    def _crash(self, ev: Event, p: Peer, t: float):
        if p.state not in ("online", "paused"):
            return False
        if p.state == "paused":
            self.swarm.freeze(ev.host, False)
        self.swarm.crash(ev.host)
        p.state, p.left_s, p.left_reason = "crashed", self.now(), "crash"

    def _rejoin(self, ev: Event, p: Peer, t: float):
        allowed = ("offline", "crashed", "gone") if ev.reason == "fault" else ("offline", "crashed")
        if p.state not in allowed or (ev.reason == "online" and p.state != "offline"):
            return False
        last = self.sampler.seen.last.get(ev.host)
        if last is not None:         # the new client counts from zero
            p.carry_up += last.bytes_up
            p.carry_down += last.bytes_down
            self.sampler.seen.last.pop(ev.host)
        was = p.state
        p.sessions += 1
        p.left_s = p.left_reason = None

        def back():
            if was != "crashed":
                self.swarm.crash(ev.host)        # the idle client, whose torrent is stopped
            self.swarm.restart(ev.host)
        self.aside(ev, p, back)

    def _pause(self, ev: Event, p: Peer, t: float):
        if p.state != "online":
            return False
        self.swarm.freeze(ev.host, True)
        p.state = "paused"

    def _resume(self, ev: Event, p: Peer, t: float):
        if p.state != "paused":
            return False
        self.swarm.freeze(ev.host, False)
        p.state = "online"

    def _set_rate(self, ev: Event, p: Peer, t: float):
        self.rate_now[(ev.host, ev.direction)] = ev.rate_bps
        return self._apply_rate(ev.host, ev.direction, "trace")

    def _throttle(self, ev: Event, p: Peer, t: float):
        self.throttle[ev.host] = ev.rate_bps
        for direction in ("up", "down"):
            self._apply_rate(ev.host, direction, "throttle")

    def _apply_rate(self, host: str, direction: str, cause: str):
        if host in self.cut_lines:
            return False
        s = getattr(self.plan.host(host), direction)
        rate = min(self.rate_now.get((host, direction), s.rate_bps), self.throttle.get(host, float("inf")))
        self.swarm.links.set_rate(host, direction, rate)
        self.rd.row("links", {"t": round(self.now(), 3), "host": host, "direction": direction,
                              "rate_bps": round(rate), "cause": cause})

    def _cut(self, ev: Event, p: Peer, t: float):
        self.swarm.links.carrier(ev.host, up=False)
        self.cut_lines.add(ev.host)
        t_cut = self.now()            # the line went down now, after this sample's counters were read
        # a home's line: every client behind it is cut off with it
        for q in [p] if p is not None else [self.peers[m] for m in self.members.get(ev.host, ())]:
            if q.state != "gone":
                q.left_s = t_cut
            q.state, q.left_reason = "gone", "cut"
        for direction in ("up", "down"):
            self.rd.row("links", {"t": round(t_cut, 3), "host": ev.host, "direction": direction,
                                  "rate_bps": 0, "cause": "cut"})

    def _tracker_down(self, ev: Event, p, t: float):
        self.swarm.stop_tracker()

    def _tracker_up(self, ev: Event, p, t: float):
        self.swarm.start_tracker()

    # ------------------------------------------------------------ the loop
    def start_links(self) -> None:
        for h in self.plan.hosts:
            for direction in ("up", "down"):
                s = getattr(h, direction)
                if s is not None:
                    self.rd.row("links", {"t": 0.0, "host": h.name, "direction": direction,
                                          "rate_bps": round(s.rate_bps), "cause": "trace" if s.trace else "static"})

    def active(self) -> set[str]:
        return {n for n, p in self.peers.items() if p.state == "online" or (p.state in ("offline", "gone")
                                                                             and p.left_reason != "cut")}

    def pending(self, name: str, kinds: tuple[str, ...]) -> bool:
        return any(ev.host == name and ev.kind in kinds for _, _, ev in self.heap)

    def done(self, name: str) -> bool:
        p = self.peers[name]
        if p.completed_s is not None and p.state != "crashed":
            return True
        if p.state == "pending":
            return not self.pending(name, ("arrive",))
        return p.state == "gone" or (p.state in ("offline", "crashed") and not self.pending(name, ("rejoin",)))

    def notice_deaths(self) -> None:
        """Containers that died without the run killing them: their peers crashed, and why."""
        if self.swarm.watch is None:
            return
        for d in self.swarm.watch.since(self.deaths_seen):
            self.deaths_seen += 1
            why = "killed by its memory limit" if d["oom"] else f"exit {d['exit_code']}"
            self.emit(self.rd.event("container_died", host=d["host"], exit_code=d["exit_code"], oom=d["oom"],
                                    t_swarm=round(self.now(), 3), reason=why))
            p = self.peers.get(d["host"])
            if p is not None and p.state in ("online", "starting", "paused", "pending"):
                p.state, p.left_s, p.left_reason = "crashed", self.now(), "container_died"
            self.died[d["host"]] = why

    def sample(self) -> None:
        self.notice_deaths()
        t = self.now()
        stats = self.sampler.tick(self.active())
        for name, (s, t_read) in stats.items():
            p = self.peers[name]
            if p.completed_s is None and s.progress >= 1.0 and p.state == "online":
                p.completed_s = t_read      # when its client said so
                self.completion_bytes[name] = (self.sampler.seen.if_bytes(name)[0], s.bytes_up + p.carry_up)
                self.emit(self.rd.event("peer_complete", host=name, t_swarm=round(t_read, 3),
                                        download_s=round(t_read - p.arrived_s, 3)))
                self.policies.completed(name, t_read)
        self.policies.tick(stats, {**self.sampler.seen.ip_usage, **self.sampler.home_usage}, t)
        counts = {state: sum(1 for p in self.peers.values() if p.state == state)
                  for state in ("online", "paused", "offline", "crashed", "gone")}
        seeds = sum(1 for p in self.peers.values() if p.state == "online" and p.completed_s is not None)
        copies = self.distributed_copies()
        if copies is not None:
            self.copies.append((t, copies))
        if self.barrier is not None:
            # a shard sees only its own peers: its per-piece counts, for the merge to add up
            per_piece = self.piece_counts()
            self.rd.row("pieces", {"t": round(t, 3),
                                   "counts": "" if per_piece is None else " ".join(map(str, per_piece))})
        self.rd.row("swarm", {"t": round(t, 3), **counts, "seeds_online": seeds,
                              "leechers_online": counts["online"] - seeds,
                              "copies": None if copies is None else round(copies, 4)})
        self.rd.flush()         # the tick's rows on disk: a run killed now loses no more than this tick
        leechers = [h.name for h in self.plan.by_role("leecher")]
        rate = sum(stats[n][0].rate_down for n in leechers if n in stats)
        self.emit({"kind": "progress", "t": t, "done": sum(1 for n in leechers if self.done(n)),
                   "total": len(leechers), "online": counts["online"], "rate_down_Bps": rate,
                   "t_min_s": self.plan.t_min_s})

    def piece_counts(self) -> list[int] | None:
        """Per piece, how many peers online hold it, from their clients' own piece maps (None:
        no peer online has reported one)."""
        maps = [self.sampler.seen.pieces.get(n) for n, p in self.peers.items() if p.state == "online"]
        maps = [m for m in maps if m]
        return availability.counts(maps) if maps else None

    def distributed_copies(self) -> float | None:
        """The swarm's availability among the peers online (availability.copies)."""
        per_piece = self.piece_counts()
        if per_piece is None:
            return 0.0 if not any(p.state == "online" for p in self.peers.values()) else None
        return availability.copies(per_piece)

    def availability(self) -> dict:
        return availability.summarize(self.copies)

    def finished(self, t: float) -> str | None:
        if self.barrier is not None:
            self.barrier.check()        # a shard told to stop mid-swarm, or cut off: RunError
        if self.plan.end == "duration":
            return "duration" if t >= self.plan.horizon_s else None
        leechers = [h.name for h in self.plan.by_role("leecher")]
        if not all(self.done(n) for n in leechers):
            return None
        if self.barrier is not None:        # a shard: its own leechers are done; it seeds on until
            self.barrier.mark("done")       # every worker's are, and the coordinator says 'end'
            return "all_done" if self.barrier.arrived("end") else None
        return "all_done"

    def run(self) -> str:
        """Carry the timeline out until the run ends; returns complete or timeout."""
        self.start_links()
        next_sample = 0.0
        while True:
            t = self.now()
            while self.heap and self.heap[0][2].t <= t:
                with self.lock:
                    _, _, ev = heapq.heappop(self.heap)
                self.apply(ev)
            if t >= next_sample:
                if self.swarm.element is not None and not self.swarm.element.alive():
                    raise RunError(f"the userspace delay element exited (see {self.swarm.element.log})")
                self.sample()
                if self.swarm.watch is not None and self.swarm.watch.lost is not None:
                    self.emit(self.rd.event("docker_daemon_lost", t_swarm=round(self.now(), 3)))
                    raise RunError(DAEMON_LOST)
                # one sample per interval; after a stall, the next one interval on, not a burst
                next_sample = max(next_sample + self.interval, self.now())
                if (ended := self.finished(self.now())) is not None:
                    self.ended_by = ended
                    return "complete"
                if t >= self.plan.timeout_s:
                    self.emit(self.rd.event("timeout", after_s=self.plan.timeout_s))
                    self.ended_by = "timeout"
                    return "timeout"
            wake = min(next_sample, self.heap[0][2].t if self.heap else next_sample)
            time.sleep(max(0.0, min(wake - self.now(), self.interval)))
