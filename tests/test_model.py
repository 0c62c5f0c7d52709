import pytest
import yaml

from testbed.errors import InputError
from testbed.model import load_experiment, parse_experiment, resolved_yaml
from tests.conftest import ROOT, experiment_dict


def error_of(data) -> str:
    with pytest.raises(InputError) as exc:
        parse_experiment(data, "exp.yaml")
    assert exc.value.exit_code == 2
    return str(exc.value)


def test_shipped_experiments_validate():
    from testbed.model.study import is_study, load_study
    studies = 0
    for path in (ROOT / "experiments").rglob("*.yaml"):
        if is_study(path):
            studies += 1
            assert len(load_study(path).arms) >= 2
        else:
            assert load_experiment(path).name
    assert studies >= 5


def test_units_are_parsed_and_topology_resolved(exp_dict):
    exp = parse_experiment(exp_dict)
    assert exp.content.size == 4 * 2**20
    assert exp.peers[0].access.up == 2e6
    assert exp.timeout == 120
    assert exp.topology.sites == ["s1"]


def test_resolved_config_round_trips(exp_dict):
    exp = parse_experiment(exp_dict)
    again = parse_experiment(yaml.safe_load(resolved_yaml(exp)))
    assert again == exp


def test_unknown_key_is_named_with_a_suggestion(exp_dict):
    exp_dict["peers"][0]["acess"] = exp_dict["peers"][0].pop("access")
    msg = error_of(exp_dict)
    assert "unknown key 'peers[0].acess'" in msg and "did you mean 'access'" in msg


def test_unknown_top_level_key():
    assert "unknown key 'seedz'" in error_of(experiment_dict(seedz=1))


def test_bad_unit_names_the_key(exp_dict):
    exp_dict["seeders"][0]["access"]["up"] = "20mbits"
    msg = error_of(exp_dict)
    assert msg.startswith("exp.yaml: seeders[0].access.up:") and "'20mbits' is not a rate" in msg


def test_negative_rate(exp_dict):
    exp_dict["peers"][0]["access"]["down"] = "-1mbit"
    assert error_of(exp_dict).startswith("exp.yaml: peers[0].access.down: must be a rate from 8kbit to 10gbit")


def test_unknown_client(exp_dict):
    exp_dict["peers"][0]["client"] = "utorrent"
    assert "peers[0].client: unknown client 'utorrent'" in error_of(exp_dict)


def test_unknown_topology():
    msg = error_of(experiment_dict(topology="ring"))
    assert "topology: unknown topology 'ring'" in msg and "star" in msg


def test_unknown_site_reference():
    d = experiment_dict(topology="dumbbell")
    d["peers"][0]["site"] = "middle"
    assert "peers[0].site: unknown site 'middle'" in error_of(d)


def test_duplicate_group_names(exp_dict):
    exp_dict["peers"][0]["name"] = "origin"
    assert "peers[0].name" in error_of(exp_dict)


def test_missing_key():
    d = experiment_dict()
    del d["content"]
    assert error_of(d) == "exp.yaml: missing required key 'content'"


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(InputError, match=r"x.yaml: not valid YAML at line"):
        load_experiment(p)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such experiment file"):
        load_experiment(tmp_path / "nope.yaml")


def test_inline_topology():
    d = experiment_dict(topology={"sites": ["a", "b"], "core": [{"ends": ["a", "b"], "rate": "5mbit"}]})
    assert parse_experiment(d).topology.core[0].rate == 5e6


@pytest.mark.parametrize("client", ["aria2", "rtorrent", "deluge"])
def test_a_knob_the_client_cannot_honour_is_refused(exp_dict, client):
    exp_dict["peers"][0]["client"] = client
    exp_dict["peers"][0]["behaviour"] = {"utp": False}
    msg = error_of(exp_dict)
    assert msg.startswith("exp.yaml: peers[0].behaviour.utp: ") and "cannot be set" in msg


@pytest.mark.parametrize("client", ["transmission", "aria2", "rtorrent", "deluge"])
def test_utp_only_is_refused_where_tcp_cannot_be_turned_off(exp_dict, client):
    exp_dict["peers"][0]["client"] = client
    exp_dict["peers"][0]["behaviour"] = {"utp": "only"}
    msg = error_of(exp_dict)
    assert msg.startswith("exp.yaml: peers[0].behaviour.utp: ") and "cannot be set" in msg


@pytest.mark.parametrize("client", ["libtorrent", "qbittorrent"])
def test_utp_only_is_taken_where_tcp_can_be_turned_off(exp_dict, client):
    exp_dict["peers"][0]["client"] = client
    exp_dict["peers"][0]["behaviour"] = {"utp": "only"}
    assert parse_experiment(exp_dict).peers[0].behaviour.utp == "only"


def test_rate_caps_are_parsed(exp_dict):
    exp_dict["peers"][0]["behaviour"] = {"upload_limit": "200kbit", "utp": False}
    assert parse_experiment(exp_dict).peers[0].behaviour.upload_limit == 200e3


@pytest.mark.parametrize("value,policy", [
    ("forever", ("forever", None)), ("stop", ("stop", None)),
    ({"duration": "2m"}, ("duration", 120.0)), ({"ratio": 1.5}, ("ratio", 1.5))])
def test_seeding_policies(exp_dict, value, policy):
    exp_dict["peers"][0]["behaviour"] = {"seeding": value}
    assert parse_experiment(exp_dict).peers[0].behaviour.seeding_policy() == policy


@pytest.mark.parametrize("behaviour,key,words", [
    ({"seeding": "sometimes"}, "peers[0].behaviour.seeding", "forever"),
    ({"seeding": {"duration": "soon"}}, "peers[0].behaviour.seeding.duration", "duration"),
    ({"seeding": {"ratio": 0}}, "peers[0].behaviour.seeding.ratio", "positive"),
    ({"max_connections": 0}, "peers[0].behaviour.max_connections", "from 1 to 65535"),
    ({"upload_slots": -2}, "peers[0].behaviour.upload_slots", "from 1 to 65535"),
    ({"encryption": "maybe"}, "peers[0].behaviour.encryption", "require"),
    ({"connectable": "no way"}, "peers[0].behaviour.connectable", "bool"),
])
def test_bad_knob_values_are_named(exp_dict, behaviour, key, words):
    exp_dict["peers"][0]["behaviour"] = behaviour
    msg = error_of(exp_dict)
    assert msg.startswith(f"exp.yaml: {key}") and words in msg, msg


def test_a_seeder_cannot_stop_on_completion(exp_dict):
    exp_dict["seeders"][0]["behaviour"] = {"seeding": "stop"}
    assert error_of(exp_dict).startswith("exp.yaml: seeders[0].behaviour.seeding: a seeder that stops")


@pytest.mark.parametrize("client,behaviour,knob", [
    ("aria2", {"upload_slots": 2}, "upload_slots"),
    ("aria2", {"encryption": "disable"}, "encryption"),
    ("transmission", {"encryption": "disable"}, "encryption")])
def test_a_knob_value_the_client_cannot_honour_is_refused(exp_dict, client, behaviour, knob):
    exp_dict["peers"][0]["client"] = client
    exp_dict["peers"][0]["behaviour"] = behaviour
    msg = error_of(exp_dict)
    assert msg.startswith(f"exp.yaml: peers[0].behaviour.{knob}: {client}") and "cannot be set" in msg


def test_every_client_takes_require_and_prefer(exp_dict):
    from testbed.clients import DRIVERS
    for client in DRIVERS:
        for mode in ("require", "prefer"):
            exp_dict["peers"][0].update(client=client, behaviour={"encryption": mode, "max_connections": 3})
            parse_experiment(exp_dict)


def test_client_builds_are_resolved_hashed_and_checked(tmp_path, exp_dict):
    import hashlib
    (tmp_path / "td").write_bytes(b"\x7fELF new build")
    digest = hashlib.sha256(b"\x7fELF new build").hexdigest()
    exp_dict["peers"][0]["build"] = {"binary": "td"}
    exp = parse_experiment(exp_dict, "e.yaml", tmp_path)
    assert exp.peers[0].build.sha256 == digest and exp.peers[0].build.binary == str(tmp_path / "td")
    from testbed.plan import plan
    p = plan(exp, "x-000001")
    assert p.host("leecher1").image == p.host("leecher2").image != p.host("origin").image
    assert p.builds[p.host("leecher1").image]["dest"] == "/usr/bin/transmission-daemon"
    for build, msg in [({"binary": "td", "package": "x.deb"}, "exactly one of image, binary or package"),
                       ({"binary": "missing"}, "cannot read"),
                       ({"package": "td"}, "must be a Debian package file"),
                       ({"binary": "td", "sha256": "0" * 64}, "not the one written")]:
        exp_dict["peers"][0]["build"] = build
        assert msg in _bad_at(exp_dict, tmp_path)
    exp_dict["peers"][0]["client"] = "deluge"
    exp_dict["peers"][0]["build"] = {"binary": "td"}
    assert "deluge has no single executable" in _bad_at(exp_dict, tmp_path)


def _bad_at(data, base_dir) -> str:
    with pytest.raises(InputError) as exc:
        parse_experiment(data, "e.yaml", base_dir)
    return str(exc.value)
