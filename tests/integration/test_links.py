"""Delay, jitter, loss and rate changes on real links, made by each shaper the kernel allows.

The userspace element is tested always (it is what runs where sch_netem is absent); netem is
tested where the kernel has it, and skipped with that reason where it does not.
"""
import json
from contextlib import contextmanager
import subprocess
import time

import pytest

from testbed import cleanup, delayer, facts, images, network, runtime
from testbed import calibrate
from testbed.calibrate import binomial_interval
from testbed.plan import plan
from testbed.shaping import NetemShaper, UserspaceShaper
from tests.integration.conftest import nothing_left, small_experiment

PHONE = {"up": "2mbit", "down": "8mbit", "delay": "30ms", "jitter": "5ms", "loss": "2%", "queue": 100}
PEERS = [
    {"name": "phone", "access": PHONE},
    {"name": "jumpy", "access": {**PHONE, "loss": "0%", "reorder": True}},
    {"name": "plain", "access": {"up": "10mbit", "down": "10mbit", "queue": 100}},
]


def phones(run_id: str):
    return plan(small_experiment(peers=PEERS, seeders=[{"name": "origin", "access": {
        "up": "20mbit", "down": "20mbit", "delay": "10ms", "queue": 100}}]), run_id)


@contextmanager
def emulated(docker_client, p, tmp_path, shaper, element: bool = True):
    """The plan's containers and links, with the userspace element if asked; all removed after."""
    mn = elem = None
    try:
        imgs = images.require(docker_client, {h.image for h in p.hosts})
        hosts = runtime.start_containers(docker_client, p, imgs, tmp_path / "hosts")
        pids = {n: h.pid for n, h in hosts.items()}
        mn = network.build(p, pids, shaper)
        if element:
            elem = network.DelayElement(p, pids, tmp_path, seed=5)
            elem.start()
        yield pids, mn, elem
    finally:
        if elem is not None:
            elem.stop()
        if mn is not None:
            mn.stop()
        cleanup.clean(docker_client, p.run_id)
        assert nothing_left(docker_client, p.run_id)


def ping(pid: int, addr: str, count: int, interval: float = 0.01) -> tuple[int, int, float]:
    return calibrate.ping(pid, addr, count, interval, deadline=120)


def udp_out_of_order(pids, p, src: str, dst: str, rate: str = "4M", seconds: int = 3) -> dict:
    ns = lambda h: ["nsenter", f"--net=/proc/{pids[h]}/ns/net"]   # noqa: E731
    server = subprocess.Popen([*ns(dst), "iperf3", "-s", "-1", "-p", "5301", "-J"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    subprocess.run([*ns(src), "iperf3", "-c", p.host(dst).data_ip, "-p", "5301", "-u", "-b", rate, "-l", "1000",
                    "-t", str(seconds)], capture_output=True, timeout=60)
    out, _ = server.communicate(timeout=30)
    stream = json.loads(out)["end"]["streams"][0]["udp"]
    return {"packets": stream["packets"], "out_of_order": stream["out_of_order"], "lost": stream["lost_packets"]}


@pytest.fixture(scope="module")
def userspace(docker_client, tmp_path_factory):
    p = phones("links-20261124-000000-0ddba1")
    with emulated(docker_client, p, tmp_path_factory.mktemp("userspace"), UserspaceShaper()) as (pids, mn, element):
        yield p, pids, mn, element


def test_only_impaired_paths_are_queued_to_userspace(userspace):
    p, pids, _, _ = userspace
    rules = lambda h: subprocess.run(["nsenter", f"--net=/proc/{pids[h]}/ns/net", "iptables-legacy", "-t", "raw",  # noqa: E731
                                      "-S", "PREROUTING"], capture_output=True, text=True).stdout
    assert "-A PREROUTING -i eth0 -j NFQUEUE --queue-num 0" in rules("phone")
    plain = rules("plain")
    # plain's own link is unimpaired: only what the origin, phone and jumpy send it goes through userspace
    queued = sorted(line.split("-s ")[1].split()[0] for line in plain.splitlines() if "NFQUEUE" in line)
    assert queued == sorted(f"{p.host(h).data_ip}/32" for h in ("origin", "phone", "jumpy"))


def test_round_trip_is_the_sum_of_both_paths_delays(userspace):
    p, pids, _, _ = userspace
    # plain -> phone: phone's download 30 ms; reply: phone's upload 30 ms
    _, _, rtt = ping(pids["plain"], p.host("jumpy").data_ip, 100)
    assert abs(rtt - 60) <= 2 + 0.05 * 60, rtt
    # origin -> jumpy: 10 + 30 there, 30 + 10 back
    _, _, rtt = ping(pids["origin"], p.host("jumpy").data_ip, 100)
    assert abs(rtt - 80) <= 2 + 0.05 * 80, rtt


def test_loss_is_random_per_packet_at_the_configured_rate(userspace):
    p, pids, _, _ = userspace
    sent, recv, _ = ping(pids["plain"], p.host("phone").data_ip, 600, 0.005)
    expected = 1 - (1 - 0.02) ** 2         # 2 % on phone's download, 2 % on its upload
    lo, hi = binomial_interval(sent, expected)
    assert lo <= sent - recv <= hi, (sent - recv, lo, hi)


def test_jitter_keeps_a_flow_in_order_unless_reordering_is_asked_for(userspace):
    p, pids, _, _ = userspace
    ordered = udp_out_of_order(pids, p, "plain", "phone")
    assert ordered["packets"] > 1000 and ordered["out_of_order"] == 0, ordered
    reordered = udp_out_of_order(pids, p, "plain", "jumpy")
    assert reordered["out_of_order"] > 0, reordered


def test_a_rate_change_takes_effect_while_the_link_carries_traffic(userspace):
    p, pids, mn, _ = userspace
    control = network.LinkControl(p, pids, UserspaceShaper())
    control.set_rate("plain", "up", 3e6)
    control.set_rate("plain", "down", 1.5e6)
    up = subprocess.run(["nsenter", f"--net=/proc/{pids['plain']}/ns/net", "tc", "class", "show", "dev", "eth0"],
                        capture_output=True, text=True).stdout
    down = subprocess.run(["tc", "class", "show", "dev", control.switch_end["plain"]], capture_output=True,
                          text=True).stdout
    assert "rate 3Mbit ceil 3Mbit" in up and "rate 1500Kbit ceil 1500Kbit" in down


def test_the_element_stops_with_its_counters(userspace):
    p, pids, _, element = userspace
    pid = element.proc.pid
    # the kernel's own count of packets it dropped for a full queue, read in the host's namespace
    assert delayer.queue_overflow(pids["phone"]) == 0
    stats = element.stop()
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0
    assert stats["phone"]["packets"] > 0 and stats["phone"]["dropped"] > 0
    assert 25 <= stats["jumpy"]["mean_added_delay_ms"] <= 45
    assert all(s["overflow"] == 0 for s in stats.values()), stats


@pytest.mark.skipif(not facts.traffic_control()["netem"],
                    reason="this kernel has no sch_netem (testbed doctor); the userspace element is tested instead")
def test_netem_gives_the_same_round_trip(docker_client, tmp_path):
    p = phones("netem-20261124-000000-0ddba2")
    with emulated(docker_client, p, tmp_path, NetemShaper(), element=False) as (pids, _, _):
        _, _, rtt = ping(pids["origin"], p.host("jumpy").data_ip, 100)
        assert abs(rtt - 80) <= 2 + 0.05 * 80, rtt
        sent, recv, _ = ping(pids["plain"], p.host("phone").data_ip, 600, 0.005)
        lo, hi = binomial_interval(sent, 1 - (1 - 0.02) ** 2)
        assert lo <= sent - recv <= hi


def test_core_link_delay_applies_across_the_core_only(docker_client, tmp_path):
    topo = {"sites": ["left", "right"], "core": [{"ends": ["left", "right"], "rate": "50mbit", "delay": "20ms"}]}
    exp = small_experiment(topology=topo, seeders=[{"name": "origin", "site": "left",
                                                     "access": {"up": "20mbit", "down": "20mbit"}}],
                           peers=[{"name": "west", "site": "left", "access": {"up": "10mbit", "down": "10mbit"}},
                                  {"name": "east", "site": "right", "access": {"up": "10mbit", "down": "10mbit"}}])
    p = plan(exp, "core-20261124-000000-0ddba3")
    with emulated(docker_client, p, tmp_path, UserspaceShaper()) as (pids, _, _):
        _, _, across = ping(pids["west"], p.host("east").data_ip, 50)
        _, _, beside = ping(pids["west"], p.host("origin").data_ip, 50)
        assert abs(across - 40) <= 2 + 0.05 * 40, across
        assert beside < 2, beside
