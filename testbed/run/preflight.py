"""Checks made when a run starts, before anything is created: root, tools, the kernel's
facilities the plan needs, and the images. Each failure is one sentence (exit 2).

Also the bring-up lock: concurrent runs choose their control-network block by looking at
the machine's routes, so the choice and the route's creation happen under one lock.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from testbed import facts, images, runtime, shaping, wire
from testbed.errors import PreflightError, RunError
from testbed.run.hostload import mem_available
from testbed.plan import CONTROL_BLOCKS, CONTROL_NET, Plan, control_block, resources

BRINGUP_LOCK = "/run/lock/testbed-bringup.lock" if os.path.isdir("/run/lock") else "/tmp/testbed-bringup.lock"


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


def machine_fits(plan_: Plan, results_root: Path) -> str | None:
    """Refuses a run whose memory or disk the machine does not have, with the numbers; returns
    a warning when the swarm would need more CPU than the machine has to go as fast as its
    links allow (it still runs, slower; host.csv and the summary say how busy the machine was)."""
    need = resources.needs(plan_)
    mib = resources.MIB
    available = mem_available() or None
    if available is not None and need.memory_bytes > 0.9 * available:
        raise PreflightError(f"the run needs about {need.memory_bytes / mib:.0f} MiB of memory "
                             f"({need.describe()}), and this machine has {available / mib:.0f} MiB available "
                             "(90 % of it may be used): run fewer peers or free memory")
    root = results_root if results_root.exists() else results_root.parent
    while not root.exists() and root != root.parent:
        root = root.parent
    st = os.statvfs(root)
    free = st.f_bavail * st.f_frsize
    if need.disk_bytes > 0.95 * free:
        raise PreflightError(f"the run needs about {need.disk_bytes / mib:.0f} MiB of disk under {root} (a copy "
                             f"of the {plan_.content_bytes / mib:.1f} MiB content for each of "
                             f"{sum(need.clients.values())} clients and the origin's), and {free / mib:.0f} MiB "
                             "is free: make the content smaller or free disk")
    cores = os.cpu_count() or 1
    for h in plan_.hosts:
        if h.cpus is not None and h.cpus > cores:
            raise PreflightError(f"group '{h.group}': limits.cpus is {h.cpus:g}, and this machine has {cores} "
                                 "cores (Docker refuses more)")
    if need.cores_at_bound is not None and need.cores_at_bound > cores:
        return (f"at the Kumar-Ross pace the clients would need about {need.cores_at_bound:.1f} cores "
                f"({need.cpu_s:.0f} CPU-seconds over {plan_.t_min_s:.0f} s) and this machine has {cores}: "
                "expect the machine, not the links, to set the pace")
    return None


def preflight(plan_: Plan, client) -> dict[str, images.Image]:
    if not runtime.is_root():
        raise PreflightError("testbed run needs root (it creates bridges, veths and tc qdiscs); run it with sudo")
    for tool in ("mnexec", "brctl", "tc", "ip"):
        if not shutil.which(tool):
            raise PreflightError(f"'{tool}' is not installed; run ./setup.sh (or: testbed doctor)")
    if plan_.switch == "ovs" and not ovs_available():
        raise PreflightError("topology.switch: ovs is asked for, but Open vSwitch is not available here "
                             "(needs ovs-vsctl and the openvswitch kernel module); use switch: linuxbridge")
    shaper_cls = shaping.choose(plan_.shaper, facts.traffic_control()["netem"])
    if plan_.shaper == "netem" and not facts.traffic_control()["netem"]:
        raise PreflightError("shaper: netem is asked for, but this kernel has no sch_netem (modprobe sch_netem "
                             "fails); use shaper: auto or userspace (see testbed doctor)")
    impaired = any(s is not None and s.impaired for lk in plan_.links for s in (lk.egress1, lk.egress2))
    if impaired and shaper_cls.userspace_element:
        ok, why = delay_element_available()
        if not ok:
            raise PreflightError(f"links with delay, jitter or loss need netem or the userspace delay element, "
                                 f"and neither works here: {why} (see testbed doctor)")
    ok, why = wire.available()
    if not ok:
        raise PreflightError(f"every host needs a packet filter in its namespace (the guard that keeps its "
                             f"packets inside, and the peers' wire counters), which does not work here: {why} "
                             f"(see testbed doctor)")
    if plan_.homes:
        from testbed import households
        ok, why = households.available()
        if not ok:
            raise PreflightError(f"households need NAT and packet-filter rules in each router's namespace, "
                                 f"which do not work here: {why} (see testbed doctor)")
    if any(h.capture for h in plan_.hosts):
        from testbed import capture
        capture.require_tcpdump()
    return images.require(client, {h.image for h in plan_.hosts}, plan_.builds)


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
