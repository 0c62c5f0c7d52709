"""Households, ISP segments and policies: the model, the plan and the pure command builders."""
from __future__ import annotations

import ipaddress

import pytest

from testbed import households
from testbed.errors import InputError
from testbed.model import parse_experiment
from testbed.model.homes import IspTopology, ProtocolPolicy, Rfc6057
from testbed.plan import plan
from testbed.plan.homes import HomePlan, SegmentPolicyPlan
from testbed.run import segments
from tests.conftest import experiment_dict

RUN = "t-20260101-000000-abcdef"


def homes_dict(**over):
    d = experiment_dict(
        households=[{"name": "home", "count": 2, "access": {"up": "2mbit", "down": "8mbit"}},
                    {"name": "pc", "one_pc": True, "access": {"up": "1mbit", "down": "4mbit"}}],
        peers=[{"name": "a", "count": 2, "client": "transmission", "household": "home", "forward": True},
               {"name": "b", "client": "aria2", "household": "home", "behaviour": {"listen_port": 51414},
                "forward": True},
               {"name": "l", "client": "libtorrent", "household": "pc", "behaviour": {"listen_port": "default"}},
               {"name": "r", "client": "aria2", "household": "pc", "behaviour": {"listen_port": "default"}},
               {"name": "out", "count": 2, "access": {"up": "2mbit", "down": "8mbit"}}])
    d.update(over)
    return d


def test_the_isp_generator_sizes_aggregation_links_from_the_oversubscription():
    gen = IspTopology.model_validate({
        "generator": "isp", "isps": [
            {"name": "cable", "segments": 2, "homes": 8, "subscribed_up": "1mbit", "subscribed_down": "6mbit",
             "oversubscription": 3.7, "down_oversubscription": 4},
            {"name": "dsl", "homes": 4, "subscribed_up": "384kbit", "subscribed_down": "1.5mbit",
             "oversubscription": 2}],
        "transit": {"rate": "20mbit", "delay": "10ms"}})
    exp = parse_experiment(experiment_dict(topology=gen.model_dump(mode="json")))
    topo = exp.topology
    assert topo.sites == ["cable", "cable1", "cable2", "dsl", "dsl1"]
    links = {tuple(c.ends): c for c in topo.core}
    assert links[("cable1", "cable")].rate == pytest.approx(8 * 1e6 / 3.7)
    assert links[("cable1", "cable")].reverse_rate == pytest.approx(8 * 6e6 / 4)
    assert links[("dsl1", "dsl")].rate == pytest.approx(4 * 384e3 / 2)
    assert links[("dsl1", "dsl")].reverse_rate == pytest.approx(4 * 1.5e6 / 2)
    assert links[("cable", "dsl")].delay == pytest.approx(0.01)
    assert topo.segment("cable2").oversubscription == 3.7 and topo.segment("cable") is None


@pytest.mark.parametrize("change, key", [
    ({"oversubscription": 0.5}, "isps[0].oversubscription"),
    ({"homes": 0}, "isps[0].homes"),
    ({"subscribed_up": "0mbit"}, "isps[0].subscribed_up"),
])
def test_bad_generator_parameters_are_named(change, key):
    isp = {"name": "cable", "homes": 8, "subscribed_up": "1mbit", "subscribed_down": "6mbit", "oversubscription": 4}
    with pytest.raises(InputError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_experiment(experiment_dict(topology={"generator": "isp", "isps": [{**isp, **change}]}))


def test_the_shipped_isp_topologies_load():
    from testbed.model import load_topology
    assert load_topology("cable-docsis", "x", None).segment("cable1").homes == 8
    assert len(load_topology("two-isps", "x", None).segments) == 4


@pytest.mark.parametrize("over, key", [
    ({"peers": [{"name": "a", "household": "nohome"}]}, "peers[0].household"),
    ({"peers": [{"name": "a", "household": "home", "access": {"up": "1mbit", "down": "1mbit"}}]}, "peers[0].access"),
    ({"peers": [{"name": "a", "access": {"up": "1mbit", "down": "1mbit"}, "forward": True}]}, "peers[0].forward"),
    ({"peers": [{"name": "a", "household": "home", "forward": True},
                {"name": "b", "household": "home", "forward": True}]}, "peers[1].forward"),
    ({"peers": [{"name": "a"}]}, "peers[0].access"),
    ({"policies": [{"segment": "s1", "congestion": {}}]}, "policies[0].segment"),
    ({"policies": [{"household": "home", "protocol": {"action": "throttle"}}]}, "policies[0].protocol.rate"),
    ({"policies": [{"household": "home", "congestion": {}}]}, "policies[0].congestion"),
    ({"policies": [{"household": "home"}]}, "policies[0]"),
    ({"households": [{"name": "home", "access": {"up": "1mbit", "down": "1mbit"}, "probe": "50ms"}]},
     "households[0].probe"),
    ({"households": [{"name": "home", "access": {"up": "1mbit", "down": "1mbit"}, "background": {"on": "5s"}}]},
     "households[0].background"),
    ({"households": [{"name": "leecher", "access": {"up": "1mbit", "down": "1mbit"}}]}, "households[0].name"),
    ({"peers": [{"name": "internet", "access": {"up": "1mbit", "down": "1mbit"}}]}, "peers[0].name"),
    ({"households": [{"name": "home", "count": 2, "access": {"up": "1mbit", "down": "1mbit"}},
                     {"name": "home1", "access": {"up": "1mbit", "down": "1mbit"}}]}, "households[1].name"),
    ({"policies": [{"household": "home", "protocol": {"action": "block"}},
                   {"household": "home", "protocol": {"action": "reset"}}]}, "policies[1].protocol"),
    ({"peers": [{"name": "a", "count": 70, "household": "home"}]}, "households[0].count"),
])
def test_bad_households_and_policies_are_refused_naming_the_key(over, key):
    d = experiment_dict(households=[{"name": "home", "access": {"up": "1mbit", "down": "1mbit"}}])
    d.update(over)
    with pytest.raises(InputError) as err:
        parse_experiment(d)
    assert f": {key}: " in str(err.value), str(err.value)


def test_segment_policies_are_checked_against_the_run():
    topo = {"generator": "isp", "isps": [{"name": "isp", "homes": 2, "subscribed_up": "1mbit",
                                          "subscribed_down": "4mbit", "oversubscription": 2}]}
    with pytest.raises(InputError, match=r"policies\[0\]\.congestion\.window: is not shorter than the run"):
        parse_experiment(experiment_dict(topology=topo, policies=[{"segment": "isp1", "congestion": {}}]))
    with pytest.raises(InputError, match=r"policies\[0\]\.protocol: segment 'isp1' has no household"):
        parse_experiment(experiment_dict(topology=topo, policies=[{"segment": "isp1",
                                                                   "protocol": {"action": "block"}}]))
    with pytest.raises(InputError, match=r"policies\[1\]\.segment: .* already has a congestion policy"):
        parse_experiment(experiment_dict(topology=topo, policies=[{"segment": "isp1", "congestion": {"window": "5s"}},
                                                                  {"segment": "isp1", "congestion": {"window": "5s"}}]))


def test_a_misspelt_key_gets_a_suggestion_even_where_nothing_is_missing():
    with pytest.raises(InputError, match="did you mean 'household'"):
        parse_experiment(experiment_dict(peers=[{"name": "a", "houshold": "home"}]))


def test_the_plan_puts_members_behind_their_router_with_addresses_of_the_benchmark_range():
    p = plan(parse_experiment(homes_dict()), RUN)
    hosts = {h.name: h for h in p.hosts}
    bench = ipaddress.ip_network("198.18.0.0/15")
    private = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
    for h in p.hosts:
        addr = ipaddress.ip_address(h.data_ip)
        assert addr in bench and not any(addr in n for n in private)
    # member i of a group lives in home i mod count; routers carry the home's link
    assert hosts["a1"].home == "home1" and hosts["a2"].home == "home2" and hosts["b"].home == "home1"
    assert hosts["home1"].role == "router" and hosts["home1"].up.rate_bps == 2e6
    assert hosts["a1"].up is None and hosts["a1"].gateway == p.home("home1").lan_ip
    nets = [ipaddress.ip_network(h.lan_net) for h in p.homes]
    assert all(a.overlaps(b) is False for i, a in enumerate(nets) for b in nets[i + 1:])
    assert all(ipaddress.ip_address(hosts[m].data_ip) in ipaddress.ip_network(h.lan_net)
               for h in p.homes for m in h.members)
    assert p.home("home1").forwards == ("a1", "b")
    # one PC: one namespace, one address, separate control ports
    assert hosts["r"].shares_netns == "l" and hosts["r"].data_ip == hosts["l"].data_ip
    assert hosts["l"].rpc_port != hosts["r"].rpc_port
    kinds = {(lk.kind, lk.node1) for lk in p.links}
    assert ("access", "r") not in kinds and ("lan", "pc") in kinds and ("access", "home1") in kinds
    assert hosts["internet"].role == "server"
    assert p.t_min_s is None


def test_clients_behind_nat_are_not_delay_element_receivers():
    from testbed.shaping import path_impairments
    d = homes_dict()
    d["households"][0]["access"]["delay"] = "20ms"
    tables = path_impairments(plan(parse_experiment(d), RUN))
    assert "a1" not in tables and "a2" not in tables         # the router delays for its LAN
    assert tables["home1"]["down"]["delay"] == pytest.approx(0.02)
    assert tables["out1"]["from"][p_home1_ip(d)]["delay"] == pytest.approx(0.02)   # the home's upload delay


def p_home1_ip(d):
    return plan(parse_experiment(d), RUN).host("home1").data_ip


def test_router_and_forward_commands():
    home = HomePlan("home", "home", "s1", "198.18.128.0/26", "198.18.128.1", "home.lan", False)
    lines = [" ".join(a) for a in households.router_commands(home, "198.18.0.3")]
    assert "ip addr add 198.18.128.1/26 dev lan0" in lines
    assert any("-t nat -A POSTROUTING -o eth0 -j MASQUERADE" in x for x in lines)
    fwd = [" ".join(a) for a in households.forward_commands(home, "198.18.0.3", "198.18.128.2", 51413)]
    assert any("-d 198.18.0.3 -p tcp --dport 51413" in x and "--to-destination 198.18.128.2:51413" in x for x in fwd)
    assert any("-p udp" in x and "DNAT" in x for x in fwd)
    assert any("-s 198.18.128.0/26 -d 198.18.128.2" in x and "MASQUERADE" in x for x in fwd)   # hairpin


@pytest.mark.parametrize("action, target", [("block", "DROP"), ("reset", "REJECT"), ("throttle", "hashlimit")])
def test_protocol_policies_match_the_plaintext_handshake_and_count_each_action(action, target):
    rule = ProtocolPolicy(action=action, rate="64kbit" if action == "throttle" else None)
    lines = [" ".join(a) for a in households.policy_commands(rule)]
    assert lines[0].endswith("-i lan0 -o lan0 -j RETURN") and lines[1].endswith("-i lan0 -o lan0 -j RETURN")
    assert "|13|BitTorrent protocol" in lines[2] and "dpi_recognised" in lines[2]
    assert any(target in x and "--comment dpi_" in x for x in lines[3:])
    if action == "throttle":
        assert any("--hashlimit-above 8000b/s" in x for x in lines)


def test_parse_ping_gives_swarm_times():
    text = ("PING 198.18.0.2 (198.18.0.2) 56(84) bytes of data.\n"
            "[1700000000.500000] 64 bytes from 198.18.0.2: icmp_seq=1 ttl=64 time=12.3 ms\n"
            "[1700000001.000000] no answer yet for icmp_seq=2\n")
    assert households.parse_ping(text, 1700000000.0) == [(0.5, 1, 12.3)]


def test_the_rfc6057_tree_and_marks():
    lines = segments.tree_commands("tbx", 4e6, 100)
    assert any("classid 1:10 htb rate 4000000bit ceil 4000000bit prio 0" in x for x in lines)
    assert any("classid 1:20 htb rate 8000bit ceil 4000000bit prio 7" in x for x in lines)
    assert "htb default 10" in lines[1]
    assert "match ip src 198.18.0.3/32 flowid 1:20" in segments.mark_command("tbx", "add", 200, "src", "198.18.0.3")
    assert segments.mark_command("tbx", "del", 200, "src", "x").startswith("tc filter del dev tbx parent 1:")


class _Rows:
    def __init__(self):
        self.rows = []

    def row(self, table, row):
        self.rows.append(row)

    def event(self, kind, **fields):
        return {"kind": kind, **fields}


def test_rfc6057_marks_a_heavy_user_only_while_the_port_is_congested_and_releases_it(monkeypatch):
    """The manager's decisions from counter readings (the tc commands are recorded, not run)."""
    ran = []
    monkeypatch.setattr(segments, "_tc", ran.append)
    p = plan(parse_experiment(experiment_dict(
        topology={"generator": "isp", "isps": [{"name": "isp", "homes": 2, "subscribed_up": "2mbit",
                                                "subscribed_down": "8mbit", "oversubscription": 2}]},
        households=[{"name": "h", "count": 2, "site": "isp1", "access": {"up": "2mbit", "down": "8mbit"}}],
        peers=[{"name": "a", "count": 2, "household": "h"}],
        policies=[{"segment": "isp1", "congestion": {"window": "5s"}}])), RUN)
    pol = p.segment_policies[0]
    assert isinstance(pol, SegmentPolicyPlan) and pol.up_rate_bps == 2e6 and len(pol.subscribers) == 2
    rd = _Rows()
    m = segments.CongestionManager(p, pol, rd, lambda e: None, lambda: 0.0)
    port, h1, h2 = m.dev["up"], m.access["h1"], m.access["h2"]
    # h1 sends 1.8 Mbit/s (90 % of its 2 Mbit/s), h2 0.2: the 2 Mbit/s port is full
    for t in range(0, 8):
        m.check(float(t), {port: (0, int(t * 2e6 / 8), 0, 0), h1: (int(t * 1.8e6 / 8), 0, 0, 0),
                           h2: (int(t * 0.2e6 / 8), 0, 0, 0)})
    assert [(r["host"], r["action"], r["direction"]) for r in rd.rows] == [("h1", "mark", "up")]
    assert any("match ip src" in x and pol.subscribers[0][1] in x for x in ran)
    # h1 falls to 20 %: released once its window average is below 50 %
    base = (int(7 * 1.8e6 / 8), int(7 * 2e6 / 8))
    for t in range(8, 20):
        k = t - 7
        m.check(float(t), {port: (0, base[1] + int(k * 0.6e6 / 8), 0, 0), h1: (base[0] + int(k * 0.4e6 / 8), 0, 0, 0),
                           h2: (int(t * 0.2e6 / 8), 0, 0, 0)})
    assert [(r["host"], r["action"]) for r in rd.rows] == [("h1", "mark"), ("h1", "unmark")]


def test_rfc6057_leaves_a_heavy_user_alone_while_the_port_is_not_congested_and_watches_downstream(monkeypatch):
    monkeypatch.setattr(segments, "_tc", lambda line: None)
    p = plan(parse_experiment(experiment_dict(
        topology={"generator": "isp", "isps": [{"name": "isp", "homes": 4, "subscribed_up": "2mbit",
                                                "subscribed_down": "2mbit", "oversubscription": 1}]},
        households=[{"name": "h", "count": 2, "site": "isp1", "access": {"up": "2mbit", "down": "2mbit"}}],
        peers=[{"name": "a", "count": 2, "household": "h"}],
        policies=[{"segment": "isp1", "congestion": {"window": "5s"}}])), RUN)
    rd = _Rows()
    m = segments.CongestionManager(p, p.segment_policies[0], rd, lambda e: None, lambda: 0.0)
    up, down, h1 = m.dev["up"], m.dev["down"], m.access["h1"]
    # h1 uploads at 90 % of its rate, but the 8 Mbit/s port is only 22 % full: no mark
    for t in range(0, 8):
        m.check(float(t), {up: (0, int(t * 1.8e6 / 8), 0, 0), down: (0, 0, 0, 0), h1: (int(t * 1.8e6 / 8), 0, 0, 0)})
    assert rd.rows == []
    # downstream: h1 receives 1.9 Mbit/s (95 %) while the port carries 7 of 8 (above 80 %): marked down
    for t in range(8, 16):
        k = t - 7
        m.check(float(t), {up: (0, 0, 0, 0), down: (0, int(k * 7e6 / 8), 0, 0),
                           h1: (int(7 * 1.8e6 / 8), int(k * 1.9e6 / 8), 0, 0)})
    assert [(r["host"], r["direction"], r["action"]) for r in rd.rows] == [("h1", "down", "mark")]


def test_rfc6057_defaults_are_the_rfc_s():
    r = Rfc6057()
    assert (r.port_threshold, r.down_port_threshold, r.user_threshold, r.release_threshold, r.window) == \
        (0.70, 0.80, 0.70, 0.50, 900.0)


def test_households_json_has_the_rtt_of_probes_written_at_teardown(tmp_path):
    """The routers' probes are written to probes.csv as the carriers stop, after the last
    tick flushed the tables: the household summary must still see every one of them."""
    import types

    from testbed.results import RunDir
    from testbed.run.homes import home_summary
    p = plan(parse_experiment(experiment_dict(
        topology={"generator": "isp", "isps": [{"name": "isp", "homes": 2, "subscribed_up": "2mbit",
                                                "subscribed_down": "8mbit", "oversubscription": 2}]},
        households=[{"name": "h", "count": 2, "site": "isp1", "access": {"up": "2mbit", "down": "8mbit"}}],
        peers=[{"name": "a", "count": 2, "household": "h"}])), RUN)
    rd = RunDir(tmp_path / "run")
    try:
        home = p.homes[0].name
        for seq in range(40):
            rd.row("probes", {"t": seq, "home": home, "seq": seq, "rtt_ms": 20 + seq % 5})
        got = home_summary(types.SimpleNamespace(plan=p, rd=rd), None, {}, 40.0)
        rtt = next(h for h in got["homes"] if h["name"] == home)["rtt"]
        assert rtt["answered"] == 40 and rtt["min_ms"] == 20 and rtt["max_ms"] == 24
    finally:
        rd.close()
