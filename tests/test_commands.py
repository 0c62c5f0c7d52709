"""The exact commands and specs the executors will use, asserted without root."""
from pathlib import Path

from testbed.images import load_image
from testbed.model import parse_experiment
from testbed.plan import Shaping, plan
from testbed.runtime import container_spec
from testbed.shaping import HtbShaper
from tests.conftest import experiment_dict


def test_htb_commands_for_a_dsl_uplink():
    assert HtbShaper().commands("eth0", Shaping(384e3, 20)) == [
        "tc qdisc replace dev eth0 root handle 1: htb default 1",
        "tc class replace dev eth0 parent 1: classid 1:1 htb rate 384000bit ceil 384000bit "
        "burst 3028b cburst 3028b quantum 1514",
        "tc qdisc replace dev eth0 parent 1:1 handle 10: pfifo limit 20",
    ]


def test_htb_burst_grows_with_rate():
    assert HtbShaper.burst_bytes(100e6) == 50000
    assert HtbShaper.burst_bytes(1e6) == 3028


def test_container_spec_is_isolated_and_labelled(tmp_path):
    p = plan(parse_experiment(experiment_dict()), "t-20261124-120000-0a1b2c")
    h = p.host("leecher1")
    spec = container_spec(p, h, load_image("transmission"), tmp_path)
    assert spec["network_mode"] == "none"
    assert spec["cap_drop"] == ["ALL"] and spec["cap_add"] == []
    assert spec["labels"]["testbed.run"] == p.run_id
    assert "privileged" not in spec
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
