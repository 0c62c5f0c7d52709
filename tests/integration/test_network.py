"""The emulated network, brought up without clients: isolation and shaping are real."""
import subprocess
from pathlib import Path

import pytest

from testbed import cleanup, images, network, runtime
from testbed.plan import plan
from testbed.shaping import HtbShaper
from tests.integration.conftest import nothing_left, small_experiment

OUTSIDE = ["8.8.8.8", "1.1.1.1", "10.0.0.1", "172.17.0.1", "192.168.1.1"]


@pytest.fixture(scope="module")
def net(docker_client, tmp_path_factory):
    exp = small_experiment(topology="dumbbell", peers=[
        {"name": "leecher", "count": 2, "client": "transmission", "site": "right",
         "access": {"up": "1mbit", "down": "4mbit", "queue": 50}}])
    p = plan(exp, "net-20261124-000000-0c0ffe")
    imgs = images.require(docker_client, {h.image for h in p.hosts})
    hosts = runtime.start_containers(docker_client, p, imgs, tmp_path_factory.mktemp("hosts"))
    mn = None
    try:
        mn = network.build(p, {n: h.pid for n, h in hosts.items()}, HtbShaper())
        yield p, hosts, mn
    finally:
        if mn is not None:
            mn.stop()
        cleanup.clean(docker_client, p.run_id)
        assert nothing_left(docker_client, p.run_id)


def test_no_host_has_a_route_out(net):
    p, hosts, _ = net
    for h in hosts.values():
        for addr in OUTSIDE:
            code, out = h.exec(["ip", "route", "get", addr])
            assert code != 0 and "unreachable" in out, (h.name, addr, out)
        other = next(o for o in p.hosts if o.name != h.name)
        code, out = h.exec(["ip", "route", "get", other.data_ip])
        assert code == 0 and "dev eth0" in out, out


def test_hosts_have_only_the_emulated_and_control_interfaces(net):
    _, hosts, _ = net
    for h in hosts.values():
        _, out = h.exec(["ls", "/sys/class/net"])
        assert sorted(out.split()) == ["ctl0", "eth0", "lo"]


def test_hosts_reach_each_other_across_the_core(net):
    p, _, mn = net
    # containers lack CAP_NET_RAW; Mininet's node shell has root's privileges in their namespaces
    out = mn.get("origin").cmd("ping -c 1 -W 2", p.host("leecher2").data_ip)
    assert " 0% packet loss" in out, out


def test_shaping_is_installed_in_each_direction(net):
    p, hosts, mn = net
    _, up = hosts["leecher1"].exec(["tc", "class", "show", "dev", "eth0"])
    assert "rate 1Mbit ceil 1Mbit" in up
    link = next(lk for lk in p.links if lk.kind == "access" and lk.node1 == "leecher1")
    down = subprocess.run(["tc", "class", "show", "dev", link.intf2], capture_output=True, text=True).stdout
    assert "rate 4Mbit ceil 4Mbit" in down
    core = next(lk for lk in p.links if lk.kind == "core")
    for dev in (core.intf1, core.intf2):
        out = subprocess.run(["tc", "qdisc", "show", "dev", dev], capture_output=True, text=True).stdout
        assert "pfifo 10: parent 1:1 limit 1000p" in out


def test_uplink_rate_is_enforced(net):
    """A 2 s flood through a 1mbit uplink: the switch receives about 2 Mbit, not more."""
    p, hosts, mn = net
    link = next(lk for lk in p.links if lk.kind == "access" and lk.node1 == "leecher1")
    stats = Path("/sys/class/net") / link.intf2 / "statistics" / "rx_bytes"
    before = int(stats.read_text())
    # flood with ping's big packets for 2 s; the HTB class must hold it to ~1 Mbit/s
    mn.get("leecher1").cmd("ping -f -q -s 1400 -w 2", p.host("leecher2").data_ip)
    sent_bits = (int(stats.read_text()) - before) * 8
    assert sent_bits <= 1.1 * 1e6 * 2 + 8 * 3028 * 2
    assert sent_bits >= 0.5 * 1e6 * 2


def test_the_emulated_network_is_ipv4_only_on_both_sides(net):
    """No IPv6 address on a host's interfaces, nor on the run's bridges and veth ends in the
    machine's namespace: nothing sends router solicitations or MLD reports into the run."""
    p, hosts, _ = net
    for h in hosts.values():
        _, out = h.exec(["ip", "-6", "addr"])
        assert out.strip() == "", (h.name, out)
    out = subprocess.run(["ip", "-6", "-br", "addr"], capture_output=True, text=True).stdout
    assert [line for line in out.splitlines() if line.startswith(f"tb{p.tag}")] == []


def test_a_host_whose_setup_outgrows_the_shell_line_is_set_up_all_the_same(docker_client, tmp_path, monkeypatch):
    """A host's set-up is one line for its Mininet shell, whose terminal cuts lines at 4095
    characters; a longer one (a router with many ends) goes through a process of its own.
    With the limit at 1 character every host takes that way: shaping is in place on its
    end, and hosts reach each other."""
    from testbed import linkbatch
    monkeypatch.setattr(linkbatch, "SHELL_LINE", 1)
    exp = small_experiment(peers=[{"name": "leecher", "count": 2, "client": "transmission",
                                   "access": {"up": "3mbit", "down": "6mbit"}}])
    p = plan(exp, "net-20261124-000000-0c0ff1")
    imgs = images.require(docker_client, {h.image for h in p.hosts})
    hosts = runtime.start_containers(docker_client, p, imgs, tmp_path)
    mn = None
    try:
        mn = network.build(p, {n: h.pid for n, h in hosts.items()}, HtbShaper())
        _, up = hosts["leecher1"].exec(["tc", "class", "show", "dev", "eth0"])
        assert "rate 3Mbit ceil 3Mbit" in up
        _, out = hosts["leecher1"].exec(["ip", "-4", "-br", "addr", "show", "eth0"])
        assert p.host("leecher1").data_ip in out and "UP" in out
        out = mn.get("origin").cmd("ping -c 1 -W 2", p.host("leecher1").data_ip)
        assert " 0% packet loss" in out, out
    finally:
        if mn is not None:
            mn.stop()
        cleanup.clean(docker_client, p.run_id)
        assert nothing_left(docker_client, p.run_id)
