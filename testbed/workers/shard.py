"""A worker's shard of a swarm spread over several workers, on the worker's side.

The coordinator sends each worker the experiment and a spec (the swarm's run id, the
placement, every worker's underlay address); the worker's `testbed workers shard` plans the
whole experiment under its own run id (plan/shard.py), keeps its hosts, brings them up, and
joins each stretched site's switch to the other workers' copies with a VXLAN device.

The workers keep step through a sync directory that the coordinator's playbook writes into
(playbooks/shard.yml). The shard writes the stage it reached into `state`; the playbook's
plays, each a barrier over all workers, wait for that stage on every worker, then create the
file that lets every shard go on:

    ready   network up, tunnels joined, tracker listening  -> `go`:    start the clients
    seeded  seeders verified (the tracker's shard: all announced) -> `start`: the swarm's t=0
    done    its own leechers all done (it keeps seeding)   -> `end`:   the shard ends
    ended <status>  whenever it ends, failed or not
    `abort` (from the coordinator, at any time): the shard ends as failed

A worker cut off from the coordinator cannot be told to end: Ansible only finds it
unreachable. So a shard whose worker answered the coordinator's clock probes keeps asking
its responder (workers/clock.py, kept up for the whole split) every HEARTBEAT_S; unanswered
for LOST_S, the shard ends as failed and tears its swarm down, as the coordinator counts the
worker lost, rather than running on to its own timeout.

Files, not a protocol of our own: Ansible's wait_for and file modules are the whole
coordinator side, and a test reads them.
"""
from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from testbed.errors import InputError, RunError
from testbed.plan.build import WORKER_UNDERLAY, Plan
from testbed.plan.shard import restrict, shard_run_id, stretched
from testbed.workers import clock, vxlan

POLL_S = 0.02
HEARTBEAT_S = 2.0       # how often a shard asks whether the coordinator is there
# unanswered this long (15 probes), the worker is cut off: longer than any pause the
# coordinator's own load could cause, short beside a swarm's minutes
LOST_S = 30.0


@dataclass(frozen=True)
class ShardSpec:
    run_id: str                     # the swarm's (the coordinator's)
    worker: str                     # this worker
    first: str                      # the coordinator's worker: tracker, origins, core links
    placement: dict[str, str]       # host -> worker
    underlays: dict[str, str]       # worker -> its tunnels' address
    underlay_mtu: int = 1550
    coordinator: str | None = None  # its underlay address, if this worker answered its clock probes

    @property
    def shard_run_id(self) -> str:
        return shard_run_id(self.run_id, self.worker)

    def to_json(self) -> str:
        return json.dumps({"run_id": self.run_id, "worker": self.worker, "first": self.first,
                           "placement": self.placement, "underlays": self.underlays,
                           "underlay_mtu": self.underlay_mtu, "coordinator": self.coordinator},
                          indent=1, sort_keys=True)

    @classmethod
    def load(cls, path: Path) -> ShardSpec:
        try:
            d = json.loads(Path(path).read_text())
            spec = cls(str(d["run_id"]), str(d["worker"]), str(d["first"]),
                       {str(k): str(v) for k, v in d["placement"].items()},
                       {str(k): str(v) for k, v in d["underlays"].items()}, int(d.get("underlay_mtu", 1550)),
                       None if d.get("coordinator") is None else str(d["coordinator"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"{path}: not a shard's spec ({exc.__class__.__name__}: {str(exc)[:80]})") from None
        for w, a in [*spec.underlays.items(), *([("coordinator", spec.coordinator)] if spec.coordinator else [])]:
            try:
                ok = ipaddress.ip_address(a) in WORKER_UNDERLAY
            except ValueError:
                ok = False
            if not ok:
                raise InputError(f"{path}: underlays.{w}: {a[:40]!r} is not an address of {WORKER_UNDERLAY}")
        unknown = sorted(set(spec.placement.values()) - set(spec.underlays))
        if spec.worker not in spec.underlays or spec.first not in spec.underlays or unknown:
            raise InputError(f"{path}: worker(s) {', '.join(unknown or [spec.worker])} have no underlay address")
        return spec

    def cut(self, whole: Plan) -> Plan:
        """This worker's hosts of the whole plan (planned under shard_run_id)."""
        try:
            return restrict(whole, self.placement, self.worker, self.first)
        except ValueError as exc:
            raise InputError(f"the shard's placement does not fit the experiment: {exc}") from None

    def segments(self, whole: Plan, mine: Plan) -> list[tuple[vxlan.Segment, list[str]]]:
        """The stretched sites this worker has, as tunnels into its copy of their switch, each with
        the other workers' underlay addresses."""
        device = {s.name: s.device for s in mine.switches}
        out = []
        for site, (vni, workers) in stretched(whole, self.placement, self.first, self.run_id).items():
            if self.worker in workers:
                out.append((vxlan.Segment(vni, device[site]),
                            [self.underlays[w] for w in workers if w != self.worker]))
        return out


def _batch(tool: str, lines: list[str]) -> None:
    if not lines:
        return
    r = subprocess.run([tool, "-batch", "-"], input="".join(line + "\n" for line in lines), capture_output=True,
                       text=True, start_new_session=True)
    if r.returncode != 0:
        raise RunError(f"joining the workers' segments: `{tool} -batch` failed: {r.stderr.strip()[:200]}")


def join(segments: list[tuple[vxlan.Segment, list[str]]], local: str, underlay_mtu: int) -> int:
    """Each segment's tunnel into its bridge (which the shard's network made), flooding to the
    other workers; IPv6 off on it before it goes up. The tunnels carry the run's tag in their
    names, so the run's teardown and `testbed clean` remove them with its other links."""
    segs = [s for s, _ in segments]
    _batch("ip", vxlan.attach_lines(segs, local, underlay_mtu))
    _batch("bridge", [line for s, remotes in segments for line in vxlan.flood_lines([s], remotes)])
    for s in segs:
        Path(f"/proc/sys/net/ipv6/conf/{s.device()}/disable_ipv6").write_text("1")
    _batch("ip", [f"link set {s.device()} up" for s in segs])
    return len(segs)


class Heartbeat:
    """Asks the coordinator's clock responder every HEARTBEAT_S, in a thread; `silent_s` is how
    long since it last answered (since the start, before its first answer)."""

    def __init__(self, address: str, port: int = clock.PORT):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.5)
        self.to = (address, port)
        self.last = time.monotonic()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.beat, name="tb-heartbeat", daemon=True)
        self.thread.start()

    def beat(self) -> None:
        k = 0
        while not self.stopping.is_set():
            k += 1
            try:
                self.sock.sendto(struct.pack("!I", k), self.to)
                end = time.monotonic() + 0.5
                while time.monotonic() < end:
                    # any answer, an earlier probe's late one too, says the coordinator is there
                    if len(self.sock.recv(64)) == 12:
                        self.last = time.monotonic()
                        break
            except OSError:
                pass                                # no route, no answer: silence
            self.stopping.wait(HEARTBEAT_S)

    def silent_s(self) -> float:
        return time.monotonic() - self.last

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(2)
        self.sock.close()


class Sync:
    """The shard's side of the sync directory, and of the coordinator's heartbeat."""

    def __init__(self, directory: Path, heartbeat: Heartbeat | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.marked: set[str] = set()
        self.heartbeat = heartbeat

    def mark(self, stage: str) -> None:
        """Writes the stage into `state` (replacing it whole: a reader never sees half a line)."""
        if stage in self.marked:
            return
        tmp = self.dir / ".state"
        tmp.write_text(stage + "\n")
        os.replace(tmp, self.dir / "state")
        self.marked.add(stage)

    def check(self) -> None:
        """RunError once the coordinator has created `abort`, or has not answered for LOST_S."""
        if (self.dir / "abort").exists():
            raise RunError("the coordinator aborted the swarm (another worker failed, or it was interrupted)")
        if self.heartbeat is not None and (silent := self.heartbeat.silent_s()) > LOST_S:
            raise RunError(f"lost the coordinator: it has not answered for {silent:.0f} s "
                           f"(this worker is cut off from it); the shard ends here")

    def arrived(self, name: str) -> bool:
        """Whether the coordinator created `name` (after `check`)."""
        self.check()
        return (self.dir / name).exists()

    def wait(self, name: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while not self.arrived(name):
            if time.monotonic() > end:
                raise RunError(f"the coordinator did not say '{name}' within {timeout:g} s (a worker lost?)")
            time.sleep(POLL_S)


@dataclass
class ShardRun:
    """What testbed.run needs to run a shard: the spec, the sync directory, and the whole plan
    (the other workers' hosts included) it was cut from."""
    spec: ShardSpec
    sync: Sync
    whole: Plan | None = None

    devices: tuple[str, ...] = ()

    def joined(self, mine: Plan) -> int:
        assert self.whole is not None
        segments = self.spec.segments(self.whole, mine)
        self.devices = tuple(s.device() for s, _ in segments)
        return join(segments, self.spec.underlays[self.spec.worker], self.spec.underlay_mtu)

    def tunnel_counters(self) -> dict[str, int]:
        """What this worker's tunnels carried, summed: inner IP bytes and packets each way (the
        device's counters), and the underlay's bytes out, each packet an Ethernet frame
        vxlan.ETHERNET + vxlan.OVERHEAD bytes longer."""
        out = dict.fromkeys(("tx_bytes", "tx_packets", "rx_bytes", "rx_packets"), 0)
        for dev in self.devices:
            for k in out:
                try:
                    out[k] += int(Path(f"/sys/class/net/{dev}/statistics/{k}").read_text())
                except (OSError, ValueError):
                    pass        # gone with a teardown that came first
        out["underlay_bytes_out"] = out["tx_bytes"] + (vxlan.ETHERNET + vxlan.OVERHEAD) * out["tx_packets"]
        return out
