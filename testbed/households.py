"""Households on the machine: home routers (NAT, port forwards, protocol policies), their
LANs' routes, the round-trip probes and background traffic, and what the clients of one
PC did about their ports.

Every rule lives inside a namespace the run made (a router's or a client's container), so
it goes when the container goes: nothing of a household outlives its run. Rules are set
from the machine with `nsenter --net` and the machine's iptables, so the images carry
neither iptables nor any capability.

The router is an ordinary Linux NAT box:
  nat POSTROUTING  -o eth0 -j MASQUERADE                 the WAN side shows the router's address
  nat PREROUTING   -d WAN -p tcp|udp --dport P -j DNAT   a forwarded client (TCP and uTP)
  nat POSTROUTING  -s LAN -d CLIENT --dport P -j MASQUERADE   hairpin: LAN peers that learnt
                   the router's address from the tracker reach a forwarded neighbour
Without a forward, an inbound connection reaches the router itself, which has no listener
there and answers with a reset: nothing behind it accepts it, as behind a real NAT.
"""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

from testbed.errors import RunError
from testbed.plan import DATA_NET, Plan
from testbed.model.homes import ProtocolPolicy
from testbed.plan.homes import HomePlan, background_flows
from testbed.wire import HANDSHAKE_HEX, IPTABLES, parse_counters

DPI_MARK = "0x6057"


def _in_ns(pid: int, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", *argv], capture_output=True, text=True)


def _must(pid: int, argv: list[str], what: str) -> None:
    r = _in_ns(pid, argv)
    if r.returncode != 0:
        raise RunError(f"{what}: `{' '.join(argv)}` failed: {r.stderr.strip()}")


def router_commands(home: HomePlan, wan_ip: str) -> list[list[str]]:
    """What makes a router of a namespace with eth0 (WAN) and lan0 (pure, for the tests)."""
    prefix = home.lan_net.split("/")[1]
    return [["ip", "addr", "add", f"{home.lan_ip}/{prefix}", "dev", "lan0"],
            ["sysctl", "-qw", "net.ipv4.ip_forward=1"],
            [IPTABLES, "-w", "-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-j", "MASQUERADE"]]


def forward_commands(home: HomePlan, wan_ip: str, client_ip: str, port: int) -> list[list[str]]:
    out = []
    for proto in ("tcp", "udp"):
        out.append([IPTABLES, "-w", "-t", "nat", "-A", "PREROUTING", "-d", wan_ip, "-p", proto, "--dport", str(port),
                    "-m", "comment", "--comment", f"forward_{proto}_{port}", "-j", "DNAT",
                    "--to-destination", f"{client_ip}:{port}"])
        out.append([IPTABLES, "-w", "-t", "nat", "-A", "POSTROUTING", "-s", home.lan_net, "-d", client_ip,
                    "-p", proto, "--dport", str(port), "-j", "MASQUERADE"])
    return out


def accounting_commands(server_ip: str | None, tracker_ip: str) -> list[list[str]]:
    """Counting rules (no target) in a router: its WAN traffic with the internet server (the
    home's other traffic and probes) and with the tracker, each way, whether the router or a
    client behind it is the end. The rest of the home's traffic is peer-to-peer (pure)."""
    out = []
    for name, addr in (("other", server_ip), ("tracker", tracker_ip)):
        if addr is None:
            continue
        for chain, way, flag in (("FORWARD", "up", "-o"), ("OUTPUT", "up", "-o"), ("FORWARD", "down", "-i"),
                                 ("INPUT", "down", "-i")):
            match = ["-d", addr] if way == "up" else ["-s", addr]
            out.append([IPTABLES, "-w", "-A", chain, flag, "eth0", *match, "-m", "comment", "--comment",
                        f"{name}_{way}"])
    return out


def byte_counters(listing: str) -> dict[str, int]:
    """Bytes by rule comment, summed over rules with the same comment (`iptables -L -v -x -n`)."""
    found: dict[str, int] = {}
    for line in listing.splitlines():
        fields = line.split()
        if "/*" in fields and fields[0].isdigit():
            name = fields[fields.index("/*") + 1]
            found[name] = found.get(name, 0) + int(fields[1])
    return found


def policy_commands(rule) -> list[list[str]]:
    """iptables rules of a protocol policy, in a router's FORWARD path (pure). Each rule is
    named by a comment, so its packet counter is the policy's count of that action."""
    match = ["-m", "string", "--algo", "bm", "--hex-string", HANDSHAKE_HEX]
    ipt = [IPTABLES, "-w"]
    seen = ipt + ["-t", "mangle", "-A", "FORWARD", *match, "-m", "comment", "--comment", "dpi_recognised",
                  "-j", "CONNMARK", "--set-mark", DPI_MARK]
    marked = ["-m", "connmark", "--mark", DPI_MARK]
    # a carrier never sees LAN traffic that hairpins in the router: it skips the policy
    lan = [ipt + ["-t", table, "-A", "FORWARD", "-i", "lan0", "-o", "lan0", "-j", "RETURN"]
           for table in ("mangle", "filter")]
    return lan + _policy_rules(rule, ipt, seen, marked)


def _policy_rules(rule, ipt, seen, marked) -> list[list[str]]:
    if rule.action == "block":
        return [seen, ipt + ["-A", "FORWARD", *marked, "-m", "comment", "--comment", "dpi_blocked", "-j", "DROP"]]
    if rule.action == "reset":
        return [seen,
                ipt + ["-A", "FORWARD", "-p", "tcp", *marked, "-m", "comment", "--comment", "dpi_reset",
                       "-j", "REJECT", "--reject-with", "tcp-reset"],
                ipt + ["-A", "FORWARD", "-p", "udp", *marked, "-m", "comment", "--comment", "dpi_blocked",
                       "-j", "DROP"]]
    # throttle: a policer per connection and direction (hashlimit in bytes), as DPI boxes police
    per_s = max(1, int(rule.rate / 8))
    return [seen, ipt + ["-A", "FORWARD", *marked, "-m", "hashlimit", "--hashlimit-above", f"{per_s}b/s",
                         "--hashlimit-burst", f"{max(per_s, 3000)}b", "--hashlimit-mode", "srcip,srcport,dstip,dstport",
                         "--hashlimit-name", "dpi", "-m", "comment", "--comment", "dpi_throttled", "-j", "DROP"]]


def available() -> tuple[bool, str]:
    """Whether a home router's rules load here (NAT, forwards, accounting, every protocol
    policy), tried in a throwaway namespace."""
    if os.geteuid() != 0:
        return False, "not root"
    ns = f"tb{os.getpid() % 0xFFFFFF:06x}-homeprobe"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        return False, "cannot create a network namespace"
    home = HomePlan("probe", "probe", "s1", "198.18.128.0/26", "198.18.128.1", "probe.lan", False)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "add", "lan0", "type", "dummy"], capture_output=True)
        rules = [*router_commands(home, "198.18.0.3")[1:], *forward_commands(home, "198.18.0.3", "198.18.128.2", 51413),
                 *accounting_commands("198.18.0.2", "198.18.0.1")]
        for action in ("block", "reset", "throttle"):
            rules += policy_commands(ProtocolPolicy(action=action, rate="64kbit" if action == "throttle" else None))
        for argv in rules:
            r = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True)
            if r.returncode != 0:
                return False, f"`{' '.join(argv)}` failed: {r.stderr.strip()}"
        return True, "NAT, port forwards, string, connmark, hashlimit and REJECT rules load in a namespace"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def listening(container, rpc_port: int, ctl_ip: str = "") -> dict[str, list[int]]:
    """The ports a client's own processes listen on for peers (TCP, and UDP for uTP), from
    `ss` inside its container: it shows process details only for that container's own
    processes, so in a shared namespace each client sees which sockets are its own."""
    res = container.exec_run(["ss", "-Hlnptu"])
    out: dict[str, set[int]] = {"tcp": set(), "udp": set()}
    text = res.output.decode(errors="replace") if isinstance(res.output, bytes) else ""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5 or "users:" not in line:
            continue
        addr, _, port_text = fields[4].rpartition(":")
        if not port_text.isdigit():
            continue
        port = int(port_text)
        # the control port: bound to the control address, or to every address (aria2)
        if addr == ctl_ip or (port == rpc_port and addr in ("0.0.0.0", "*", "[::]")):
            continue
        out.setdefault(fields[0], set()).add(port)
    return {k: sorted(v) for k, v in out.items()}


PING_LINE = re.compile(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+).*time=([\d.]+) ms")


def parse_ping(text: str, epoch0: float) -> list[tuple[float, int, float]]:
    """(t since the swarm started, sequence, RTT in ms) of each answered ping (ping -D)."""
    out = []
    for line in text.splitlines():
        m = PING_LINE.match(line)
        if m:
            out.append((round(float(m.group(1)) - epoch0, 3), int(m.group(2)), float(m.group(3))))
    return out


class Households:
    """The run's homes on the machine; Swarm calls it at each step of bring-up and teardown."""

    def __init__(self, plan_: Plan, hosts: dict, emit, rd):
        self.plan, self.hosts, self.emit, self.rd = plan_, hosts, emit, rd
        self.ports: dict[str, dict] = {}          # client -> what it listens on, as observed
        self.forwarded: dict[str, list[int]] = {}
        self.seen_default: set[str] = set()      # clients on their own default port
        self.epoch0 = time.time()
        self.drivers: dict = {}
        self.watcher: threading.Thread | None = None
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.taken: dict[str, dict[int, str]] = {}     # home -> outside port -> the client it goes to

    def pid(self, name: str) -> int:
        return self.hosts[name].pid

    def configure(self) -> None:
        """Routers route and translate; every client's route to the WAN goes through its router."""
        for home in self.plan.homes:
            wan = self.plan.host(home.name).data_ip
            for argv in router_commands(home, wan):
                _must(self.pid(home.name), argv, f"router {home.name}")
            for member in home.members:
                hp = self.plan.host(member)
                if hp.shares_netns is None:
                    _must(self.pid(member), ["ip", "route", "add", str(DATA_NET), "via", home.lan_ip, "dev", "eth0"],
                          f"{member}'s route through {home.name}")
        for home in self.plan.homes:
            # by address: the tracker and the server may live on another worker (plan/shard.py)
            for argv in accounting_commands(self.plan.server_ip, self.plan.tracker_ip):
                _must(self.pid(home.name), argv, f"traffic accounting at {home.name}")
        for pol in self.plan.protocol_policies:
            for router in pol.routers:
                for argv in policy_commands(pol.rule):
                    _must(self.pid(router), argv, f"{pol.where}: protocol policy at {router}")
        if self.plan.homes:
            self.emit(self.rd.event("households", homes=len(self.plan.homes),
                                    policies=[p.where for p in self.plan.protocol_policies]))

    def clients_started(self, drivers: dict) -> None:
        """Once the clients run: record each one's ports (one PC: who got which), and forward
        the port of each forwarded client once it listens, as UPnP would. Some clients listen
        only once they have a torrent (aria2), so a thread keeps looking for those."""
        self.drivers = drivers
        waiting = [m for home in self.plan.homes for m in home.members]
        if waiting:
            self.look(waiting)
            self.watcher = threading.Thread(target=self.watch, name="home-ports", daemon=True)
            self.watcher.start()

    def look(self, members: list[str]) -> list[str]:
        """Observe the members' ports; forward new ones; return those still without a TCP port.
        A member that cannot be looked at now (its container paused, say) is tried again."""
        left = []
        for m in members:
            d = self.drivers[m]
            try:
                found = listening(self.hosts[m].container, d.rpc_port, d.host.ctl_ip)
            except Exception:
                left.append(m)
                continue
            with self.lock:
                self.ports[m] = {"configured": None if m in self.seen_default else d.peer_port, **found}
            if not found["tcp"]:
                left.append(m)
                continue
            if d.peer_port is None:
                self.seen_default.add(m)
                d.peer_port = found["tcp"][0]      # the port its flows are counted on
            home = self.plan.home(self.plan.host(m).home)
            if m in home.forwards and m not in self.forwarded:
                self.forward(home, m, found["tcp"][0])
        return left

    def forward(self, home: HomePlan, member: str, port: int) -> None:
        taken = self.taken.setdefault(home.name, {})
        if port in taken:         # one outside port, one LAN host: the first forward stays
            self.emit(self.rd.event("warning", message=f"{member} listens on {port}, which {home.name} already "
                                    f"forwards to {taken[port]}: {member} is not forwarded"))
            self.forwarded[member] = []
            return
        wan = self.plan.host(home.name).data_ip
        for argv in forward_commands(home, wan, self.plan.host(member).data_ip, port):
            _must(self.pid(home.name), argv, f"forwarding {home.name}:{port} to {member}")
        taken[port] = member
        self.forwarded[member] = [port]
        self.emit(self.rd.event("forwarded", host=member, router=home.name, port=port))

    def watch(self) -> None:
        """Until the run ends: a client may listen only once its torrent is added (aria2), and
        that is when it arrives."""
        left = [m for m in self.ports if not self.ports[m]["tcp"]]
        while left and not self.stopping.wait(0.5):
            try:
                left = self.look(left)
            except Exception as exc:       # reported; those clients stay unforwarded
                self.emit(self.rd.event("warning", message=f"watching home ports: {exc}"))
                return

    def stop(self) -> None:
        self.stopping.set()
        if self.watcher is not None:
            self.watcher.join(10)
        with self.lock:
            ports = {m: dict(v) for m, v in self.ports.items()}
        for m, got in ports.items():
            if not got.get("tcp"):
                self.emit(self.rd.event("warning", message=f"{m} ({self.drivers[m].name}) listened on no TCP port "
                                        "for peers (on one PC, another client may hold its port)"))
        if ports:
            self.emit(self.rd.event("listening", ports=ports, forwarded=dict(self.forwarded)))

    def start_traffic(self, epoch0: float) -> None:
        """Probes and background traffic start with the swarm. The server listens for every
        home's background traffic, those of homes on other workers included (a shard's
        `served_ports`); a home's router talks to the server by its address, wherever it lives."""
        self.epoch0 = epoch0
        server = next((h for h in self.plan.hosts if h.role == "server"), None)
        if server is not None:
            srv = self.hosts[server.name]
            ports = [port for home in self.plan.homes for port, _, _ in background_flows(home)]
            for port in [*ports, *self.plan.served_ports]:
                srv.exec(["sh", "-c", f"exec iperf3 -s -p {port} >{srv.container_dir}/log/iperf3-{port}.txt 2>&1"],
                         detach=True)
        address = self.plan.server_ip
        if address is None:
            return
        for home in self.plan.homes:
            r = self.hosts[home.name]
            if home.probe_s:
                # a copy of ping without its file capability (the container has none to grant
                # and no-new-privileges): it then uses an unprivileged ICMP socket
                r.exec(["sh", "-c", f"cp /bin/ping /tmp/ping && exec /tmp/ping -D -n -i {home.probe_s:g} -W 2 "
                                    f"{address} >{r.container_dir}/log/ping.txt 2>&1"], detach=True)
            bg = home.background
            for port, rate, reverse in background_flows(home):
                on = f"-t {max(1, round(bg.on))}" if bg.on else "-t 86400"
                # writes of about 10 ms of the rate: iperf3's default 128 KiB block would leave
                # as one burst every few seconds at home rates, not as a steady load
                cmd = (f"iperf3 -c {address} -p {port}{reverse} -b {int(rate)} -l {max(1024, int(rate / 800))} "
                       f"{on} -i 1 --forceflush --timestamps")
                # first until the server answers (on another worker, it starts at the same moment)
                first = f"until {cmd}; do sleep 0.5; done"
                loop = f"{first}; while sleep {bg.off:g}; do {cmd}; done" if bg.on else first
                r.exec(["sh", "-c", f"sleep 0.5; {loop} >>{r.container_dir}/log/background-{port}.txt 2>&1"],
                       detach=True)
        self.emit(self.rd.event("household_traffic", probes=sum(1 for h in self.plan.homes if h.probe_s),
                                background=sum(1 for h in self.plan.homes if h.background)))

    def policy_counts(self) -> dict[str, dict[str, int]]:
        """Each router's protocol-policy counters (packets): recognised, blocked, reset, throttled."""
        out = {}
        for pol in self.plan.protocol_policies:
            for router in pol.routers:
                counts: dict[str, int] = {}
                for table in ("mangle", "filter"):
                    r = _in_ns(self.pid(router), [IPTABLES, "-w", "-t", table, "-L", "FORWARD", "-v", "-x", "-n"])
                    if r.returncode == 0:
                        counts.update({k: v for k, v in parse_counters(r.stdout).items() if k.startswith("dpi_")})
                out[router] = {"policy": pol.where, "action": pol.rule.action, **counts}
        return out

    def traffic(self) -> dict[str, dict[str, int]]:
        """Each home's WAN bytes with the internet server and with the tracker, each way."""
        out = {}
        for home in self.plan.homes:
            counts: dict[str, int] = {}
            for chain in ("FORWARD", "INPUT", "OUTPUT"):
                r = _in_ns(self.pid(home.name), [IPTABLES, "-w", "-L", chain, "-v", "-x", "-n"])
                if r.returncode == 0:
                    for k, v in byte_counters(r.stdout).items():
                        if k.startswith(("other_", "tracker_")):
                            counts[k] = counts.get(k, 0) + v
            out[home.name] = counts
        return out

    def probes(self) -> list[dict]:
        rows = []
        for home in self.plan.homes:
            path = Path(self.hosts[home.name].host_dir) / "log" / "ping.txt"
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            rows += [{"t": t, "home": home.name, "seq": seq, "rtt_ms": rtt} for t, seq, rtt in
                     parse_ping(text, self.epoch0)]
        return rows
