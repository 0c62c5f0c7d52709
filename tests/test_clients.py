"""Each driver's written configuration, without starting anything: discovery off, knobs mapped."""
from pathlib import Path

import pytest

from testbed.clients import DRIVERS
from testbed.model import Behaviour


class FakeHost:
    name = "p1"
    data_ip = "198.18.0.5"
    ctl_ip = "198.19.0.6"
    container_dir = "/tb"

    def __init__(self, tmp: Path):
        self.host_dir = tmp
        (tmp / "config").mkdir()

    def exec(self, argv, detach=False):
        raise AssertionError("configure() must not start anything")


@pytest.mark.parametrize("name", list(DRIVERS))
def test_configuration_is_written_and_returned(tmp_path, name):
    settings = DRIVERS[name](FakeHost(tmp_path)).configure()
    assert settings and any((tmp_path / "config").iterdir())


def test_discovery_is_off_everywhere(tmp_path):
    d = {n: DRIVERS[n](FakeHost(tmp_path / n)) for n in DRIVERS if (tmp_path / n).mkdir() is None}
    assert d["transmission"].settings()["dht-enabled"] is False and d["transmission"].settings()["lpd-enabled"] is False
    assert d["qbittorrent"].preferences()["dht"] is False and d["qbittorrent"].preferences()["upnp"] is False
    assert d["aria2"].options()["enable-dht"] == "false" and d["aria2"].options()["enable-peer-exchange"] == "false"
    assert d["libtorrent"].settings()["enable_dht"] is False and d["libtorrent"].settings()["enable_upnp"] is False
    assert d["rtorrent"].settings()["dht.mode.set"] == "disable" and d["rtorrent"].settings()["protocol.pex.set"] == "no"
    core = d["deluge"].core_settings()
    assert core["dht"] is False and core["new_release_check"] is False and core["upnp"] is False


def test_upload_cap_in_each_clients_unit(tmp_path):
    b = Behaviour(upload_limit="800kbit")
    caps = {}
    for n in DRIVERS:
        (tmp_path / n).mkdir()
        caps[n] = DRIVERS[n](FakeHost(tmp_path / n), b).configure()
    assert caps["transmission"]["speed-limit-up"] == 100 and caps["transmission"]["speed-limit-up-enabled"]
    assert caps["qbittorrent"]["up_limit"] == 100000
    assert caps["aria2"]["max-overall-upload-limit"] == "100000"
    assert caps["libtorrent"]["upload_rate_limit"] == 100000
    assert caps["rtorrent"]["throttle.global_up.max_rate.set_kb"] == "98"
    assert caps["deluge"]["max_upload_speed"] == pytest.approx(97.65625)


def _configs(tmp_path, **knobs) -> dict:
    b = Behaviour(**knobs)
    out = {}
    for n in DRIVERS:
        (tmp_path / n).mkdir()
        out[n] = DRIVERS[n](FakeHost(tmp_path / n), b).configure()
    return out


def test_connection_limit_in_each_clients_terms(tmp_path):
    c = _configs(tmp_path, max_connections=3)
    assert c["transmission"]["peer-limit-per-torrent"] == 3
    assert c["qbittorrent"]["max_connec_per_torrent"] == 3
    assert c["aria2"]["bt-max-peers"] == "3"
    assert c["libtorrent"]["connections_limit"] == 3
    assert c["rtorrent"]["throttle.max_peers.normal.set"] == "3" == c["rtorrent"]["throttle.max_peers.seed.set"]
    assert c["deluge"]["max_connections_per_torrent"] == 3


def test_upload_slots_in_each_clients_terms(tmp_path):
    drivers = {n: d for n, d in DRIVERS.items() if "upload_slots" not in d.unsupported}
    assert set(DRIVERS) - set(drivers) == {"aria2"}
    b = Behaviour(upload_slots=2)
    c = {}
    for n, d in drivers.items():
        (tmp_path / n).mkdir()
        c[n] = d(FakeHost(tmp_path / n), b).configure()
    assert c["transmission"]["upload-slots-per-torrent"] == 2
    assert c["qbittorrent"]["max_uploads_per_torrent"] == 2
    assert c["libtorrent"]["unchoke_slots_limit"] == 2
    assert c["rtorrent"]["throttle.max_uploads.set"] == "2"
    assert c["deluge"]["max_upload_slots_per_torrent"] == 2 == c["deluge"]["max_upload_slots_global"]


def test_require_encryption_in_each_clients_terms(tmp_path):
    c = _configs(tmp_path, encryption="require")
    assert c["transmission"]["encryption"] == 2
    assert c["qbittorrent"]["encryption"] == 1
    assert c["aria2"]["bt-require-crypto"] == "true"
    assert c["libtorrent"]["out_enc_policy"] == 0 == c["libtorrent"]["in_enc_policy"]
    assert c["rtorrent"]["protocol.encryption.set"].endswith(",require,require_RC4")
    assert c["deluge"]["enc_in_policy"] == 0 == c["deluge"]["enc_out_policy"]


def test_unset_knobs_leave_client_defaults(tmp_path):
    c = _configs(tmp_path)
    assert "encryption" not in c["transmission"] and "upload-slots-per-torrent" not in c["transmission"]
    assert "protocol.encryption.set" not in c["rtorrent"] and "unchoke_slots_limit" not in c["libtorrent"]
