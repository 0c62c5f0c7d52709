import pytest

from testbed.plan.bounds import kumar_ross_t_min
from testbed.model import parse_experiment
from testbed.plan import plan, run_tag
from tests.conftest import experiment_dict

RUN = "t-20261124-120000-0a1b2c"


def make(**over):
    return plan(parse_experiment(experiment_dict(**over)), RUN)


def test_hosts_roles_and_unique_addresses():
    p = make()
    assert [h.role for h in p.hosts] == ["tracker", "seeder"] + ["leecher"] * 4
    assert [h.name for h in p.hosts][1:] == ["origin", "leecher1", "leecher2", "leecher3", "leecher4"]
    assert len({h.data_ip for h in p.hosts}) == len(p.hosts)
    assert len({h.ctl_ip for h in p.hosts} | {p.control_gateway}) == len(p.hosts) + 1
    assert all(h.data_ip.startswith("198.18.") and h.ctl_ip.startswith("198.19.") for h in p.hosts)


def test_everything_carries_the_run_identity():
    p = make()
    assert all(h.container == f"tb-{RUN}-{h.name}" for h in p.hosts)
    root_ns_names = [s.device for s in p.switches] + [link.intf2 for link in p.links]
    assert all(n.startswith("tb0a1b2c") and len(n) <= 15 for n in root_ns_names)
    assert len(set(root_ns_names)) == len(root_ns_names)


def test_access_link_shapes_upload_on_host_side_and_download_on_switch_side():
    p = make()
    link = next(lk for lk in p.links if lk.kind == "access" and lk.node1 == "leecher1")
    assert (link.intf1, link.node2) == ("eth0", "s1")
    assert link.egress1.rate_bps == 2e6 and link.egress2.rate_bps == 10e6
    assert link.egress1.queue_pkts == 50


def test_dumbbell_core_link_and_sites():
    d = experiment_dict(topology="dumbbell")
    d["peers"][0]["site"] = "right"
    p = plan(parse_experiment(d), RUN)
    core = [lk for lk in p.links if lk.kind == "core"]
    assert len(core) == 1 and core[0].egress1.rate_bps == 20e6 == core[0].egress2.rate_bps
    assert {h.site for h in p.by_role("leecher")} == {"right"}
    assert p.host("origin").site == "left"


def test_kumar_ross_bound():
    p = make()
    F = 4 * 2**20 * 8
    assert p.t_min_s == pytest.approx(max(F / 20e6, F / 10e6, 4 * F / (20e6 + 4 * 2e6)))
    assert p.peer_t_min_s["leecher1"] == pytest.approx(F / 10e6)


def test_kumar_ross_terms():
    # seed-limited, download-limited and capacity-limited cases each dominate in turn
    assert kumar_ross_t_min(1000, 8, [1e9], [1e9]) == pytest.approx(1000.0)
    assert kumar_ross_t_min(1000, 1e9, [1e9], [8]) == pytest.approx(1000.0)
    assert kumar_ross_t_min(1000, 8, [0, 0], [1e9, 1e9]) == pytest.approx(2000.0)


def test_timeline_is_a_flash_crowd():
    p = make()
    assert {(e.kind, e.t) for e in p.timeline} == {("arrive", 0.0)}
    assert sorted(e.host for e in p.timeline) == ["leecher1", "leecher2", "leecher3", "leecher4", "origin"]
    assert p.t_min_s is not None


def test_plan_is_deterministic_and_immutable():
    a, b = make(), make()
    assert a == b
    with pytest.raises(Exception):
        a.hosts[0].name = "x"


def test_run_tag():
    assert run_tag(RUN) == "0a1b2c"
    with pytest.raises(ValueError):
        run_tag("no-tag")


def test_summed_is_the_pointwise_sum_at_every_step():
    """The sweep against the definition: at each step time, the sum of each series' last rate."""
    import random

    from testbed.plan.bounds import summed
    rng = random.Random(4)
    many = [tuple(sorted({(float(rng.randrange(0, 50)), rng.choice([0.0, 1e3, 2.5e6, 7e6])) for _ in range(20)}
                         | {(0.0, 1e6)}, key=lambda x: x[0])) for _ in range(12)]
    many = [tuple({t: r for t, r in s}.items()) for s in many]        # one rate per time, as traces give

    def at(s, t):
        return next(r for t0, r in reversed(s) if t0 <= t)
    got = summed(*many)
    assert [t for t, _ in got] == sorted({t for s in many for t, _ in s})
    for t, r in got:
        assert r == pytest.approx(sum(at(s, t) for s in many), abs=1e-3)
    assert summed(((0.0, 1.0), (2.0, 3.0)), ((0.0, 5.0), (1.0, 0.0))) == ((0.0, 6.0), (1.0, 1.0), (2.0, 3.0))
