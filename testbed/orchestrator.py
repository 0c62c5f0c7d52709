"""Carry out a plan on this machine: the library API under the CLI.

    run(experiment, results_root, on_event=callback) -> RunResult

The core never prints; it reports through events (also appended to events.jsonl).
Whatever happens, teardown removes every container, veth and bridge of the run, and
summary.json is written: "complete", "timeout", or "failed" with what was measured.
"""
from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from testbed import cleanup, content, facts, images, metering, runtime, shaping, wire
from testbed.clients import DRIVERS, ClientDriver, PeerStats
from testbed.errors import PreflightError, RunError, TestbedError
from testbed.model import Experiment, resolved_yaml
from testbed.plan import CONTROL_BLOCKS, CONTROL_NET, Plan, control_block, plan, run_tag
from testbed.results import RunDir, write_json
from testbed.shaping import LinkShaper

EventSink = Callable[[dict], None]
SEED_VERIFY_TIMEOUT = 120.0
ANNOUNCE_TIMEOUT = 30.0
BRINGUP_LOCK = "/run/lock/testbed-bringup.lock" if os.path.isdir("/run/lock") else "/tmp/testbed-bringup.lock"


@dataclass
class RunResult:
    run_dir: Path
    status: str
    summary: dict

    @property
    def ok(self) -> bool:
        return self.status == "complete"


def new_run_id(exp: Experiment, repetition: int = 1) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    rep = f"-r{repetition}" if exp.repetitions > 1 else ""
    return f"{exp.name}-{stamp}{rep}-{secrets.token_hex(3)}"


def free_control_block(tag: str) -> int:
    """The plan's control block, moved on if a route for it already exists (another run)."""
    blocks = list(CONTROL_NET.subnets(new_prefix=22))
    first = control_block(tag)
    for k in range(CONTROL_BLOCKS):
        b = (first + k) % CONTROL_BLOCKS
        if not subprocess.run(["ip", "route", "show", str(blocks[b])], capture_output=True, text=True).stdout.strip():
            return b
    raise RunError("every control-network block 198.19.0.0/16 is in use by other runs")


class BringupLock:
    """Concurrent runs pick control-network blocks by looking at the routes: hold this from
    the choice until the run's route exists, so two runs cannot pick the same block."""

    def __init__(self):
        self._file = open(BRINGUP_LOCK, "a")
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def release(self) -> None:
        self._file.close()      # closing drops the flock; closing again is a no-op


def preflight(plan_: Plan, client) -> dict[str, images.Image]:
    if not runtime.is_root():
        raise PreflightError("testbed run needs root (it creates bridges, veths and tc qdiscs); run it with sudo")
    for tool in ("mnexec", "brctl", "tc", "ip"):
        if not shutil.which(tool):
            raise PreflightError(f"'{tool}' is not installed; run ./setup.sh (or: testbed doctor)")
    if plan_.experiment.topology.switch == "ovs" and not ovs_available():
        raise PreflightError("topology.switch: ovs is asked for, but Open vSwitch is not available here "
                             "(needs ovs-vsctl and the openvswitch kernel module); use switch: linuxbridge")
    shaper_cls = shaping.choose(plan_.experiment.shaper, facts.traffic_control()["netem"])
    if plan_.experiment.shaper == "netem" and not facts.traffic_control()["netem"]:
        raise PreflightError("shaper: netem is asked for, but this kernel has no sch_netem (modprobe sch_netem "
                             "fails); use shaper: auto or userspace (see testbed doctor)")
    impaired = any(s is not None and s.impaired for lk in plan_.links for s in (lk.egress1, lk.egress2))
    if impaired and shaper_cls.userspace_element:
        ok, why = delay_element_available()
        if not ok:
            raise PreflightError(f"links with delay, jitter or loss need netem or the userspace delay element, "
                                 f"and neither works here: {why} (see testbed doctor)")
    if any(not h.behaviour.connectable for h in plan_.hosts):
        ok, why = wire.available()
        if not ok:
            raise PreflightError(f"behaviour.connectable: false needs a packet filter in each peer's namespace, "
                                 f"which does not work here: {why} (see testbed doctor)")
    return images.require(client, {h.image for h in plan_.hosts})


def delay_element_available() -> tuple[bool, str]:
    """Whether the userspace delay element can run: its binding imports and iptables exists."""
    try:
        import netfilterqueue  # noqa: F401
    except ImportError as exc:
        return False, f"the netfilterqueue Python package does not import ({exc}); run ./setup.sh"
    if not runtime.is_root():
        return False, "not root"
    ns = f"tb{os.getpid() % 0xFFFFFF:06x}-nqprobe"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        return False, "cannot create a network namespace"
    try:
        rule = ["-t", "raw", "-A", "PREROUTING", "-i", "lo", "-j", "NFQUEUE", "--queue-num", "0"]
        r = subprocess.run(["ip", "netns", "exec", ns, wire.IPTABLES, "-w", *rule], capture_output=True, text=True)
        if r.returncode != 0:
            return False, f"the NFQUEUE target does not load: {r.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    return True, "NFQUEUE works"


def ovs_available() -> bool:
    return bool(shutil.which("ovs-vsctl")) and Path("/sys/module/openvswitch").exists()


class Swarm:
    """One run in progress: owns everything it creates, and removes it in close()."""

    def __init__(self, plan_: Plan, rd: RunDir, emit: EventSink, docker_client, imgs: dict[str, images.Image],
                 keep_data: bool, sample_interval: float, shaper: LinkShaper):
        self.plan, self.rd, self.emit, self.docker = plan_, rd, emit, docker_client
        self.shaper = shaper
        self.element = None                      # the userspace delay element, if used
        self.element_stats: dict = {}
        self.links = None                        # network.LinkControl, once the network exists
        self.link_lock = threading.Lock()
        self.rate_now: dict[tuple[str, str], float] = {}
        self.throttle: dict[str, float] = {}     # a carrier's throttle, per host
        self.stop_schedule = threading.Event()
        self.scheduler: threading.Thread | None = None
        self.caps = {h.name: metering.CapWatch(h.data_plan) for h in plan_.hosts if h.data_plan}
        self.ip_usage: dict[str, tuple[int, int]] = {}   # IP bytes (up, down) since the swarm start
        self.departed: dict[str, float] = {}     # hosts whose line the carrier cut
        self.seg_baseline: dict[str, tuple[int, int, int, int]] = {}
        self.images, self.keep_data, self.interval = imgs, keep_data, sample_interval
        self.hosts: dict[str, runtime.ContainerHost] = {}
        self.drivers: dict[str, ClientDriver] = {}
        self.net = None
        self.peer_started: dict[str, float] = {}
        self.completion: dict[str, float] = {}
        self.last: dict[str, PeerStats] = {}
        self.counters: dict[str, tuple[int, int]] = {}
        self.errors: dict[str, str] = {}
        self.content_file = rd.path / "content" / f"{plan_.experiment.name}.bin"
        self.content_sha = ""
        self.infohash = ""
        self.torrent = rd.path / f"{plan_.experiment.name}.torrent"
        self.swarm_t0: float | None = None
        self.t_end: float | None = None
        self.baseline: dict[str, tuple[int, int]] = {}
        self.versions: dict[str, str] = {}
        self.written: dict[str, dict] = {}       # the settings each driver wrote
        self.seeding = {h.name: h.behaviour.seeding_policy() for h in plan_.hosts if h.client}
        self.seed_start: dict[str, float] = {}   # swarm time each peer began to seed
        self.seeding_stopped: dict[str, float] = {}
        self.at_completion: dict[str, tuple[int, int]] = {}   # (interface, client) bytes up then
        self.tcp_tables: dict[str, dict | None] = {}
        self.tcp_max: dict[str, dict[str, int]] = {}
        self.wire: dict[str, dict | None] = {}
        # the switch end of each host's access link, where its traffic is counted
        self.access_dev = {link.node1: link.intf2 for link in plan_.links if link.kind == "access"}
        # a core link's counters are read at its first end's interface: tx is ends[0] -> ends[1]
        self.segments = {f"{lk.node1}-{lk.node2}": lk.intf1 for lk in plan_.links if lk.kind == "core"}

    # ------------------------------------------------------------ bring-up
    def make_content(self) -> None:
        exp = self.plan.experiment
        self.content_sha = content.make_content(self.content_file, self.plan.content_bytes, exp.seed)
        self.infohash = content.make_torrent(self.content_file, self.plan.tracker_url, self.plan.piece_bytes,
                                             self.torrent)
        self.emit(self.rd.event("content", bytes=self.plan.content_bytes, piece_bytes=self.plan.piece_bytes,
                                sha256=self.content_sha, infohash=self.infohash))

    def start_hosts(self) -> None:
        from testbed import network
        t = time.monotonic()
        self.hosts = runtime.start_containers(self.docker, self.plan, self.images, self.rd.hosts)
        self.emit(self.rd.event("containers", count=len(self.hosts), seconds=round(time.monotonic() - t, 3)))
        t = time.monotonic()
        pids = {n: h.pid for n, h in self.hosts.items()}
        self.net = network.build(self.plan, pids, self.shaper)
        self.links = network.LinkControl(self.plan, pids, self.shaper)
        self.emit(self.rd.event("network", links=len(self.plan.links), shaper=self.shaper.name,
                                seconds=round(time.monotonic() - t, 3)))
        if self.shaper.userspace_element:
            self.element = network.DelayElement(self.plan, pids, self.rd.path, self.plan.experiment.seed)
            self.element.start()
            if self.element.hosts:
                load = shaping.element_load_pps(self.plan, self.element.tables)
                self.emit(self.rd.event("delay_element", hosts=self.element.hosts, pid=self.element.proc.pid,
                                        max_pps=None if load is None else round(load)))
                if load is None or load > shaping.ELEMENT_CAPACITY_PPS:
                    # a warning, not a refusal: the capacity was measured on one machine
                    self.emit(self.rd.event("warning", message=(
                        f"the delay element may have to pass {'unbounded' if load is None else f'{load:,.0f}'} "
                        f"packets/s, more than the {shaping.ELEMENT_CAPACITY_PPS:,} a 2-core machine carried through "
                        f"it without loss (benchmarks/delayer.py); delayer-stats.json shows what it held and "
                        f"dropped")))
        for hp in self.plan.hosts:
            if hp.client:
                try:
                    wire.install(self.hosts[hp.name].pid, hp.name, "eth0", hp.behaviour.connectable)
                except RunError as exc:
                    if not hp.behaviour.connectable:     # the experiment depends on it
                        raise
                    self.emit(self.rd.event("wire_counters_unavailable", host=hp.name, error=str(exc)))

    def start_tracker(self) -> None:
        h = self.hosts["tracker"]
        tdir = h.host_dir / "tracker"
        tdir.mkdir(exist_ok=True)
        (tdir / "whitelist").write_text(self.infohash + "\n")
        port = str(self.plan.tracker_port)
        # opentracker chroots into -d before it reads -w, so the whitelist path is in the chroot.
        script = (f"cd {h.container_dir}/tracker && echo $$ > {h.container_dir}/run/opentracker.pid && exec "
                  f"opentracker -i {h.data_ip} -p {port} -P {port} -d {h.container_dir}/tracker "
                  f"-w /whitelist >>{h.container_dir}/log/opentracker.out 2>&1")
        h.exec(["sh", "-c", script], detach=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            code, _ = h.exec(["sh", "-c", f"ss -ltn 'sport = :{port}' | grep -q LISTEN"])
            if code == 0:
                self.emit(self.rd.event("tracker_started", host="tracker", url=self.plan.tracker_url))
                return
            time.sleep(0.1)
        raise RunError(f"the tracker did not listen on {self.plan.tracker_url} (see {h.host_dir}/log)")

    def start_clients(self) -> None:
        peers = [h for h in self.plan.hosts if h.client]
        for hp in peers:
            driver = DRIVERS[hp.client](self.hosts[hp.name], hp.behaviour)
            self.written[hp.name] = driver.configure()
            self.drivers[hp.name] = driver
        for hp in self.plan.by_role("seeder"):
            data = self.hosts[hp.name].host_dir / "data" / self.content_file.name
            try:
                os.link(self.content_file, data)      # seeders only read: share the bytes
            except OSError:
                shutil.copyfile(self.content_file, data)
        for name, d in self.drivers.items():
            d.start()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda d: d.wait_ready(), self.drivers.values()))
        self.versions = {name: d.version() for name, d in self.drivers.items()}
        for name, d in self.drivers.items():
            hp = self.plan.host(name)
            write_json(self.hosts[name].host_dir / "config" / "effective.json", {
                "client": hp.client, "version": self.versions[name],
                "behaviour": hp.behaviour.model_dump(mode="json"),
                "written_by_testbed": self.written[name], "effective": d.effective_settings()})
        self.emit(self.rd.event("clients_ready", count=len(self.drivers)))

    def start_seeders(self) -> None:
        seeders = self.plan.by_role("seeder")
        for hp in seeders:
            self.drivers[hp.name].add_torrent(self.torrent, seed=True)
        deadline = time.monotonic() + SEED_VERIFY_TIMEOUT
        pending = {hp.name for hp in seeders}
        while pending:
            for name in list(pending):
                if self.drivers[name].stats().progress >= 1.0:
                    pending.discard(name)
                    self.emit(self.rd.event("seeder_ready", host=name))
            if time.monotonic() > deadline:
                raise RunError(f"seeder(s) {', '.join(sorted(pending))} did not verify the content "
                               f"within {SEED_VERIFY_TIMEOUT:g}s")
            time.sleep(0.2)
        self.wait_seeders_announced(len(seeders))

    def scrape(self) -> int | None:
        """Peers the tracker lists for the torrent, from its scrape, asked inside the tracker's
        own namespace (the request goes to the tracker's address from its own host).

        Complete and incomplete both count: a seeder that announced before its recheck
        ended (deluge does) is listed as incomplete until its next announce, and is handed
        to leechers all the same."""
        url = self.plan.tracker_url.replace("/announce", "/scrape") + "?info_hash=" + \
            urllib.parse.quote(bytes.fromhex(self.infohash))
        code = "import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=2).read())"
        r = subprocess.run(["nsenter", f"--net=/proc/{self.hosts['tracker'].pid}/ns/net", sys.executable, "-c", code,
                            url], capture_output=True, timeout=10)
        counts = re.findall(rb"(?:8:complete|10:incomplete)i(\d+)e", r.stdout)
        return sum(int(c) for c in counts) if r.returncode == 0 and counts else None

    def wait_seeders_announced(self, seeders: int) -> None:
        """Leechers start once the tracker lists every seeder (only seeders have announced yet). A seeder announces a moment after
        it verifies; a leecher announcing before that would get no seeder in its first reply,
        and a leecher that cannot accept connections (connectable: false) would then wait a
        whole announce interval."""
        deadline = time.monotonic() + ANNOUNCE_TIMEOUT
        while (known := self.scrape() or 0) < seeders:
            if time.monotonic() > deadline:
                raise RunError(f"the tracker lists {known} of {seeders} seeder(s) {ANNOUNCE_TIMEOUT:g}s after "
                               f"they verified the content (see hosts/*/log)")
            time.sleep(0.2)
        self.emit(self.rd.event("seeders_announced", seeders=known))

    def start_swarm(self) -> None:
        self.baseline = self.read_counters()
        self.seg_baseline = {seg: c for seg, dev in self.segments.items() if (c := self.dev_stats(dev))}
        self.swarm_t0 = time.monotonic()
        self.seed_start = {hp.name: 0.0 for hp in self.plan.by_role("seeder")}
        self.emit(self.rd.event("swarm_start", leechers=len(self.plan.by_role("leecher")), t_min_s=self.plan.t_min_s))
        self.start_rate_schedule()
        for ev in self.plan.timeline:
            if ev.action == "start_leecher":
                self.drivers[ev.host].add_torrent(self.torrent, seed=False)
                self.peer_started[ev.host] = time.monotonic() - self.swarm_t0
                self.rd.event("peer_started", host=ev.host, t_swarm=round(self.peer_started[ev.host], 3))

    # ------------------------------------------------------------ measurement
    @staticmethod
    def dev_stats(dev: str) -> tuple[int, int, int, int] | None:
        """(rx_bytes, tx_bytes, rx_packets, tx_packets) of an interface in this namespace."""
        stats = Path("/sys/class/net") / dev / "statistics"
        try:
            return tuple(int((stats / k).read_text()) for k in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets"))
        except OSError:
            return None

    def read_counters(self) -> dict[str, tuple[int, int, int, int]]:
        """Bytes and packets (up, down) of each peer from the switch end of its access veth:
        what the switch received from the host is the host's upload."""
        out = {}
        for name in self.drivers:
            out[name] = self.dev_stats(self.access_dev[name]) or self.counters.get(name, (0, 0, 0, 0))
        return out

    def meter(self, t: float, counters: dict[str, tuple[int, int, int, int]]) -> None:
        """One meter.csv row per peer and per core link: IP bytes since the swarm started."""
        for name, c in counters.items():
            b = self.baseline[name]
            up = metering.ip_bytes(c[0] - b[0], c[2] - b[2])
            down = metering.ip_bytes(c[1] - b[1], c[3] - b[3])
            self.ip_usage[name] = (up, down)
            self.rd.row("meter", {"t": round(t, 3), "scope": "peer", "name": name, "ip_bytes_up": up,
                                  "ip_bytes_down": down, "packets_up": c[2] - b[2], "packets_down": c[3] - b[3]})
        for seg, dev in self.segments.items():
            c = self.dev_stats(dev)
            if c is None:
                continue
            b = self.seg_baseline.setdefault(seg, c)
            # ends[0] -> ends[1] leaves through the first end's interface (tx)
            self.rd.row("meter", {"t": round(t, 3), "scope": "segment", "name": seg,
                                  "ip_bytes_up": metering.ip_bytes(c[1] - b[1], c[3] - b[3]),
                                  "ip_bytes_down": metering.ip_bytes(c[0] - b[0], c[2] - b[2]),
                                  "packets_up": c[3] - b[3], "packets_down": c[2] - b[2]})

    # ------------------------------------------------------------ links that change
    def set_rate(self, host: str, direction: str, rate_bps: float, cause: str, t: float) -> None:
        """Set an access direction's rate: the trace's (or the original) rate, never above a
        carrier's throttle."""
        with self.link_lock:
            if host in self.departed:
                return
            if cause != "throttle":
                self.rate_now[(host, direction)] = rate_bps
            effective = min(self.rate_now.get((host, direction), rate_bps), self.throttle.get(host, float("inf")))
            self.links.set_rate(host, direction, effective)
            self.rd.row("links", {"t": round(t, 3), "host": host, "direction": direction,
                                  "rate_bps": round(effective), "cause": cause})

    def start_rate_schedule(self) -> None:
        """Traced links follow their trace from the swarm's start, in a thread of their own."""
        changes = []
        for h in self.plan.hosts:
            for direction in ("up", "down"):
                s = getattr(h, direction)
                if s is None:
                    continue
                self.rate_now[(h.name, direction)] = s.rate_bps
                self.rd.row("links", {"t": 0.0, "host": h.name, "direction": direction,
                                      "rate_bps": round(s.rate_bps), "cause": "trace" if s.trace else "static"})
                if s.trace:
                    changes += [(t, h.name, direction, r) for t, r in s.trace.changes(self.plan.experiment.timeout)
                                if t > 0]
        if changes:
            from testbed import network
            self.scheduler = network.follow_rates(
                changes, lambda host, direction, rate, t: self.set_rate(host, direction, rate, "trace", t),
                self.swarm_t0, self.stop_schedule,
                lambda host, exc: self.emit(self.rd.event("link_error", host=host, error=str(exc))))

    def enforce_plans(self, t: float) -> None:
        """A peer whose usage reaches its data plan's cap gets what the plan says."""
        for name, watch in self.caps.items():
            up, down = self.ip_usage.get(name, (0, 0))
            if not watch.update(t, up, down):
                continue
            action, rate = metering.at_cap_action(watch.plan)
            self.emit(self.rd.event("cap_reached", host=name, t_swarm=round(t, 3), action=action,
                                    ip_bytes_up=up, ip_bytes_down=down))
            if action == "throttle":
                self.throttle[name] = rate
                for direction in ("up", "down"):
                    self.set_rate(name, direction, rate, "throttle", t)
            elif action == "cut":
                with self.link_lock:
                    self.links.cut(name)
                    # the line went down now, after this sample's counters were read
                    t_cut = time.monotonic() - self.swarm_t0
                    self.departed[name] = t_cut
                    for direction in ("up", "down"):
                        self.rd.row("links", {"t": round(t_cut, 3), "host": name, "direction": direction,
                                              "rate_bps": 0, "cause": "cut"})
            elif action == "stop_seeding":
                # the user stops seeding: at once if the download is complete, else on completion
                self.seeding[name] = ("stop", None)

    def _stats(self, name: str) -> PeerStats | None:
        try:
            return self.drivers[name].stats()
        except Exception as exc:  # a crashed or hung client: recorded, the run goes on
            if name not in self.errors:
                self.errors[name] = f"{exc.__class__.__name__}: {exc}"
                self.emit(self.rd.event("client_error", host=name, error=self.errors[name]))
            return None

    def sample(self, pool: ThreadPoolExecutor) -> float:
        t = time.monotonic() - self.swarm_t0
        stats = dict(zip(self.drivers, pool.map(self._stats, self.drivers)))
        tables = dict(zip(self.drivers, pool.map(
            lambda n: wire.tcp_table(self.hosts[n].pid, self.drivers[n].peer_port), self.drivers)))
        counters = self.read_counters()
        self.meter(t, counters)
        self.enforce_plans(t)
        if self.element is not None and not self.element.alive():
            raise RunError(f"the userspace delay element exited (see {self.element.log})")
        for name, s in stats.items():
            up, down = (c - b for c, b in zip(counters[name][:2], self.baseline[name][:2]))
            self.counters[name] = counters[name]
            if s is None:
                continue
            self.last[name] = s
            table = tables[name]
            tcp = wire.tcp_activity(self.tcp_tables.get(name), table)
            self.tcp_tables[name] = table
            self.tcp_max[name] = {k: max(v, self.tcp_max.get(name, {}).get(k, 0)) for k, v in tcp.items()}
            self.rd.sample({"t": round(t, 3), "peer": name, "progress": round(s.progress, 5),
                            "rate_up": s.rate_up, "rate_down": s.rate_down, "client_bytes_up": s.bytes_up,
                            "client_bytes_down": s.bytes_down, "if_bytes_up": up, "if_bytes_down": down,
                            "peers": s.peers, **tcp})
            if name in self.peer_started and name not in self.completion and s.progress >= 1.0:
                self.completion[name] = t - self.peer_started[name]
                self.seed_start[name] = t
                self.at_completion[name] = (up, s.bytes_up)
                self.emit(self.rd.event("peer_complete", host=name, completion_s=round(self.completion[name], 3)))
            self.apply_seeding_policy(name, s, t)
        return t

    def apply_seeding_policy(self, name: str, s: PeerStats, t: float) -> None:
        """Stop a seeding peer whose policy says so, through its client's API, as its user would.

        The testbed enforces the policy rather than each client's own ratio/time settings:
        the clients differ (transmission 3.00 has only an idle-time limit, others count
        ratio against downloaded bytes, some check once a minute), and the experiment
        needs one meaning for every client. It acts on the sample that sees the condition.
        """
        if name not in self.seed_start or name in self.seeding_stopped:
            return
        policy, amount = self.seeding[name]
        if (policy == "stop" or (policy == "duration" and t - self.seed_start[name] >= amount)
                or (policy == "ratio" and s.bytes_up >= amount * self.plan.content_bytes)):
            try:
                self.drivers[name].stop_torrent()
            except Exception as exc:
                self.errors.setdefault(name, f"stopping the torrent: {exc.__class__.__name__}: {exc}")
                self.emit(self.rd.event("client_error", host=name, error=self.errors[name]))
            self.seeding_stopped[name] = t
            self.emit(self.rd.event("seeding_stopped", host=name, policy=policy, t_swarm=round(t, 3),
                                    bytes_up=s.bytes_up))

    def measure(self, timeout: float) -> str:
        leechers = [h.name for h in self.plan.by_role("leecher")]
        with ThreadPoolExecutor(8) as pool:
            while True:
                tick = time.monotonic()
                t = self.sample(pool)
                # a leecher whose line was cut has left: the swarm is done without it
                done = sum(1 for n in leechers if n in self.completion or n in self.departed)
                rate = sum(self.last[n].rate_down for n in leechers if n in self.last)
                self.emit({"kind": "progress", "t": t, "done": done, "total": len(leechers),
                           "rate_down_Bps": rate, "t_min_s": self.plan.t_min_s})
                if done == len(leechers):
                    return "complete"
                if t >= timeout:
                    self.emit(self.rd.event("timeout", after_s=timeout))
                    return "timeout"
                time.sleep(max(0.0, self.interval - (time.monotonic() - tick)))

    # ------------------------------------------------------------ teardown
    def read_wire(self) -> None:
        """The wire counters of every peer, read before its namespace goes away."""
        for name in self.drivers:
            self.wire[name] = wire.read(self.hosts[name].pid)

    def stop_clients(self) -> None:
        for d in self.drivers.values():
            try:
                d.stop()
            except Exception:
                pass

    def verify(self) -> dict[str, bool | None]:
        """Each peer's file against the origin's: True, False (differs), None (no file)."""
        ok: dict[str, bool | None] = {}
        for name in self.drivers:
            got = content.sha256_file(self.hosts[name].host_dir / "data" / self.content_file.name)
            ok[name] = None if got is None else got == self.content_sha
        return ok

    def stop_link_changes(self) -> None:
        """Stop following traces and stop the delay element (keeping its counters); idempotent."""
        self.stop_schedule.set()
        if self.scheduler is not None:
            self.scheduler.join(5)
        if self.element is not None:
            self.element_stats = self.element.stop() or self.element_stats

    def close(self) -> dict:
        """Remove everything of this run; returns what was removed and what is left (nothing)."""
        self.stop_link_changes()
        if self.net is not None:
            try:
                self.net.stop()
            except Exception as exc:
                self.rd.event("teardown_error", step="mininet", error=str(exc))
        removed = cleanup.clean(self.docker, self.plan.run_id)
        left = cleanup.find(self.docker, self.plan.run_id)
        if not self.keep_data:
            shutil.rmtree(self.rd.path / "content", ignore_errors=True)
            for h in self.hosts.values():
                shutil.rmtree(h.host_dir / "data", ignore_errors=True)
        return {"removed": removed, "left": left}


def summarize(sw: Swarm, status: str, error: str | None, sha_ok: dict[str, bool]) -> dict:
    p = sw.plan
    peers = []
    for h in p.hosts:
        if not h.client:
            continue
        s = sw.last.get(h.name)
        up, down = (c - b for c, b in zip(sw.counters.get(h.name, (0, 0))[:2], sw.baseline.get(h.name, (0, 0))[:2]))
        completed = h.role == "seeder" or h.name in sw.completion
        policy, amount = h.behaviour.seeding_policy()
        at = sw.at_completion.get(h.name)
        stopped = sw.seeding_stopped.get(h.name)
        peers.append({
            "name": h.name, "group": h.group, "role": h.role, "client": h.client,
            "client_version": sw.versions.get(h.name),
            "completed": completed and sha_ok.get(h.name, False),
            "completion_s": round(sw.completion[h.name], 3) if h.name in sw.completion else None,
            "t_min_s": round(p.peer_t_min_s[h.name], 3) if h.name in p.peer_t_min_s else None,
            "bytes_up": s.bytes_up if s else None, "bytes_down": s.bytes_down if s else None,
            "if_bytes_up": up, "if_bytes_down": down,
            "sha256_ok": bool(sha_ok.get(h.name)),
            "file_present": sha_ok.get(h.name) is not None,
            "up_bps": h.up.rate_bps, "down_bps": h.down.rate_bps,
            # what it uploaded after completing: on the wire, and by its client's count
            "if_bytes_up_after_completion": up - at[0] if at else None,
            "bytes_up_after_completion": (s.bytes_up - at[1]) if at and s else None,
            "seeding": {"policy": policy, "amount": amount,
                        "stopped_s": round(stopped, 3) if stopped is not None else None},
            "connectable": h.behaviour.connectable,
            "access": access_summary(h),
            "ip_bytes_up": sw.ip_usage.get(h.name, (None, None))[0],
            "ip_bytes_down": sw.ip_usage.get(h.name, (None, None))[1],
            "cap_reached_s": round(sw.caps[h.name].reached_at, 3) if h.name in sw.caps
            and sw.caps[h.name].reached_at is not None else None,
            "line_cut_s": round(sw.departed[h.name], 3) if h.name in sw.departed else None,
            "bill": peer_bill(sw, h),
            "tcp_max": sw.tcp_max.get(h.name, {}),     # most at once, over the samples
            "wire": sw.wire.get(h.name),
            "error": sw.errors.get(h.name),
        })
    times = list(sw.completion.values())
    leechers = [x for x in peers if x["role"] == "leecher"]
    return {
        "run_id": p.run_id, "experiment": p.experiment.name, "status": status, "error": error,
        "partial": status != "complete",
        "t_min_s": round(p.t_min_s, 3),
        "swarm_completion_s": round(max(times), 3) if times and len(times) == len(leechers) else None,
        "leechers_completed": sum(1 for x in leechers if x["completed"]), "leechers": len(leechers),
        "content_bytes": p.content_bytes, "content_sha256": sw.content_sha,
        "shaper": sw.shaper.name,
        "delay_element": sw.element_stats or None,
        "peers": peers,
    }


def access_summary(h) -> dict:
    def direction(s):
        return {"rate_bps": s.rate_bps, "delay_s": s.delay_s, "jitter_s": s.jitter_s, "loss": s.loss,
                "queue": s.queue_pkts, "trace": s.trace.source if s.trace else None}
    return {"profile": h.profile, "up": direction(h.up), "down": direction(h.down)}


def peer_bill(sw: Swarm, h) -> dict | None:
    """The peer's bill under its data plan: minutes online run from its start to its stop
    (seeding stopped, line cut) or the end of the swarm."""
    if h.data_plan is None or sw.swarm_t0 is None:
        return None
    up, down = sw.ip_usage.get(h.name, (0, 0))
    start = sw.peer_started.get(h.name, 0.0)
    end = min(x for x in (sw.seeding_stopped.get(h.name), sw.departed.get(h.name), sw.t_end) if x is not None)
    return metering.bill(h.data_plan, up, down, max(0.0, end - start) / 60.0)


def delay_emulation(shaper: LinkShaper, tc: dict) -> str:
    if shaper.name == "netem":
        return "netem: the kernel's sch_netem adds delay, jitter and loss on each link's egress"
    why = "" if tc["netem"] else " (this kernel has no sch_netem)"
    return (f"userspace: an NFQUEUE element at each receiving host adds the path's delay, jitter and "
            f"loss{why}")


def manifest(p: Plan, imgs: dict[str, images.Image], repetition: int) -> dict:
    tc = facts.traffic_control()
    shaper = shaping.choose(p.experiment.shaper, tc["netem"])()
    return {
        "run_id": p.run_id, "experiment": p.experiment.name, "seed": p.experiment.seed,
        "repetition": repetition, "repetitions": p.experiment.repetitions,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "testbed": facts.testbed_version(), "host": facts.host_facts(),
        "machines": sorted({h.machine for h in p.hosts}),
        "traffic_control": tc, "shaper": shaper.name, "delay_emulation": delay_emulation(shaper, tc),
        "images": {n: {"tag": i.tag, "packages": list(i.spec.packages)} for n, i in imgs.items()},
        "addresses": {"data": "198.18.0.0/16", "control": f"{p.control_gateway}/{p.control_prefix}"},
        "hosts": [{"name": h.name, "role": h.role, "client": h.client, "site": h.site, "machine": h.machine,
                   "data_ip": h.data_ip, "container": h.container} for h in p.hosts],
    }


def image_packages(sw: Swarm) -> dict[str, dict[str, str]]:
    """Package versions each image was built from, read inside one container of each."""
    out: dict[str, dict[str, str]] = {}
    for h in sw.hosts.values():
        if h.plan.image in out:
            continue
        code, text = h.exec(["cat", images.PACKAGE_LIST])
        versions = dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line) if code == 0 else {}
        wanted = set(sw.images[h.plan.image].spec.packages)
        out[h.plan.image] = {k: v for k, v in versions.items() if k.split(":")[0] in wanted}
    return out


def run(exp: Experiment, results_root: Path, on_event: EventSink | None = None, *, repetition: int = 1,
        keep_data: bool = False, sample_interval: float = 1.0, run_id: str | None = None) -> RunResult:
    """Run one repetition of the experiment; raises only for errors before anything starts."""
    emit = on_event or (lambda e: None)
    docker_client = runtime.docker_client()
    run_id = run_id or new_run_id(exp, repetition)
    lock = BringupLock()
    try:
        return _run(exp, Path(results_root), emit, docker_client, run_id, lock, repetition, keep_data,
                    sample_interval)
    finally:
        lock.release()


def _run(exp: Experiment, results_root: Path, emit: EventSink, docker_client, run_id: str, lock: BringupLock,
         repetition: int, keep_data: bool, sample_interval: float) -> RunResult:
    p = plan(exp, run_id, block=free_control_block(run_tag(run_id)))
    imgs = preflight(p, docker_client)

    rd = RunDir(results_root.resolve() / run_id)   # absolute: it is bind-mounted
    (rd.path / "experiment.yaml").write_text(resolved_yaml(exp))
    man = manifest(p, imgs, repetition)
    write_json(rd.path / "manifest.json", man)
    emit(rd.event("run_start", run_id=run_id, run_dir=str(rd.path), hosts=len(p.hosts), t_min_s=p.t_min_s))
    shaper = shaping.choose(exp.shaper, facts.traffic_control()["netem"])()
    sw = Swarm(p, rd, emit, docker_client, imgs, keep_data, sample_interval, shaper)
    status, error, sha_ok = "failed", None, {}
    try:
        try:
            sw.start_hosts()
        finally:
            lock.release()
        sw.make_content()
        man["image_packages"] = image_packages(sw)
        write_json(rd.path / "manifest.json", man)
        sw.start_tracker()
        sw.start_clients()
        man["client_versions"] = sw.versions
        write_json(rd.path / "manifest.json", man)
        sw.start_seeders()
        sw.start_swarm()
        status = sw.measure(exp.timeout)
        sw.t_end = time.monotonic() - sw.swarm_t0
    except KeyboardInterrupt:
        error = "interrupted"
    except TestbedError as exc:
        error = str(exc)
    except Exception as exc:  # unknown: keep the traceback in the event log
        import traceback
        error = f"{exc.__class__.__name__}: {exc}"
        rd.event("traceback", text=traceback.format_exc())
    finally:
        if sw.hosts:
            sw.read_wire()
        sw.stop_clients()
        sw.stop_link_changes()
        sha_ok = sw.verify() if sw.hosts else {}
        if sw.t_end is None and sw.swarm_t0 is not None:
            sw.t_end = time.monotonic() - sw.swarm_t0
        if status == "complete" and not all(sha_ok.get(h.name) for h in p.by_role("leecher")
                                            if h.name not in sw.departed):
            status, error = "failed", "a leecher's file differs from the origin's (sha256)"
        summary = summarize(sw, status if error is None else "failed", error, sha_ok)
        write_json(rd.path / "summary.json", summary)
        emit(rd.event("teardown"))
        teardown = sw.close()
        man["ended"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        man["teardown"] = teardown
        write_json(rd.path / "manifest.json", man)
        emit(rd.event("run_end", status=summary["status"], error=error))
        rd.close()
    return RunResult(rd.path, summary["status"], summary)
