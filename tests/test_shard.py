"""One worker's share of a plan (pure): every worker's own planning agrees on what the swarm is,
the shards partition the hosts and their links, and the stretched sites get one VNI each."""
from pathlib import Path

import pytest

from testbed.model import load_experiment
from testbed.plan import plan
from testbed.plan.placement import Worker, place
from testbed.plan.shard import not_splittable, restrict, shard_run_id, sites, stretched, vni

ROOT = Path(__file__).resolve().parent.parent
RUN = "t-20261126-000000-abcdef"
TWO = [Worker("w1"), Worker("w2")]
FILES = ["quickstart.yaml", "dumbbell.yaml", "households/one-pc.yaml", "churn-faults.yaml",
         "mixed-clients.yaml"]


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
        assert all(lk.kind != "core" for lk in s.links) or w == "w1"
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


@pytest.mark.parametrize("name, why", [("households/one-pc.yaml", "households"),
                                       ("segments/seeding-25.yaml", "households"),
                                       ("quickstart.yaml", None), ("dumbbell.yaml", None)])
def test_what_cannot_be_split_yet_is_said_before_anything_starts(name, why):
    p = plan(load_experiment(ROOT / "experiments" / name), RUN)
    said = not_splittable(p)
    assert (said is None) if why is None else (why in said)


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
