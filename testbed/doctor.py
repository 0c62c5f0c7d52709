"""Check-and-fix pairs for every prerequisite (Testground's health checks).

Each check says what it found and, when it fails, the fix: a command to type or, with
--fix, one the doctor applies itself. Required checks fail the doctor; optional ones
(netem) say what the testbed does without them.
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from testbed import facts, images

BRIDGE_SYSCTLS = ["net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
                  "net.bridge.bridge-nf-call-arptables"]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True
    apply: Callable[[], None] | None = None


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def bridge_sysctls_ok() -> tuple[bool, str]:
    on = [k for k in BRIDGE_SYSCTLS if _sysctl_path(k).exists() and _sysctl_path(k).read_text().strip() != "0"]
    if on:
        return False, f"{', '.join(on)} = 1: bridged frames go through iptables, whose FORWARD policy dockerd sets to DROP"
    return True, "bridged frames bypass iptables (or br_netfilter is not loaded)"


def set_bridge_sysctls() -> None:
    for k in BRIDGE_SYSCTLS:
        if _sysctl_path(k).exists():
            _sysctl_path(k).write_text("0\n")


def _docker() -> tuple[bool, str, object]:
    try:
        from testbed.runtime import docker_client
        client = docker_client()
        return True, f"Docker {client.version().get('Version', '?')} answers", client
    except Exception as exc:
        return False, str(exc), None


def checks() -> list[Check]:
    out: list[Check] = []
    root = os.geteuid() == 0
    out.append(Check("root", root, "running as root" if root else "not root: bridges, veths and tc need it",
                     "run testbed with sudo"))
    for tool, pkg in (("mnexec", "mininet"), ("brctl", "bridge-utils"), ("tc", "iproute2"),
                      ("mmdebstrap", "mmdebstrap"), ("dockerd", "docker.io"), ("ethtool", "ethtool"),
                      ("tcpdump", "tcpdump")):
        path = shutil.which(tool)
        out.append(Check(tool, bool(path), path or "not found", f"apt-get install {pkg}  (or ./setup.sh)"))
    ok, detail, client = _docker()
    out.append(Check("docker daemon", ok, detail, "start it: ./setup.sh starts dockerd if none runs"))
    ok, detail = bridge_sysctls_ok()
    out.append(Check("bridge netfilter", ok, detail, "sysctl -w " + " ".join(f"{k}=0" for k in BRIDGE_SYSCTLS),
                     apply=set_bridge_sysctls))
    tc = facts.traffic_control() if root else {"htb": False, "pfifo": False, "netem": False}
    out.append(Check("tc htb", tc["htb"], "HTB qdisc attaches" if tc["htb"] else "HTB qdisc missing",
                     "a kernel with CONFIG_NET_SCH_HTB (modprobe sch_htb)"))
    out.append(Check("tc pfifo", tc["pfifo"], "pfifo qdisc attaches" if tc["pfifo"] else "pfifo missing",
                     "a kernel with CONFIG_NET_SCH_FIFO"))
    out.append(Check("tc netem", tc["netem"],
                     "netem attaches: runs add delay, jitter and loss with sch_netem" if tc["netem"] else
                     "sch_netem is absent from this kernel: runs use the userspace delay element instead "
                     "(recorded in each run's manifest)",
                     "modprobe sch_netem (distribution kernels ship it as a module)", required=False))
    from testbed.run.preflight import delay_element_available
    ok, detail = delay_element_available() if root else (False, "not root")
    shaper = "netem" if tc["netem"] else "userspace"
    out.append(Check("delay element", ok or tc["netem"],
                     (f"NFQUEUE binding and iptables work; links with delay, jitter or loss use: {shaper}" if ok else
                      f"{detail}; links with delay, jitter or loss use: "
                      + ("netem" if tc["netem"] else "nothing (such runs are refused)")),
                     "apt-get install libnetfilter-queue-dev gcc python3-dev, then ./setup.sh", required=False))
    from testbed import wire
    ok, detail = wire.available() if root else (False, "not root")
    out.append(Check("packet filter", ok,
                     detail + ("" if ok else ": runs cannot use connectable: false, and summaries lack wire counters"),
                     "apt-get install iptables (and a kernel with conntrack and string matches)", required=False))
    from testbed import households
    ok, detail = households.available() if root else (False, "not root")
    out.append(Check("home routers", ok, detail + ("" if ok else ": experiments with households cannot run"),
                     "a kernel with iptables NAT, string, connmark and hashlimit matches", required=False))
    from testbed.workers.harness import SSHD
    playbook = shutil.which("ansible-playbook") or str(Path(sys.executable).parent / "ansible-playbook")
    ok = os.path.exists(playbook) and os.path.exists(SSHD) and shutil.which("ssh") is not None
    out.append(Check("workers", ok, "ansible-playbook, ssh and sshd found" if ok else
                     "ansible-playbook, ssh or sshd missing: several machines and their test harness cannot run",
                     "apt-get install openssh-server openssh-client, then ./setup.sh", required=False))
    if client is not None:
        for img in images.all_images():
            built = images.exists(client, img)
            out.append(Check(f"image {img.name}", built, img.tag + (" built" if built else " not built"),
                             "testbed images build", apply=None))
    return out
