"""Workers on this one machine, for tests and for trying the multi-machine path: each worker
is a network namespace with its own sshd, joined to the others and to this machine by an
underlay bridge, all on addresses of 198.19.252.0/22. Ansible reaches them over SSH exactly
as it reaches real machines; they share this machine's file system and Docker daemon.

Everything carries a harness identity, a run-style tag (6 hex digits): the namespaces are
tb<tag>-w<k>, the bridge tb<tag>ul and the root ends of the veths tb<tag>w<k>, so `testbed
clean` finds them. The sshd processes are ended by the namespace they run in (`ip netns
pids`, cleanup.stop_namespace), never by name.

One harness takes a /26 of the underlay (the bridge its first address, the workers the next
ones): up to 16 at once, 61 workers each.
"""
from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from testbed import cleanup
from testbed.errors import InputError, PreflightError, RunError
from testbed.plan.build import WORKER_UNDERLAY

SSHD = "/usr/sbin/sshd"
UNDERLAY_MTU = 1550     # VXLAN's 50 bytes on top of the emulated hosts' 1500 (testbed.workers.vxlan)
SLOTS = list(WORKER_UNDERLAY.subnets(new_prefix=26))
HARNESS_LOCK = "/run/lock/testbed-harness.lock" if os.path.isdir("/run/lock") else "/tmp/testbed-harness.lock"
SSHD_CONFIG = """\
ListenAddress {address}:22
HostKey {dir}/hostkey
PidFile {dir}/sshd.pid
AuthorizedKeysFile {keys}
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
Subsystem sftp internal-sftp
LogLevel ERROR
"""


def sh(*args: str, input: str | None = None) -> str:
    r = subprocess.run(args, capture_output=True, text=True, input=input, start_new_session=True)
    if r.returncode != 0:
        raise RunError(f"harness: `{' '.join(args)}` failed: {r.stderr.strip()[:200]}")
    return r.stdout


def free_slot() -> int:
    """The first /26 of the underlay that no route of this machine overlaps (another harness,
    or an underlay address given to a real interface). Call it under HARNESS_LOCK."""
    routes = json.loads(subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"], capture_output=True,
                                       text=True).stdout or "[]")
    used = []
    for r in routes:
        dst = r.get("dst", "")
        try:
            used.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False))
        except ValueError:
            continue            # "default", multicast and the like
    for k, net in enumerate(SLOTS):
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return k
    raise RunError(f"every /26 of {WORKER_UNDERLAY} overlaps a route of this machine (other harnesses?)")


class Harness:
    """`count` workers in namespaces; `up()` makes them and writes `inventory.yaml` into
    `directory`; `cut(k)` takes worker k off the underlay (a worker lost); `down()` removes
    everything, whatever state it is in."""

    def __init__(self, count: int, directory: Path, tag: str | None = None) -> None:
        if not 1 <= count <= 61:
            raise ValueError("a harness has 1 to 61 workers")
        self.count, self.dir = count, Path(directory)
        self.tag = tag or secrets.token_hex(3)
        self.bridge = f"tb{self.tag}ul"
        self.names = [f"w{k + 1}" for k in range(count)]
        self.netns = [f"tb{self.tag}-{n}" for n in self.names]
        self.veths = [f"tb{self.tag}{n}" for n in self.names]
        self.addresses: list[str] = []
        self.gateway = ""

    def inventory_path(self) -> Path:
        return self.dir / "inventory.yaml"

    def up(self) -> Path:
        """Makes the workers; on any failure removes what it made, then raises."""
        with open(HARNESS_LOCK, "a") as lock:      # two harnesses never pick one slot
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return self._up()
            except BaseException:
                self.down()
                raise

    def _up(self) -> Path:
        if not os.path.exists(SSHD):
            raise PreflightError(f"{SSHD} is missing: install openssh-server (setup.sh does)")
        self.dir.mkdir(parents=True, exist_ok=True)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)     # sshd's privilege separation directory
        net = SLOTS[free_slot()]
        hosts = list(net.hosts())
        self.gateway, self.addresses = str(hosts[0]), [str(a) for a in hosts[1:1 + self.count]]
        key = self.dir / "id_ed25519"
        if not key.exists():
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"testbed harness {self.tag}", "-f", str(key))
        # IPv6 off everywhere before a link goes up: nothing may send a packet (a router
        # solicitation, say) to an address outside the underlay
        for ns in self.netns:
            sh("ip", "netns", "add", ns)
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
               "net.ipv6.conf.default.disable_ipv6=1")
        sh("ip", "-batch", "-", input="".join(line + "\n" for line in [
            f"link add {self.bridge} type bridge",
            *(f"link add {veth} type veth peer name ul0 netns {ns}" for ns, veth in zip(self.netns, self.veths))]))
        for dev in (self.bridge, *self.veths):
            Path(f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6").write_text("1")
        sh("ip", "-batch", "-", input="".join(line + "\n" for line in [
            f"addr add {self.gateway}/{net.prefixlen} dev {self.bridge}", f"link set {self.bridge} mtu {UNDERLAY_MTU} up",
            *(f"link set {veth} mtu {UNDERLAY_MTU} master {self.bridge} up" for veth in self.veths)]))
        known = []
        for name, ns, address in zip(self.names, self.netns, self.addresses):
            wdir = self.dir / name
            wdir.mkdir(exist_ok=True)
            sh("ip", "-n", ns, "-batch", "-", input=f"addr add {address}/{net.prefixlen} dev ul0\n"
                                                     f"link set ul0 mtu {UNDERLAY_MTU} up\nlink set lo up\n")
            if not (wdir / "hostkey").exists():
                sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wdir / "hostkey"))
            (wdir / "sshd_config").write_text(SSHD_CONFIG.format(address=address, dir=wdir, keys=f"{key}.pub"))
            sh("ip", "netns", "exec", ns, SSHD, "-f", str(wdir / "sshd_config"))     # it daemonises
            kind, value = (wdir / "hostkey.pub").read_text().split()[:2]
            known.append(f"{address} {kind} {value}")
        (self.dir / "known_hosts").write_text("\n".join(known) + "\n")
        self.inventory_path().write_text(self.inventory_text(key))
        (self.dir / "harness.json").write_text(json.dumps({"tag": self.tag, "count": self.count}))
        self._wait_listening()
        return self.inventory_path()

    def inventory_text(self, key: Path) -> str:
        lines = ["# workers of the one-machine harness " + self.tag, "workers:", "  vars:",
                 "    ansible_user: root",
                 f"    ansible_ssh_private_key_file: {key}",
                 f"    ansible_ssh_common_args: -o UserKnownHostsFile={self.dir / 'known_hosts'} "
                 "-o StrictHostKeyChecking=yes -o ConnectTimeout=5",
                 "    ansible_python_interpreter: /usr/bin/python3",
                 # the workers share this machine's files: the testbed beside this interpreter
                 f"    testbed_exe: {Path(sys.executable).parent / 'testbed'}",
                 f"    testbed_harness: {self.tag}",
                 # the workers share this machine's files: their copies go in the harness's
                 # directory, and down() removes what a worker lost kept
                 f"    testbed_workdir: {self.dir / 'work'}",
                 f"    testbed_coordinator: {self.gateway}       # this machine's underlay address",
                 "  hosts:"]
        for k, (name, address) in enumerate(zip(self.names, self.addresses)):
            lines += [f"    {name}:", f"      ansible_host: {address}", "      testbed_cores: 1",
                      f"      testbed_netns: {self.netns[k]}"]
        return "\n".join(lines) + "\n"

    def _wait_listening(self, timeout: float = 10.0) -> None:
        """Each sshd accepts connections (it daemonises before it listens)."""
        end = time.monotonic() + timeout
        for ns, address in zip(self.netns, self.addresses):
            while f"{address}:22" not in sh("ip", "netns", "exec", ns, "ss", "-Htln"):
                if time.monotonic() > end:
                    raise RunError(f"harness: the sshd of {ns} does not listen on {address}:22")
                time.sleep(0.05)

    def cut(self, k: int) -> None:
        """Worker k (0-based) loses the underlay: its link goes down, as a machine that dies
        or a cable that is pulled; its processes go on."""
        sh("ip", "link", "set", self.veths[k], "down")

    def down(self) -> None:
        for ns in self.netns:
            cleanup.stop_namespace(ns)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        for veth in self.veths:
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
        shutil.rmtree(self.dir / "work", ignore_errors=True)
        (self.dir / "harness.json").unlink(missing_ok=True)


def from_directory(directory: Path) -> Harness:
    """The harness whose files are in `directory` (made by up())."""
    try:
        state = json.loads((Path(directory) / "harness.json").read_text())
        return Harness(int(state["count"]), Path(directory), str(state["tag"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{Path(directory) / 'harness.json'}: not a harness's record ({exc.__class__.__name__})") from None
