"""A run's veths and their settings, made in batches rather than a process per step.

Mininet makes each veth pair with an `ip link add`, then sets each end's address and state
with an `ifconfig` of its own, and each host's loopback with another: about a dozen
processes per host, most of what bring-up cost beyond the containers themselves (1.38 x as
long as as many bare containers at 100 peers). Here:

- every pair of the run is made by one `ip -batch` in the machine's namespace, each end
  created directly in its own namespace (`netns PID`), so nothing is moved afterwards;
- each host's ends are set up (loopback, addresses, up, offloads off, shaping) in one round
  trip to its Mininet shell, a few hosts at a time;
- the switch ends, all in the machine's namespace, in one `ip -batch` and one `tc -batch`.

Mininet still holds the nodes, links and interfaces and runs the switches (network.build).
Shaping needs segmentation offload off: otherwise the qdisc sees 64 KiB super-packets and a
queue of N packets is not N wire packets. Commands are judged by exit status, not output:
with other runs adding links at the same time, tc may warn "Dump was interrupted and may be
inconsistent" on success (seen with three runs in parallel).
"""
from __future__ import annotations

import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from testbed.errors import RunError
from testbed.plan import Plan, Shaping
from testbed.shaping import LinkShaper

OFFLOADS = "tso off gso off gro off"
# A Mininet shell reads commands from a terminal, which cuts lines at 4095 characters.
SHELL_LINE = 4000


def pair_lines(plan: Plan, pids: dict[str, int]) -> list[str]:
    """`ip -batch` lines making every veth pair, each end in its node's namespace (a host's
    container, or the machine's for a switch)."""
    def where(node: str) -> str:
        return f" netns {pids[node]}" if node in pids else ""
    return [f"link add name {lk.intf1}{where(lk.node1)} type veth peer name {lk.intf2}{where(lk.node2)}"
            for lk in plan.links]


def ends(plan: Plan, node: str) -> list[tuple[str, Shaping | None]]:
    """A node's link ends in the plan's order, with the shaping of their egress."""
    out = []
    for lk in plan.links:
        if lk.node1 == node:
            out.append((lk.intf1, lk.egress1))
        if lk.node2 == node:
            out.append((lk.intf2, lk.egress2))
    return out


def host_script(plan: Plan, name: str, shaper: LinkShaper) -> str:
    """One shell line for the host's Mininet shell: its ends' addresses and state, offloads
    and shaping. The data address goes on its first end other than the control one (where
    Mininet put a host's default address)."""
    h = plan.host(name)
    its = ends(plan, name)
    data = next((i for i, _ in its if i != "ctl0"), None)
    ip = ["link set lo up"]
    if data is not None:
        ip.append(f"addr add {h.data_ip}/{h.prefix} dev {data}")
    if any(i == "ctl0" for i, _ in its):
        ip.append(f"addr add {h.ctl_ip}/{plan.control_prefix} dev ctl0")
    ip += [f"link set {i} up" for i, _ in its]
    shaped = [(i, s) for i, s in its if s is not None]
    tc = [line[3:] for i, s in shaped for line in shaper.commands(i, s)]
    steps = [f"printf '%s\\n' {' '.join(map(shlex.quote, ip))} | ip -batch -"]
    if shaped:
        steps += [f"{{ ethtool -K {i} {OFFLOADS} >/dev/null 2>&1 || true; }}" for i, _ in shaped]
        steps.append(f"printf '%s\\n' {' '.join(map(shlex.quote, tc))} | tc -batch -")
    return f"( set -e; {'; '.join(steps)} ) 2>&1; echo tb-rc=$?"


def _run(argv: list[str], lines: list[str], what: str) -> None:
    if not lines:
        return
    r = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True)
    if r.returncode != 0:
        raise RunError(f"{what}: {r.stderr.strip()[:300]}")


def make_pairs(plan: Plan, pids: dict[str, int]) -> None:
    _run(["ip", "-batch", "-"], pair_lines(plan, pids), "making the run's veth pairs")


def configure(plan: Plan, host_nodes: dict, shaper: LinkShaper, workers: int = 8) -> None:
    """Sets up every end: the hosts' through their Mininet shells (host_nodes: name -> node),
    the switches' in the machine's namespace."""
    def host(name: str) -> None:
        script, node = host_script(plan, name, shaper), host_nodes[name]
        if len(script) < SHELL_LINE:
            out, _, rc = node.cmd(script).strip().rpartition("tb-rc=")
        else:       # a router with many ends: past the shell's line, through a process of its own
            r = subprocess.run(["nsenter", "-a", "-t", str(node.container_pid), "bash", "-c", script],
                               capture_output=True, text=True)
            out, _, rc = (r.stdout + r.stderr).strip().rpartition("tb-rc=")
        if rc.strip() != "0":
            raise RunError(f"setting up {name}'s interfaces failed: {out.strip()[:300]}")

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(host, sorted(host_nodes)))
    switch_ends = [e for sw in plan.switches for e in ends(plan, sw.name)]
    for dev, _ in switch_ends:
        # IPv6 is on by default in the machine's namespace: the ends would send router
        # solicitations and MLD reports into the run's bridges. Off before they go up.
        try:
            Path(f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6").write_text("1")
        except OSError:
            pass        # a kernel without IPv6
    _run(["ip", "-batch", "-"], [f"link set {dev} up" for dev, _ in switch_ends], "bringing the switch ends up")
    shaped = [(dev, s) for dev, s in switch_ends if s is not None]
    for dev, _ in shaped:
        subprocess.run(["ethtool", "-K", dev, *OFFLOADS.split()], capture_output=True)
    _run(["tc", "-batch", "-"], [line[3:] for dev, s in shaped for line in shaper.commands(dev, s)],
         "shaping the switch ends")
