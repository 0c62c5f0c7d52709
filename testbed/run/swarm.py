"""Bring-up and teardown of one run's emulated swarm, and the actions done to its hosts.

A Swarm owns everything the run creates: containers, the Mininet network with its
shaping, the userspace delay element, the tracker and the clients. It removes all of it in
close(), found by the run's identity. It decides nothing: the executor tells it what to do
and when.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

from testbed import capture, cgroups, cleanup, content, flows, households, images, runtime, shaping, wire
from testbed.clients import DRIVERS, ClientDriver
from testbed.errors import RunError
from testbed.plan import HostPlan, Plan
from testbed.results import RunDir, write_json
from testbed.run.segments import CongestionManager
from testbed.shaping import LinkShaper

SEED_VERIFY_TIMEOUT = 120.0
ANNOUNCE_TIMEOUT = 30.0


DEATH_SETTLE_S = 3.0     # after containers died, how long teardown waits to learn whether the daemon went
DAEMON_WAIT_S = 30.0     # teardown waits this long for a Docker daemon that went away (a restart)


def prepare_host(hp: HostPlan, pid: int):
    """What a host needs once its container is up and before its network: the guard that keeps
    its packets inside, before it has an interface (its first IGMP report goes when eth0 comes
    up), a client's wire counters and per-remote flow accounting (on before the client makes
    its first flow), and its Mininet node. Returns (its node, a client's netlink handles for
    the sampler, made now so that they learn every flow from the first: flows.NamespaceFlows,
    fresh). A client sharing another's PC has no node: its namespace is set up once, with
    that host's."""
    from testbed import network
    node = None
    if hp.shares_netns is None:
        wire.install(pid, hp.name, "eth0" if hp.client else None, hp.behaviour.connectable, accounting=bool(hp.client))
        node = network.host_node(hp.name, pid)
    # last: nothing that could fail after them leaves them unclosed (they keep the namespace)
    return node, (flows.NamespaceFlows(f"/proc/{pid}/ns/net", fresh=True) if hp.client else None)


class Swarm:
    def __init__(self, plan_: Plan, rd: RunDir, emit, docker_client, imgs: dict[str, images.Image],
                 keep_data: bool, shaper: LinkShaper):
        self.plan, self.rd, self.emit, self.docker = plan_, rd, emit, docker_client
        self.images, self.keep_data, self.shaper = imgs, keep_data, shaper
        self.hosts: dict[str, runtime.ContainerHost] = {}
        self.drivers: dict[str, ClientDriver] = {}
        self.net = None
        self.nodes: dict = {}                     # each host's Mininet node, made as its container came up
        self.flow_handles: dict[str, flows.NamespaceFlows] = {}  # each client's netlink handles, for the sampler
        self.links = None                         # network.LinkControl, once the network exists
        self.element = None                       # the userspace delay element, if used
        self.element_stats: dict = {}
        self.captures = None                      # packet captures, if any group asked
        self.capture_stats: dict = {}
        self.versions: dict[str, str] = {}
        self.resources: dict[str, dict | None] = {}
        self.watch = None                         # runtime.DeathWatch, once the containers exist
        self.written: dict[str, dict] = {}
        self.content_file = rd.path / "content" / f"{plan_.name}.bin"
        self.torrent = rd.path / f"{plan_.name}.torrent"
        self.content_sha = ""
        self.infohash = ""
        self.homes = None                         # households.Households, once the network exists
        self.whole: Plan | None = None            # a shard's: the swarm it is part of (its senders' paths)
        self.managers: list = []                  # segments.CongestionManager per segment policy
        self.announced_seeders: int | None = None  # a shard's: every worker's seeders

    # ------------------------------------------------------------ bring-up
    def make_content(self) -> None:
        self.content_sha = content.make_content(self.content_file, self.plan.content_bytes,
                                                self.plan.seeds["content"])
        self.infohash = content.make_torrent(self.content_file, self.plan.tracker_url, self.plan.piece_bytes,
                                             self.torrent)
        self.emit(self.rd.event("content", bytes=self.plan.content_bytes, piece_bytes=self.plan.piece_bytes,
                                sha256=self.content_sha, infohash=self.infohash))

    def start_hosts(self) -> None:
        from testbed import network
        t = time.monotonic()

        def prepare(host: runtime.ContainerHost) -> None:
            # as each container comes up, in the thread that started it, while the daemon
            # starts the others: its packet guard and accounting and its Mininet shell (for
            # 100 peers about 3 s of processes, one host after another, once all were up)
            node, handles = prepare_host(host.plan, host.pid)
            if node is not None:
                self.nodes[host.name] = node
            if handles is not None:
                self.flow_handles[host.name] = handles
        self.hosts = runtime.start_containers(self.docker, self.plan, self.images, self.rd.hosts, then=prepare)
        self.watch = runtime.DeathWatch(self.docker, self.plan.run_id, {h.container.id: n for n, h in self.hosts.items()})
        self.emit(self.rd.event("containers", count=len(self.hosts), seconds=round(time.monotonic() - t, 3)))
        t = time.monotonic()
        pids = {n: h.pid for n, h in self.hosts.items()}
        self.net = network.build(self.plan, pids, self.shaper, self.nodes)
        self.links = network.LinkControl(self.plan, pids, self.shaper)
        self.emit(self.rd.event("network", links=len(self.plan.links), shaper=self.shaper.name,
                                seconds=round(time.monotonic() - t, 3)))
        if self.shaper.userspace_element:
            self.start_delay_element(network, pids)
        self.homes = households.Households(self.plan, self.hosts, self.emit, self.rd)
        self.homes.configure()
        for pol in self.plan.segment_policies:
            manager = CongestionManager(self.plan, pol, self.rd, self.emit, lambda: 0.0, self.shaper)
            manager.install()
            self.managers.append(manager)
        # captures begin before any client does (one PC: once, in its shared namespace)
        points = {hp.name: hp.capture for hp in self.plan.hosts if hp.capture and hp.shares_netns is None}
        self.captures = capture.Captures(points, pids, {n: h.host_dir for n, h in self.hosts.items()})
        self.captures.start()
        if points:
            self.emit(self.rd.event("captures", hosts={h: list(p) for h, p in sorted(points.items())}))

    def start_delay_element(self, network, pids: dict[str, int]) -> None:
        self.element = network.DelayElement(self.plan, pids, self.rd.path, self.plan.seeds["impairments"],
                                            whole=self.whole)
        self.element.start()
        if not self.element.hosts:
            return
        load = shaping.element_load_pps(self.plan, self.element.tables)
        self.emit(self.rd.event("delay_element", hosts=self.element.hosts, pid=self.element.proc.pid,
                                max_pps=None if load is None else round(load)))
        if load is None or load > shaping.ELEMENT_CAPACITY_PPS:
            # a warning, not a refusal: the capacity was measured on one machine
            self.emit(self.rd.event("warning", message=(
                f"the delay element may have to pass {'unbounded' if load is None else f'{load:,.0f}'} "
                f"packets/s, more than the {shaping.ELEMENT_CAPACITY_PPS:,} a 2-core machine carried through "
                f"it without loss (benchmarks/delayer.py); delayer-stats.json shows what it held and dropped")))

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

    def stop_tracker(self) -> None:
        """The tracker fails: its process is killed (by its recorded PID). opentracker drops to
        `nobody`, and the container has no capability to signal another user: kill as nobody."""
        h = self.hosts["tracker"]
        code, out = h.exec(["sh", "-c", f"kill -KILL $(cat {h.container_dir}/run/opentracker.pid)"], user="nobody")
        if code != 0:
            raise RunError(f"stopping the tracker failed: {out.strip()}")

    def start_clients(self) -> None:
        for hp in self.plan.hosts:
            if hp.client:
                driver = DRIVERS[hp.client](self.hosts[hp.name], hp.behaviour, rpc_port=hp.rpc_port)
                self.written[hp.name] = driver.configure()
                self.drivers[hp.name] = driver
        for hp in self.plan.by_role("seeder"):
            data = self.hosts[hp.name].host_dir / "data" / self.content_file.name
            try:
                os.link(self.content_file, data)      # seeders only read: share the bytes
            except OSError:
                shutil.copyfile(self.content_file, data)
        for d in self.drivers.values():
            d.start()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda d: d.wait_ready(), self.drivers.values()))
        self.homes.clients_started(self.drivers)
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
        if "tracker" in self.hosts:         # a shard's tracker may live on another worker
            self.wait_seeders_announced(self.announced_seeders or len(seeders))

    def scrape(self) -> int | None:
        """Peers the tracker lists for the torrent, from its scrape, asked inside the tracker's
        own namespace (the request goes to the tracker's address from its own host).

        Complete and incomplete both count: a seeder that announced before its recheck
        ended (deluge does) is listed as incomplete until its next announce, and is handed
        to leechers all the same."""
        url = self.plan.tracker_url.replace("/announce", "/scrape") + "?info_hash=" + \
            urllib.parse.quote(bytes.fromhex(self.infohash))
        code = ("import sys, urllib.request; "
                "sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=2).read())")
        r = subprocess.run(["nsenter", f"--net=/proc/{self.hosts['tracker'].pid}/ns/net", sys.executable, "-c",
                            code, url], capture_output=True, timeout=10)
        counts = re.findall(rb"(?:8:complete|10:incomplete)i(\d+)e", r.stdout)
        return sum(int(c) for c in counts) if r.returncode == 0 and counts else None

    def wait_seeders_announced(self, seeders: int) -> None:
        """Leechers start once the tracker lists every seeder (only seeders have announced yet).
        A seeder announces a moment after it verifies; a leecher announcing before that would
        get no seeder in its first reply, and a leecher that cannot accept connections
        (connectable: false) would then wait a whole announce interval."""
        deadline = time.monotonic() + ANNOUNCE_TIMEOUT
        while (known := self.scrape() or 0) < seeders:
            if time.monotonic() > deadline:
                raise RunError(f"the tracker lists {known} of {seeders} seeder(s) {ANNOUNCE_TIMEOUT:g}s after "
                               f"they verified the content (see hosts/*/log)")
            time.sleep(0.2)
        self.emit(self.rd.event("seeders_announced", seeders=known))

    # ------------------------------------------------------------ what happens to a peer
    def crash(self, name: str) -> None:
        """The client is killed (SIGKILL, by its recorded PID): no goodbye to the tracker or peers."""
        d = self.drivers[name]
        self.hosts[name].exec(["sh", "-c", f"kill -KILL $(cat {d.pidfile}) 2>/dev/null || true"])

    def restart(self, name: str) -> None:
        """The client starts again and finds the data it had on disk; its session state is gone
        (as after a crash without fast-resume), so it checks the data before it goes on."""
        d = self.drivers[name]
        d.reset_session()
        d.configure()
        d.start()
        d.wait_ready()
        d.add_torrent(self.torrent, seed=True)

    def freeze(self, name: str, frozen: bool) -> None:
        """Pause: every process of the host frozen (cgroup freezer) and its line down, so no
        packet crosses it; resume undoes both."""
        c = self.hosts[name].container
        # one PC: the line is the whole PC's, so only this client's processes are frozen
        hp = self.plan.host(name)
        shared = hp.shares_netns is not None or (hp.home is not None and self.plan.home(hp.home).one_pc)
        if frozen:
            c.pause()
            if not shared:
                self.links.carrier(name, up=False)
        else:
            if not shared:
                self.links.carrier(name, up=True)
            c.unpause()

    def start_carriers(self, clock, epoch0: float) -> None:
        """What runs beside the swarm: probes, background traffic, segment policies."""
        self.homes.start_traffic(epoch0)
        for m in self.managers:
            m.clock = clock
            m.start()

    def stop_carriers(self) -> dict:
        """Stop the segment policies and collect what the homes measured (before teardown)."""
        for m in self.managers:
            m.close()
        if self.homes is None:
            return {}
        self.homes.stop()
        for row in self.homes.probes():
            self.rd.row("probes", row)
        return {"protocol_policies": self.homes.policy_counts(), "traffic": self.homes.traffic(), "segment_policies": [m.summary() for m in self.managers],
                "ports": self.homes.ports, "forwarded": self.homes.forwarded}

    # ------------------------------------------------------------ teardown
    def read_wire(self) -> dict[str, dict | None]:
        """The wire counters of every host with a namespace of its own, read before it goes away."""
        own = {h.name: wire.read(self.hosts[h.name].pid) for h in self.plan.hosts
               if h.shares_netns is None and h.name in self.hosts}
        # clients sharing one PC see its one namespace's counters
        return {**own, **{h.name: own.get(h.shares_netns) for h in self.plan.hosts if h.shares_netns}}

    def stop_watching(self) -> tuple[list[dict], list[str]]:
        """The containers that died during the run (none of them by the teardown), and the hosts
        whose memory limit killed a process."""
        if self.watch is None:
            return [], []
        if self.watch.since(0):     # deaths: give a daemon going down time to end the stream (watch.lost)
            self.watch.settle(DEATH_SETTLE_S)
        self.watch.close()
        with self.watch.lock:
            ooms = sorted({o["host"] for o in self.watch.ooms})
        return self.watch.since(0), ooms

    def read_resources(self) -> dict[str, dict | None]:
        """CPU and memory each host's container used (its cgroups), read before it goes."""
        self.resources = {name: cgroups.usage(h.pid) for name, h in self.hosts.items() if h.pid}
        return self.resources

    def stop_clients(self) -> None:
        for name, d in self.drivers.items():
            try:
                if self.hosts[name].container.status == "paused":
                    self.hosts[name].container.unpause()
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

    def stop_element(self) -> None:
        if self.captures is not None:
            self.capture_stats = self.captures.stop() or self.capture_stats
        if self.element is not None:
            self.element_stats = self.element.stop() or self.element_stats

    def close(self) -> dict:
        """Remove everything of this run; returns what was removed and what is left (nothing)."""
        self.stop_element()
        for h in self.flow_handles.values():     # they keep the namespaces alive (closed twice: harmless)
            h.close()
        if self.net is not None or self.nodes:
            from testbed import network
            try:
                if self.net is not None:
                    network.release(self.net)
                for node in list(self.nodes.values()):   # shells made before a build that failed
                    node.terminate()
            except Exception as exc:
                self.rd.event("teardown_error", step="mininet", error=str(exc))
        if not runtime.wait_for_daemon(self.docker, DAEMON_WAIT_S):
            self.rd.event("teardown_error", step="containers",
                          error=f"the Docker daemon did not answer for {DAEMON_WAIT_S:g} s: the run's containers are "
                                f"left to `testbed clean`")
        runtime.kill_containers(self.hosts.values())
        removed = cleanup.clean(self.docker, self.plan.run_id)
        left = cleanup.find(self.docker, self.plan.run_id)
        if not self.keep_data:
            shutil.rmtree(self.rd.path / "content", ignore_errors=True)
            for h in self.hosts.values():
                shutil.rmtree(h.host_dir / "data", ignore_errors=True)
        return {"removed": removed, "left": left}


