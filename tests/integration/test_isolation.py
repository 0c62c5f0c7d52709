"""Isolation of a running swarm, proven without sending a packet out of the emulated network.

One run with a leecher of every client, a tracker, an origin seeder and a household (its
router and the internet server). While the swarm runs:
- in every container's network namespace, a route lookup (`ip route get`, the host's `ip`
  run by nsenter in the namespace: it asks the kernel which way a packet would go, and sends
  nothing) to every kind of address outside 198.18.0.0/15 fails, and one to the tracker
  succeeds (the lookups can see routes at all);
- the host counts, in its raw table before any routing decision, every packet from the
  emulated network to an address outside it, and every packet the host itself sends from
  such an address: none, over the whole run (each host's own guard drops what its client
  tries, and counts it: deluge's UPnP discovery is such a case);
- every container runs without privileges or capabilities beyond its image's, with no new
  privileges, a read-only root, and no Docker socket mounted.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess

import pytest

from testbed.run import run
from tests.integration.conftest import small_experiment

EMULATED = "198.18.0.0/15"
# outside addresses of every kind: public, the private ranges, Docker's bridge, link-local
# (cloud metadata), just past the emulated block, shared address space (CGNAT), multicast-free
OUTSIDE = ["8.8.8.8", "1.1.1.1", "10.0.0.1", "172.17.0.1", "172.31.255.254", "192.168.1.1",
           "169.254.169.254", "198.20.0.1", "198.17.255.254", "100.64.0.1", "203.0.113.7"]
CLIENTS = ["transmission", "qbittorrent", "aria2", "libtorrent", "rtorrent", "deluge"]
COMMENT = f"tb-isolation-test-{os.getpid()}"
# raw PREROUTING: what the emulated network hands the host for elsewhere; raw OUTPUT: what the
# host itself would send with an emulated source address
RULES = [("PREROUTING", ["-s", EMULATED, "!", "-d", EMULATED]), ("OUTPUT", ["-s", EMULATED, "!", "-d", EMULATED])]


def host_addresses() -> list[str]:
    """The host's own IPv4 addresses outside the emulated block (its uplink's among them)."""
    out = json.loads(subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True).stdout)
    return [a["local"] for link in out for a in link.get("addr_info", [])
            if not ipaddress.ip_address(a["local"]) in ipaddress.ip_network(EMULATED)
            and not a["local"].startswith("127.")]


def route_get(pid: int, addr: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "route", "get", addr],
                          capture_output=True, text=True, timeout=10)


def counted() -> int:
    total = 0
    for chain, _ in RULES:
        out = subprocess.run(["iptables", "-t", "raw", "-L", chain, "-v", "-x", "-n"],
                             capture_output=True, text=True, check=True).stdout
        total += sum(int(line.split()[0]) for line in out.splitlines() if COMMENT in line)
    return total


def rule(action: str) -> None:
    for chain, match in RULES:
        subprocess.run(["iptables", "-t", "raw", action, chain, *match, "-m", "comment", "--comment", COMMENT],
                       capture_output=True, check=action == "-I")


@pytest.fixture(scope="module")
def observed(docker_client, tmp_path_factory):
    exp = small_experiment(
        content={"size": "2MiB"}, seed=5, timeout="4m",
        households=[{"name": "home", "access": {"up": "4mbit", "down": "16mbit"}}],
        peers=[{"name": c[:4], "count": 1, "client": c,
                **({"household": "home"} if c == "transmission" else {"access": {"up": "4mbit", "down": "16mbit"}})}
               for c in CLIENTS])
    seen: dict = {"routes": {}, "containers": {}}

    def look(event: dict) -> None:
        if event.get("kind") != "swarm_start":
            return
        tracker = None
        for c in docker_client.containers.list(filters={"label": "testbed.run"}):
            c.reload()
            pid, host = c.attrs["State"]["Pid"], c.labels.get("testbed.host")
            seen["containers"][host] = c.attrs
            if host == "tracker":
                tracker = pid
            seen["routes"][host] = {a: route_get(pid, a) for a in OUTSIDE + host_addresses()}
        addr = json.loads(subprocess.run(["nsenter", "-t", str(tracker), "-n", "ip", "-j", "-4", "addr", "show",
                                          "eth0"], capture_output=True, text=True).stdout)[0]["addr_info"][0]["local"]
        seen["tracker_addr"] = addr
        seen["to_tracker"] = {h: route_get(attrs["State"]["Pid"], addr) for h, attrs in seen["containers"].items()}

    rule("-I")
    try:
        result = run(exp, tmp_path_factory.mktemp("results"), look)
        seen["leaked"] = counted()
    finally:
        rule("-D")
    seen["result"] = result
    return seen


def test_the_run_completed(observed):
    s = observed["result"].summary
    assert s["status"] == "complete", s["error"]
    assert len(observed["containers"]) >= len(CLIENTS) + 4      # + origin, tracker, router, server


def test_no_container_has_a_route_out(observed):
    assert observed["routes"]
    for host, lookups in observed["routes"].items():
        for addr, r in lookups.items():
            assert r.returncode != 0, f"{host} has a route to {addr}: {r.stdout.strip()}"
            assert "unreachable" in r.stderr.lower(), f"{host} -> {addr}: {r.stderr.strip()}"


def test_the_lookups_see_routes_inside(observed):
    assert ipaddress.ip_address(observed["tracker_addr"]) in ipaddress.ip_network(EMULATED)
    for host, r in observed["to_tracker"].items():
        assert r.returncode == 0, f"{host} cannot route to the tracker: {r.stderr.strip()}"


def test_no_packet_left_for_an_outside_address(observed):
    assert observed["leaked"] == 0


def test_containers_are_unprivileged_with_a_read_only_root(observed):
    for host, attrs in observed["containers"].items():
        hc = attrs["HostConfig"]
        assert hc["Privileged"] is False, host
        assert hc["CapDrop"] == ["ALL"], host
        assert set(hc["CapAdd"] or []) <= {"SYS_CHROOT", "SETUID", "SETGID"}, host   # the tracker's chroot
        assert "no-new-privileges" in hc["SecurityOpt"], host
        assert hc["ReadonlyRootfs"] is True, host
        mounts = [m["Source"] for m in attrs["Mounts"]]
        assert not any("docker.sock" in m or m in ("/var/run", "/run") for m in mounts), (host, mounts)
        assert len(mounts) == 1, (host, mounts)              # its own host directory only


def test_what_a_client_tried_to_send_out_was_dropped_in_its_namespace_and_counted(observed):
    """deluge 2.0.3 creates its libtorrent session with UPnP on, before it applies its own
    `upnp: false`: the session sends SSDP discovery (239.255.255.250) on every interface, and
    the kernel an IGMP report for the group. The guard in its namespace dropped and counted
    them (and the host counted none, above)."""
    blocked = observed["result"].summary["outside_blocked"]
    assert blocked.get("delu", 0) >= 1, blocked
    assert set(blocked) <= set(observed["containers"])
