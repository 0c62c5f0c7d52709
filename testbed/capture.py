"""Packet captures of a run's hosts, at two points, with tcpdump.

Where this machine has no sch_netem, delay, jitter and loss come from the userspace delay
element (testbed.delayer), which takes each packet arriving on a host's eth0 in the raw
table's PREROUTING hook. A capture on eth0 (AF_PACKET, what `tcpdump -i eth0` uses) sees a
packet as it arrives, before the element holds or drops it: its timestamps are the wire's,
and it shows packets the client never gets. So there are two points:

- `wire`: `tcpdump -i eth0`, packets as they cross the host's interface;
- `client`: an NFLOG rule in the mangle table (which the kernel passes after the raw table,
  so after the element released a packet) for packets in from eth0 and out to it, read by
  `tcpdump -i nflog:GROUP`: what the client's own network stack gets and sends, at the time
  it does, without the packets the element dropped.

Each writes hosts/<name>/capture-<point>.pcap. Only the first SNAPLEN bytes of each packet are
kept (headers and the start of a BitTorrent message), so a capture of a whole download stays
small. tcpdump runs in the host's network namespace (nsenter), in its own session, and is
stopped by its PID.
"""
from __future__ import annotations

import re
import select
import shutil
import subprocess
from pathlib import Path

from testbed.errors import PreflightError, RunError
from testbed.wire import IPTABLES       # the same iptables as every other rule in the namespace

SNAPLEN = 256
NFLOG_GROUP = 7
RULES = [["-t", "mangle", "-A", "PREROUTING", "-i", "eth0"], ["-t", "mangle", "-A", "POSTROUTING", "-o", "eth0"]]
SUMMARY = re.compile(r"(\d+) packets? captured.*?(\d+) packets? received by filter.*?(\d+) packets? dropped by kernel",
                     re.S)


def require_tcpdump() -> str:
    """tcpdump's path; one sentence and exit 2 when an experiment asks for captures without it."""
    found = shutil.which("tcpdump")
    if found is None:
        raise PreflightError("the experiment asks for packet captures ('capture:'), which need tcpdump: "
                             "install it (./setup.sh does, or apt-get install tcpdump) or remove 'capture'")
    return found


def nflog_rules() -> list[list[str]]:
    # --nflog-threshold 1: the kernel sends each packet in a message of its own. By default it
    # batches several into one netlink datagram, and libpcap's nflog reader takes only the
    # first of each (measured: 240 of 2186 packets captured; with the threshold, all)
    return [[*r, "-j", "NFLOG", "--nflog-group", str(NFLOG_GROUP), "--nflog-size", str(SNAPLEN),
             "--nflog-threshold", "1"] for r in RULES]


def tcpdump_argv(tcpdump: str, point: str, out: Path) -> list[str]:
    iface = "eth0" if point == "wire" else f"nflog:{NFLOG_GROUP}"
    # -Z root: write as the testbed does (tcpdump otherwise drops to its own user, who cannot
    # write the host directory); -U and --immediate-mode: each packet handed over and written
    # as it comes (by default the kernel hands them over a second at a time, and the last
    # second is lost when tcpdump is stopped), so a cut-short run's file is readable too;
    # -n: no name lookups (nothing leaves the namespace)
    return [tcpdump, "-i", iface, "-s", str(SNAPLEN), "-U", "--immediate-mode", "-n", "-Z", "root", "-w", str(out)]


class Captures:
    """The captures of one run: started once the network is up, stopped before teardown."""

    def __init__(self, points: dict[str, tuple[str, ...]], pids: dict[str, int], dirs: dict[str, Path]):
        self.points = {h: p for h, p in points.items() if p}
        self.pids, self.dirs = pids, dirs
        self.procs: dict[tuple[str, str], subprocess.Popen] = {}

    def start(self, timeout: float = 10.0) -> None:
        if not self.points:
            return
        tcpdump = require_tcpdump()
        for host, points in sorted(self.points.items()):
            ns = f"--net=/proc/{self.pids[host]}/ns/net"
            if "client" in points:
                for rule in nflog_rules():
                    r = subprocess.run(["nsenter", ns, IPTABLES, "-w", *rule], capture_output=True, text=True)
                    if r.returncode != 0:
                        raise RunError(f"{host}: capture rule `{IPTABLES} {' '.join(rule)}` failed: {r.stderr.strip()}")
            for point in points:
                out = self.dirs[host] / f"capture-{point}.pcap"
                proc = subprocess.Popen(["nsenter", ns, *tcpdump_argv(tcpdump, point, out)], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
                self.procs[(host, point)] = proc
                # tcpdump says "listening on ..." once its socket is bound: from then on it sees all
                ready = select.select([proc.stderr], [], [], timeout)[0]
                line = proc.stderr.readline().decode(errors="replace") if ready else ""
                if "listening on" not in line:
                    self.stop()
                    raise RunError(f"{host}: the {point} capture did not start: {line.strip() or 'no answer'}")

    def stop(self) -> dict[str, dict]:
        """Stops every capture; per host and point, its file and what tcpdump counted."""
        out: dict[str, dict] = {}
        for (host, point), proc in self.procs.items():
            if proc.poll() is None:
                proc.terminate()
            try:
                _, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            m = SUMMARY.search(err.decode(errors="replace"))
            out.setdefault(host, {})[point] = {
                "file": f"capture-{point}.pcap",
                **({"captured": int(m[1]), "received": int(m[2]), "dropped_by_kernel": int(m[3])} if m else {})}
        self.procs = {}
        return out
