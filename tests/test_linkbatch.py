"""The batched bring-up's commands (pure): every pair made with each end in its namespace,
and each host's one line setting its ends up."""
from testbed import linkbatch
from testbed.model import parse_experiment
from testbed.plan import plan
from testbed.shaping import HtbShaper


def small():
    return plan(parse_experiment({
        "name": "t", "content": {"size": "1MiB"},
        "seeders": [{"name": "origin", "access": {"up": "20mbit", "down": "20mbit"}}],
        "peers": [{"name": "peer", "count": 3, "access": {"up": "1mbit", "down": "8mbit"}}]}),
        "t-20261126-000000-abcdef")


def test_every_link_is_one_pair_made_where_its_ends_live():
    p = small()
    pids = {h.name: 1000 + i for i, h in enumerate(p.hosts)}
    lines = linkbatch.pair_lines(p, pids)
    assert len(lines) == len(p.links)
    for lk, line in zip(p.links, lines):
        words = line.split()
        assert words[:3] == ["link", "add", "name"] and words[3] == lk.intf1
        assert ("netns" in words[:6]) == (lk.node1 in pids)          # a switch end stays here
        assert words[words.index("peer") + 2] == lk.intf2


def test_a_hosts_line_sets_its_addresses_and_shapes_its_upload():
    p = small()
    h = p.host("peer1")
    script = linkbatch.host_script(p, "peer1", HtbShaper())
    assert f"addr add {h.data_ip}/{h.prefix} dev eth0" in script
    assert f"addr add {h.ctl_ip}/{p.control_prefix} dev ctl0" in script
    assert "link set lo up" in script and "link set eth0 up" in script and "link set ctl0 up" in script
    assert "ethtool -K eth0 tso off gso off gro off" in script and "ethtool -K ctl0" not in script
    assert "htb" in script and script.endswith("echo tb-rc=$?")
    assert len(script) < linkbatch.SHELL_LINE
