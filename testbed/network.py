"""The emulated network: Mininet, extended (not forked) so that hosts are containers.

DockerHost is a mininet.node.Host whose shell joins an existing container's network and
mount namespaces with `mnexec -a PID` (Containernet's idea, done by subclassing). Mininet
holds the nodes, links and interfaces and runs the switches; the veths and their settings
are made in batches (testbed.linkbatch), not with Mininet's few processes per interface: a
LinkShaper's tc commands shape each end's egress, so an access link shapes upload on the
host's end and download on the switch's end.
"""
from __future__ import annotations

import json
import os
import select
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mininet.link import Intf, Link
from mininet.net import Mininet
from mininet.node import Host, OVSBridge
from mininet.nodelib import LinuxBridge

from testbed import linkbatch
from testbed.errors import RunError
from testbed.plan import Plan
from testbed.shaping import LinkShaper, nfqueue_rules, path_impairments
from testbed.wire import IPTABLES


class DockerHost(Host):
    """A Mininet host living in a running container's namespaces."""

    def __init__(self, name: str, container_pid: int, **params):
        self.container_pid = container_pid
        super().__init__(name, **params)

    def startShell(self, mnopts=None):
        # Node.startShell appends mnexec's 'n' (make new namespaces) when inNamespace is
        # set; this host's namespaces already exist, so attach to them with -a instead.
        self.inNamespace = False
        try:
            super().startShell(mnopts=f"-cda {self.container_pid}")
        finally:
            self.inNamespace = True

    def configDefault(self, **more):
        """Nothing: Mininet would bring lo up with a process of its own; linkbatch does it."""

    def _popen(self, cmd, **params):
        # mnexec -a enters the container's mount namespace and then changes into the
        # caller's working directory, which does not exist there: start from /.
        params.setdefault("cwd", "/")
        return super()._popen(cmd, **params)


def release(net: Mininet) -> None:
    """The teardown's part for Mininet: end the node shells. Mininet's own stop() deletes each
    link with a process of its own (a 50-peer run's teardown took as long as its bring-up);
    removing the containers takes their veths with their namespaces, and cleanup deletes the
    bridges and core links in one `ip -batch`."""
    for node in (*net.hosts, *net.switches):
        node.terminate()


def disable_ipv6(dev: str) -> None:
    """The emulated network is IPv4 only (containers start with IPv6 off): no IPv6 on the
    run's own interfaces in the machine's namespace either."""
    try:
        Path(f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6").write_text("1")
    except OSError:
        pass        # a kernel without IPv6 has nothing to turn off


class QuietBridge(LinuxBridge):
    """Mininet's Linux bridge, made with IGMP snooping and IPv6 off before it goes up.

    A Linux bridge snoops IGMP by default: it joins the multicast-router group (224.0.0.106),
    and the machine sends IGMP reports for it on the bridge, the control bridge's with its
    address: packets to an address outside the emulated network (seen by the isolation test).
    Turning snooping off after the bridge is up is too late: the leave is sent once the
    address is there. The bridges flood multicast instead."""

    def start(self, _controllers):
        # in the machine's namespace, where the bridge lives; by `ip -batch`, not through the
        # switch's shell: its terminal cuts lines at 4095 characters, and a bridge with 100
        # ports is a longer command (a 100-peer bring-up hung there)
        subprocess.run(["ip", "link", "del", self.name], capture_output=True)
        steps = [[f"link add name {self.name} type bridge mcast_snooping 0"],
                 [*(f"link set {i.name} master {self.name}" for i in self.intfList() if self.name in i.name),
                  f"link set {self.name} up"]]
        for k, lines in enumerate(steps):
            r = subprocess.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n", capture_output=True, text=True)
            if r.returncode != 0:
                raise RunError(f"bridge {self.name}: {r.stderr.strip()[:200]}")
            if k == 0:
                disable_ipv6(self.name)     # before it goes up


class PremadeLink(Link):
    """A Mininet link over a veth pair made beforehand (linkbatch.make_pairs: every pair of a
    run in one `ip -batch`), so Mininet makes no pair and moves no interface."""

    @classmethod
    def makeIntfPair(cls, *args, **kwargs):
        return None


# Switch kinds, keyed by the topology's `switch:` value. Both need no OpenFlow controller:
# LinuxBridge learns like any bridge; OVSBridge runs Open vSwitch in standalone mode.
SWITCHES = {"linuxbridge": QuietBridge, "ovs": OVSBridge}


def host_node(name: str, pid: int) -> DockerHost:
    """A host's Mininet node: its shell, started in the container's namespaces (a process, and
    two round trips to it: its prompt and one command). No address: Mininet would set it (and
    lo) with a process each; linkbatch does it."""
    return DockerHost(name, container_pid=pid, ip=None)


def add_hosts(net: Mininet, hosts: list[tuple[str, int]], premade: dict[str, DockerHost] | None = None,
              workers: int = 8) -> dict[str, DockerHost]:
    """What net.addHost does for each (name, container PID), in order: with the nodes in
    `premade` (made as each container came up), and the others made `workers` at a time,
    where Mininet makes them one after another (0.70 s for 100 hosts, 0.42 s 8 at a time)."""
    premade = premade or {}
    with ThreadPoolExecutor(workers) as pool:
        futures = {name: pool.submit(host_node, name, pid) for name, pid in hosts if name not in premade}
    made, failed = {}, None
    for name, _ in hosts:
        try:
            node = premade[name] if name in premade else futures[name].result()
        except Exception as exc:   # the first failure is raised once every node made is Mininet's
            failed = failed or exc
            continue
        net.hosts.append(node)
        net.nameToNode[name] = node
        made[name] = node
    if failed is not None:
        raise failed
    return made


def build(plan: Plan, pids: dict[str, int], shaper: LinkShaper,
          premade: dict[str, DockerHost] | None = None) -> Mininet:
    """Create bridges, veths and shaping for the plan; hosts are the given containers (their
    nodes taken from `premade` where made already: the caller ends those if this fails)."""
    net = Mininet(topo=None, build=False, controller=None, switch=SWITCHES[plan.switch],
                  host=DockerHost, link=PremadeLink, intf=Intf,
                  autoSetMacs=False, autoStaticArp=False, waitConnected=False)
    nodes = {}
    for i, sw in enumerate(plan.switches, 1):
        nodes[sw.name] = net.addSwitch(sw.device, dpid=f"{i:016x}")
    own = [h for h in plan.hosts if h.shares_netns is None]    # one-PC clients share their first's
    nodes.update(add_hosts(net, [(h.name, pids[h.name]) for h in own], premade))
    linkbatch.make_pairs(plan, pids)
    for link in plan.links:
        net.addLink(nodes[link.node1], nodes[link.node2], intfName1=link.intf1, intfName2=link.intf2,
                    params1={"up": None}, params2={"up": None})
    net.build()
    net.start()                 # the bridges, with their ports
    for sw in plan.switches:
        disable_ipv6(sw.device)
    linkbatch.configure(plan, {h.name: nodes[h.name] for h in own}, shaper)
    ctl = nodes["control"]
    err = ctl.cmd(f"ip addr add {plan.control_gateway}/{plan.control_prefix} dev {ctl.name}")
    if err.strip():
        raise RunError(f"control network address on {ctl.name}: {err.strip()}")
    return net


def _tc_in(pid: int | None, line: str) -> subprocess.CompletedProcess:
    argv = shlex.split(line)
    if pid is not None:
        argv = ["nsenter", f"--net=/proc/{pid}/ns/net", *argv]
    return subprocess.run(argv, capture_output=True, text=True)


class LinkControl:
    """Changes to a run's access links while it goes on: a trace's next rate, a carrier's
    throttle or cut. The upload end is eth0 in the host's namespace; the download end is the
    switch's end of the veth, in the machine's namespace."""

    def __init__(self, plan_: Plan, pids: dict[str, int], shaper: LinkShaper):
        self.plan, self.pids, self.shaper = plan_, pids, shaper
        self.switch_end = {lk.node1: lk.intf2 for lk in plan_.links if lk.kind == "access"}

    def set_rate(self, host: str, direction: str, rate_bps: float) -> None:
        hp = self.plan.host(host)
        shaping = hp.up if direction == "up" else hp.down
        pid, dev = (self.pids[host], "eth0") if direction == "up" else (None, self.switch_end[host])
        for line in self.shaper.rate_change(dev, shaping, rate_bps):
            r = _tc_in(pid, line)
            if r.returncode != 0:
                raise RunError(f"changing {host}'s {direction} rate: `{line}`: {r.stderr.strip()}")

    def carrier(self, host: str, up: bool) -> None:
        """The line goes down (the switch's end of the access link: a cut, a paused host) or up."""
        state = "up" if up else "down"
        r = subprocess.run(["ip", "link", "set", "dev", self.switch_end[host], state], capture_output=True, text=True)
        if r.returncode != 0:
            raise RunError(f"setting {host}'s line {state}: {r.stderr.strip()}")


class DelayElement:
    """The userspace delay element of one run (testbed.delayer) and its NFQUEUE rules.

    One process for the whole run, started by the orchestrator and stopped by its PID; it
    also exits by itself if the orchestrator dies (parent-death signal) or every host of the
    run is gone, so it can never outlive the run's namespaces."""

    def __init__(self, plan_: Plan, pids: dict[str, int], workdir: Path, seed: int, whole: Plan | None = None):
        self.tables = path_impairments(plan_, whole)     # whole: a shard's swarm (shaping.py)
        self.pids = pids
        self.config = workdir / "delayer.json"
        self.stats = workdir / "delayer-stats.json"
        self.log = workdir / "delayer.log"
        self.seed = seed
        self.proc: subprocess.Popen | None = None

    @property
    def hosts(self) -> list[str]:
        return sorted(self.tables)

    def start(self, timeout: float = 15.0) -> None:
        if not self.tables:
            return
        hosts = {name: {**t, "pid": self.pids[name]} for name, t in self.tables.items()}
        self.config.write_text(json.dumps({"hosts": hosts, "seed": self.seed, "stats": str(self.stats),
                                           "parent": os.getpid()}, indent=2))
        log = self.log.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "testbed.delayer", str(self.config)],
                                     stdout=subprocess.PIPE, stderr=log, cwd="/", start_new_session=True)
        log.close()
        ready = select.select([self.proc.stdout], [], [], timeout)[0]
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if line != "ready":
            self.stop()
            raise RunError(f"the userspace delay element did not start (see {self.log})")
        for name in self.hosts:
            for rule in nfqueue_rules(self.tables[name]):
                r = subprocess.run(["nsenter", f"--net=/proc/{self.pids[name]}/ns/net", IPTABLES, "-w", *rule],
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    raise RunError(f"{name}: NFQUEUE rule `{IPTABLES} {' '.join(rule)}` failed: {r.stderr.strip()}")

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def stop(self) -> dict:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc.stdout.close()
            self.proc = None
        try:
            return json.loads(self.stats.read_text())
        except (OSError, ValueError):
            return {}


def follow_rates(changes: list[tuple[float, str, str, float]], apply, t0: float, stop: threading.Event,
                 on_error=None) -> threading.Thread:
    """A thread that applies (t, host, direction, rate) changes at monotonic time t0 + t."""
    def run() -> None:
        for t, host, direction, rate in sorted(changes):
            if stop.wait(max(0.0, t0 + t - time.monotonic())):
                return
            try:
                apply(host, direction, rate, time.monotonic() - t0)
            except Exception as exc:  # reported; the link stays at its last rate
                if on_error:
                    on_error(host, exc)
    thread = threading.Thread(target=run, name="rate-schedule", daemon=True)
    thread.start()
    return thread
