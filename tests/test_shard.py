"""One worker's share of a plan (pure): every worker's own planning agrees on what the swarm is,
the shards partition the hosts and their links, and the stretched sites get one VNI each."""
from pathlib import Path

import pytest

from testbed.model import load_experiment, parse_experiment
from testbed.plan import plan
from testbed.plan.placement import Worker, place
from testbed.plan.shard import core_workers, not_splittable, restrict, shard_run_id, sites, stretched, vni

ROOT = Path(__file__).resolve().parent.parent
RUN = "t-20261126-000000-abcdef"
TWO = [Worker("w1"), Worker("w2")]
FILES = ["quickstart.yaml", "dumbbell.yaml", "households/one-pc.yaml", "churn-faults.yaml",
         "mixed-clients.yaml", "segments/seeding-25.yaml"]


def same_swarm(h):
    return (h.name, h.role, h.client, h.site, h.data_ip, h.up, h.down, h.behaviour, h.home, h.shares_netns)


@pytest.mark.parametrize("name", FILES)
def test_each_worker_plans_the_same_swarm_under_its_own_identity(name):
    exp = load_experiment(ROOT / "experiments" / name)
    whole = plan(exp, RUN)
    for w in ("w1", "w2"):
        rid = shard_run_id(RUN, w)
        p = plan(exp, rid)
        assert p.tag != whole.tag and rid.endswith(p.tag) and f"-{w}-" in rid
        assert [same_swarm(h) for h in p.hosts] == [same_swarm(h) for h in whole.hosts]
        assert p.seeds == whole.seeds and p.timeline == whole.timeline and p.t_min_s == whole.t_min_s
        assert all(whole.tag not in s.device for s in p.switches)
    assert shard_run_id(RUN, "w1") != shard_run_id(RUN, "w2")


@pytest.mark.parametrize("name", FILES)
def test_shards_partition_the_hosts_and_their_links(name):
    whole = plan(load_experiment(ROOT / "experiments" / name), RUN)
    at = place(whole, TWO)
    shards = {w.name: restrict(whole, at, w.name, "w1") for w in TWO}
    hosts = [h.name for s in shards.values() for h in s.hosts]
    assert sorted(hosts) == sorted(h.name for h in whole.hosts)
    assert sorted(hosts) == sorted(set(hosts))
    for w, s in shards.items():
        names = {h.name for h in s.hosts}
        assert all(at[n] == w for n in names)
        assert {e.host for e in s.timeline} <= names
        switch_names = {sw.name for sw in s.switches}
        for lk in s.links:                      # every link's ends exist on the worker
            ends = (lk.node1, lk.node2)
            assert all(e in names or e in switch_names for e in ends), (w, lk)
        cores = core_workers(whole, at, "w1")
        assert all(cores[(lk.node1, lk.node2)] == w for lk in s.links if lk.kind == "core")
        for home in s.homes:
            assert set(home.members) <= names
    links = [lk for s in shards.values() for lk in s.links if lk.kind != "control"]
    assert sorted(map(repr, links)) == sorted(repr(lk) for lk in whole.links if lk.kind != "control")


def test_a_site_on_two_workers_is_stretched_with_one_vni_each():
    whole = plan(load_experiment(ROOT / "experiments" / "dumbbell.yaml"), RUN)
    at = place(whole, TWO)
    assert set(at.values()) == {"w1", "w2"}
    s = stretched(whole, at, "w1", RUN)
    assert s, "a dumbbell split over two workers stretches a site"
    assert all(ws == ["w1", "w2"] for _, ws in s.values())
    vnis = [v for v, _ in s.values()]
    assert len(set(vnis)) == len(vnis) and all(1 <= v < 1 << 24 for v in vnis)
    # the first worker holds the core links, so it has every site they touch
    shard1 = restrict(whole, at, "w1", "w1")
    assert set(sites(whole)) <= {sw.name for sw in shard1.switches}
    # a site every one of whose hosts is on one worker, and no core link, is not stretched
    alone = {h.name: "w1" for h in whole.hosts}
    assert stretched(whole, alone, "w1", RUN) == {}


def test_vni_is_the_run_tag_and_the_site():
    assert vni(RUN, 0) == (0xabcdef & 0xFFFFF) << 4 | 1
    assert vni(RUN, 3) == (0xabcdef & 0xFFFFF) << 4 | 4
    # a tag whose 20 bits are 0: still no VNI 0, and every site its own
    assert [vni("x-000000", k) for k in range(15)] == list(range(1, 16))
    with pytest.raises(ValueError):
        vni(RUN, 15)


@pytest.mark.parametrize("name", ["households/one-pc.yaml", "segments/seeding-25.yaml", "quickstart.yaml",
                                  "dumbbell.yaml"])
def test_households_segments_and_small_topologies_can_be_split(name):
    assert not_splittable(plan(load_experiment(ROOT / "experiments" / name), RUN)) is None


# two homes on an ISP segment with a congestion policy, one with a protocol policy, one
# elsewhere with background traffic; the tracker and the origin at the ISP's core
HOMES = {
    "name": "homes", "seed": 5, "content": {"size": "4MiB"},
    "topology": {"generator": "isp", "isps": [{"name": "isp", "segments": 1, "homes": 2, "subscribed_up": "2mbit",
                                               "subscribed_down": "8mbit", "oversubscription": 2}]},
    "tracker": {"site": "isp"},
    "households": [
        {"name": "seg", "count": 2, "site": "isp1", "access": {"up": "2mbit", "down": "8mbit"}, "probe": "1s",
         "background": {"up": "100kbit"}},
        {"name": "far", "site": "isp", "access": {"up": "2mbit", "down": "8mbit"}, "probe": None,
         "background": {"up": "200kbit", "down": "1mbit"}}],
    "seeders": [{"name": "origin", "client": "transmission", "site": "isp", "access": {"up": "4mbit", "down": "8mbit"}}],
    "peers": [{"name": "s", "count": 2, "client": "transmission", "household": "seg"},
              {"name": "f", "client": "transmission", "household": "far"}],
    "policies": [{"segment": "isp1", "congestion": {"window": "5s", "check_every": "1s"}},
                 {"household": "seg", "protocol": {"action": "block"}}],
}


def homes_split():
    whole = plan(parse_experiment(HOMES), RUN)
    routers = {h.name for h in whole.hosts if h.site == "isp1"}
    seg = routers | {h.name for h in whole.hosts if h.home in routers}
    assert seg == {"seg1", "seg2", "s1", "s2"}, seg
    at = {h.name: "w2" if h.name in seg else "w1" for h in whole.hosts}      # the far home with the server
    return whole, at, {w: restrict(whole, at, w, "w1") for w in ("w1", "w2")}


def test_a_segment_s_aggregation_link_and_congestion_policy_live_with_its_homes():
    whole, at, shards = homes_split()
    link = next(lk for lk in whole.links if lk.kind == "core" and "isp1" in (lk.node1, lk.node2))
    assert core_workers(whole, at, "w1")[(link.node1, link.node2)] == "w2"
    assert link in shards["w2"].links and link not in shards["w1"].links
    assert [sp.segment for sp in shards["w2"].segment_policies] == ["isp1"] and not shards["w1"].segment_policies
    # every subscriber the policy acts on is a host of the same shard
    names = {h.name for h in shards["w2"].hosts}
    assert {sub[0] for sub in shards["w2"].segment_policies[0].subscribers} <= names
    # the segment's site is only where its hosts and its link are: not stretched
    assert "isp1" not in stretched(whole, at, "w1", RUN)
    # a protocol policy acts in the routers of this worker's homes only
    assert [pp.routers for pp in shards["w2"].protocol_policies] == [("seg1", "seg2")]
    assert shards["w1"].protocol_policies == ()


def test_a_shard_s_homes_reach_the_tracker_and_server_on_the_first_worker_by_address():
    whole, at, shards = homes_split()
    server = next(h for h in whole.hosts if h.role == "server")
    assert at[server.name] == "w1" and place(whole, TWO)[server.name] == "w1"     # placement pins it
    w1, w2 = shards["w1"], shards["w2"]
    assert w2.server_ip == server.data_ip and w2.tracker_ip == whole.host("tracker").data_ip
    assert not any(h.role in ("server", "tracker") for h in w2.hosts)
    # the server's shard listens for the other worker's homes' background (seg1 and seg2: up
    # only); the far home, beside it, is served as any home of its own shard
    ports = sorted(p for home in whole.homes if home.name != "far"
                   for p, rate in zip(home.iperf_ports, (home.background.up, home.background.down)) if rate is not None)
    assert sorted(w1.served_ports) == ports and len(ports) == 2
    assert [h.name for h in w1.homes] == ["far"] and w2.served_ports == ()


def test_a_host_without_a_worker_is_refused():
    whole = plan(load_experiment(ROOT / "experiments" / "quickstart.yaml"), RUN)
    at = place(whole, TWO)
    at.pop(whole.hosts[-1].name)
    with pytest.raises(ValueError, match=whole.hosts[-1].name):
        restrict(whole, at, "w1", "w1")


def test_the_first_worker_keeps_the_core_links_and_their_sites_even_without_hosts_there():
    whole = plan(load_experiment(ROOT / "experiments" / "dumbbell.yaml"), RUN)
    home = whole.host("tracker").site
    at = {h.name: "w1" if h.site == home else "w2" for h in whole.hosts}
    far = set(sites(whole)) - {home}
    assert far and not any(h.site in far for h in whole.hosts if at[h.name] == "w1")
    shard1, shard2 = (restrict(whole, at, w, "w1") for w in ("w1", "w2"))
    assert {lk.kind for lk in shard1.links} >= {"core"} and "core" not in {lk.kind for lk in shard2.links}
    assert far <= {sw.name for sw in shard1.switches}
    assert set(stretched(whole, at, "w1", RUN)) == far


@pytest.mark.parametrize("name", ["metered-lte.yaml", "lte-trace.yaml", "households/one-pc.yaml"])
def test_a_shard_s_receivers_get_the_same_path_impairments_as_in_the_whole_swarm(name):
    """The userspace element of each shard impairs the paths into its receivers as one
    machine would: the senders and core links on the other worker count too."""
    from testbed.shaping import path_impairments
    whole = plan(load_experiment(ROOT / "experiments" / name), RUN)
    at = place(whole, TWO)
    full = path_impairments(whole)
    assert any(t["from"] for t in full.values()), "the experiment has impaired paths"
    crossed = False
    for w in ("w1", "w2"):
        shard = restrict(whole, at, w, "w1")
        mine = path_impairments(shard, whole)
        assert mine == {n: t for n, t in full.items() if at[n] == w}
        # without the whole plan, the paths from the other worker's senders would be lost
        remote = {h.data_ip for h in whole.hosts if at[h.name] != w}
        if any(set(t["from"]) & remote for t in mine.values()):
            crossed = True
            assert path_impairments(shard) != mine
    assert crossed or name == "households/one-pc.yaml"      # one PC's home and peers share a worker
