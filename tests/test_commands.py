"""The exact commands and specs the executors will use, asserted without root."""
from pathlib import Path

import pytest
from pytest import approx

from testbed.errors import InputError
from testbed.images import load_image
from testbed.model import parse_experiment
from testbed.plan import Shaping, plan
from testbed.runtime import container_spec
from testbed.shaping import (
    ELEMENT_CAPACITY_PPS,
    HtbShaper,
    NetemShaper,
    UserspaceShaper,
    burst_bytes,
    choose,
    element_load_pps,
    path_impairments,
)
from tests.conftest import experiment_dict


def test_htb_commands_for_a_dsl_uplink():
    assert HtbShaper().commands("eth0", Shaping(384e3, 20)) == [
        "tc qdisc replace dev eth0 root handle 1: htb default 1",
        "tc class replace dev eth0 parent 1: classid 1:1 htb rate 384000bit ceil 384000bit "
        "burst 3028b cburst 3028b quantum 1514",
        "tc qdisc replace dev eth0 parent 1:1 handle 10: pfifo limit 20",
    ]


def test_htb_burst_grows_with_rate():
    assert burst_bytes(100e6) == 50000
    assert burst_bytes(1e6) == 3028


LTE_DOWN = Shaping(9e6, 130, delay_s=0.03, jitter_s=0.005, loss=0.01)


def test_netem_sits_beneath_htb_with_room_for_the_packets_in_flight():
    lines = NetemShaper().commands("tb1s1p2", LTE_DOWN)
    assert lines[:2] == HtbShaper().commands("tb1s1p2", LTE_DOWN)[:2]
    # 9 Mbit/s x 35 ms = 26 frames in flight, + the 130-packet queue, + 1
    # jitter without reorder: netem gets the link rate so it schedules each packet after the last
    assert lines[2] == ("tc qdisc replace dev tb1s1p2 parent 1:1 handle 10: netem limit 158 "
                        "delay 30000us 5000us loss random 1% rate 9000000bit")


def test_netem_reorders_only_when_asked_and_leaves_unimpaired_links_to_pfifo():
    reorder = Shaping(9e6, 130, delay_s=0.03, jitter_s=0.005, reorder=True)
    assert NetemShaper().commands("eth0", reorder)[2].endswith("delay 30000us 5000us")
    lossy = Shaping(570e3, 14, delay_s=0.028, loss=0.0477)
    assert NetemShaper().commands("eth0", lossy)[2].endswith("limit 17 delay 28000us loss random 4.77%")
    assert NetemShaper().commands("eth0", Shaping(1e6, 20))[2] == "tc qdisc replace dev eth0 parent 1:1 handle 10: pfifo limit 20"


def test_userspace_shaper_puts_only_rate_and_queue_in_tc():
    assert UserspaceShaper().commands("eth0", LTE_DOWN) == HtbShaper().commands("eth0", Shaping(9e6, 130))
    assert UserspaceShaper().rate_change("eth0", LTE_DOWN, 2e6) == [
        "tc class change dev eth0 parent 1: classid 1:1 htb rate 2000000bit ceil 2000000bit "
        "burst 3028b cburst 3028b quantum 1514"]
    # netem must follow a rate change too when it carries the rate (jitter, no reorder)
    assert NetemShaper().rate_change("eth0", LTE_DOWN, 2e6)[1].endswith("rate 2000000bit")


def test_auto_takes_netem_where_the_kernel_has_it():
    assert choose("auto", True) is NetemShaper and choose("auto", False) is UserspaceShaper
    assert choose("userspace", True) is UserspaceShaper and choose("netem", False) is NetemShaper


def test_userspace_element_applies_each_path_once_at_its_receiver():
    exp = parse_experiment(experiment_dict(
        seeders=[{"name": "origin", "access": {"profile": "ftth"}}],
        peers=[{"name": "phone", "count": 2, "access": {"profile": "lte", "loss": "1%"}}]))
    p = plan(exp, "t-20261124-120000-0a1b2c")
    tables = path_impairments(p)
    assert sorted(tables) == ["origin", "phone1", "phone2", "tracker"]
    phone1 = tables["phone1"]
    assert phone1["down"] == {"delay": 0.03, "jitter": [0.005], "loss": approx(0.01)}
    # from the origin: its 2 ms upload delay; from the other phone: its LTE upload
    assert phone1["from"][p.host("origin").data_ip] == {"delay": 0.002, "jitter": [], "loss": 0.0}
    assert phone1["from"][p.host("phone2").data_ip] == {"delay": 0.03, "jitter": [0.005], "loss": approx(0.01)}
    assert p.host("phone1").data_ip not in phone1["from"]
    # the tracker's own link is unshaped, but what the phones send it is delayed
    assert tables["tracker"]["down"] == {"delay": 0.0, "jitter": [], "loss": 0.0}


def test_core_link_impairments_apply_only_across_the_core():
    topo = {"sites": ["left", "right"], "core": [{"ends": ["left", "right"], "rate": "20mbit", "delay": "20ms",
                                                  "loss": "1%"}]}
    exp = parse_experiment(experiment_dict(topology=topo, peers=[
        {"name": "west", "site": "left", "access": {"up": "2mbit", "down": "10mbit"}},
        {"name": "east", "site": "right", "access": {"up": "2mbit", "down": "10mbit", "delay": "5ms"}}]))
    p = plan(exp, "t-20261124-120000-0a1b2c")
    tables = path_impairments(p)
    # origin and west share the left site: nothing between them; east is across the core
    assert p.host("origin").data_ip not in tables["west"]["from"]
    assert tables["west"]["from"][p.host("east").data_ip] == {"delay": approx(0.025), "jitter": [], "loss": approx(0.01)}
    assert tables["east"]["from"][p.host("west").data_ip] == {"delay": 0.02, "jitter": [], "loss": approx(0.01)}
    core = next(lk for lk in p.links if lk.kind == "core")
    assert NetemShaper().commands(core.intf1, core.egress1)[2].endswith("delay 20000us loss random 1%")


def test_a_swarm_without_impairments_needs_no_element():
    p = plan(parse_experiment(experiment_dict()), "t-20261124-120000-0a1b2c")
    assert path_impairments(p) == {}


def test_container_spec_is_isolated_and_labelled(tmp_path):
    p = plan(parse_experiment(experiment_dict()), "t-20261124-120000-0a1b2c")
    h = p.host("leecher1")
    spec = container_spec(p, h, load_image("transmission"), tmp_path)
    assert spec["network_mode"] == "none"
    assert spec["cap_drop"] == ["ALL"] and spec["cap_add"] == []
    assert spec["labels"]["testbed.run"] == p.run_id
    assert "privileged" not in spec
    assert spec["read_only"] is True and set(spec["tmpfs"]) == {"/tmp", "/run"}
    assert spec["security_opt"] == ["no-new-privileges"]
    assert list(spec["volumes"]) == [str(tmp_path)]          # its own directory: no Docker socket
    tracker = container_spec(p, p.host("tracker"), load_image("tracker"), tmp_path)
    assert sorted(tracker["cap_add"]) == ["SETGID", "SETUID", "SYS_CHROOT"]


def test_image_recipe_and_tag_are_stable():
    a, b = load_image("transmission"), load_image("transmission")
    assert a.tag == b.tag and a.tag.startswith("testbed/transmission:")
    argv = a.mmdebstrap_argv()
    assert argv[:2] == ["mmdebstrap", "--variant=minbase"]
    assert "transmission-daemon" in argv[2] and "net-tools" in argv[2]
    assert argv[-2:] == ["bookworm", "-"]
    assert a.import_argv()[-1] == a.tag


def test_every_client_has_an_image():
    from testbed.clients import DRIVERS
    for driver in DRIVERS.values():
        assert (Path(__file__).parent.parent / "images" / driver.image / "image.yaml").is_file()


def test_nfqueue_rules_queue_everything_only_where_the_own_download_is_impaired():
    from testbed.shaping import nfqueue_rules
    impaired = {"down": {"delay": 0.03, "jitter": 0.0, "loss": 0.0}, "from": {"198.18.0.3": {}}}
    assert nfqueue_rules(impaired) == [
        ["-t", "raw", "-A", "PREROUTING", "-i", "eth0", "-j", "NFQUEUE", "--queue-num", "0"]]
    clean = {"down": {"delay": 0.0, "jitter": 0.0, "loss": 0.0}, "from": {"198.18.0.9": {}, "198.18.0.3": {}}}
    assert nfqueue_rules(clean) == [
        ["-t", "raw", "-A", "PREROUTING", "-i", "eth0", "-s", f"198.18.0.{n}/32", "-j", "NFQUEUE", "--queue-num", "0"]
        for n in (3, 9)]


def test_the_element_s_load_is_bounded_by_the_swarm_s_rates_and_large_swarms_are_flagged():
    def load(peers, seeder="ftth"):
        exp = parse_experiment(experiment_dict(seeders=[{"name": "origin", "access": {"profile": seeder}}],
                                               peers=peers))
        p = plan(exp, "t-20261124-120000-0a1b2c")
        return element_load_pps(p, path_impairments(p))
    # 40 LTE peers: every upload (40 x 1.5 Mbit/s + the origin's 5) is below every download
    lte = load([{"name": "phone", "count": 40, "access": {"profile": "lte"}}])
    assert lte == approx((40 * 1.5e6 + 5e6) / (1514 * 8) * 1.5)
    assert lte < ELEMENT_CAPACITY_PPS
    # 40 peers on 100 Mbit/s with 5 ms of delay: more than one element passes
    lan = load([{"name": "desk", "count": 40, "access": {"up": "100mbit", "down": "100mbit", "delay": "5ms"}}])
    assert lan > ELEMENT_CAPACITY_PPS
    # a traced link counts at its trace's highest rate
    traced = load([{"name": "car", "count": 2, "access": {"profile": "lte", "down_trace": [
        {"at": "0s", "rate": "1mbit"}, {"at": "5s", "rate": "50mbit"}], "up_trace": [
        {"at": "0s", "rate": "1mbit"}, {"at": "5s", "rate": "50mbit"}]}}])
    assert traced == approx((2 * 50e6 + 5e6) / (1514 * 8) * 1.5)
    # a swarm with no impaired path puts nothing through the element
    p = plan(parse_experiment(experiment_dict()), "t-20261124-120000-0a1b2c")
    assert element_load_pps(p, path_impairments(p)) == 0.0


def test_captures_are_planned_per_member_and_need_tcpdump(monkeypatch):
    from testbed import capture
    from testbed.errors import PreflightError
    d = experiment_dict()
    d["peers"][0]["capture"] = "both"
    p = plan(parse_experiment(d), "t-20261124-120000-0a1b2c")
    assert p.host("leecher1").capture == ("wire", "client") and p.host("origin").capture == ()
    argv = capture.tcpdump_argv("/usr/bin/tcpdump", "client", Path("/x/capture-client.pcap"))
    assert argv[argv.index("-i") + 1] == f"nflog:{capture.NFLOG_GROUP}" and "-n" in argv
    assert all(r[-8:-4] == ["-j", "NFLOG", "--nflog-group", str(capture.NFLOG_GROUP)] for r in capture.nflog_rules())
    assert all(r[-2:] == ["--nflog-threshold", "1"] for r in capture.nflog_rules())    # see nflog_rules
    assert [r[:4] for r in capture.nflog_rules()] == [["-t", "mangle", "-A", "PREROUTING"],
                                                      ["-t", "mangle", "-A", "POSTROUTING"]]
    monkeypatch.setattr(capture.shutil, "which", lambda _: None)
    with pytest.raises(PreflightError, match="tcpdump"):
        capture.require_tcpdump()


def test_an_unknown_capture_point_is_refused_by_name():
    d = experiment_dict()
    d["peers"][0]["capture"] = "everything"
    with pytest.raises(InputError, match=r"peers\[0\]\.capture|capture"):
        parse_experiment(d)


def test_tcpdump_s_own_counts_are_read_from_its_last_words():
    from testbed import capture
    err = ("tcpdump: listening on eth0, link-type EN10MB (Ethernet), snapshot length 256 bytes\n"
           "2621 packets captured\n2690 packets received by filter\n3 packets dropped by kernel\n")
    m = capture.SUMMARY.search(err)
    assert (int(m[1]), int(m[2]), int(m[3])) == (2621, 2690, 3)
    assert capture.Captures({"a": ()}, {}, {}).stop() == {}     # no point asked: nothing started
