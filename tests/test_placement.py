"""Placement of one swarm's hosts on several workers (pure): what must stay together does,
the origin and tracker stay with the coordinator, and the load is spread by the greedy's bound."""
from pathlib import Path

from hypothesis import given, settings, strategies as st

from testbed.model import load_experiment, parse_experiment
from testbed.plan import plan
from testbed.plan.placement import Worker, load, loads, place, units, with_placement

ROOT = Path(__file__).resolve().parent.parent
TWO = [Worker("w1"), Worker("w2")]


def flash(n: int, clients=("transmission",)):
    return plan(parse_experiment({
        "name": "t", "content": {"size": "16MiB"},
        "seeders": [{"name": "origin", "access": {"up": "20mbit", "down": "20mbit"}}],
        "peers": [{"name": f"p{c[:2]}", "count": n, "client": c, "access": {"up": "1mbit", "down": "8mbit"}}
                  for c in clients]}), "t-20261126-000000-abcdef")


def test_households_and_one_pc_clients_stay_on_one_worker():
    for name in ("one-pc.yaml", "two-clients-one-link.yaml"):
        p = plan(load_experiment(ROOT / "experiments/households" / name), "h-20261126-000000-abcdef")
        at = place(p, TWO)
        for h in p.hosts:
            if h.home:
                assert at[h.name] == at[h.home], (name, h.name)
            if h.shares_netns:
                assert at[h.name] == at[h.shares_netns], (name, h.name)


def test_an_isp_segment_stays_on_one_worker():
    p = plan(load_experiment(ROOT / "experiments/segments/seeding-50.yaml"), "s-20261126-000000-abcdef")
    assert p.segment_sites
    at = place(p, TWO + [Worker("w3")])
    on = {site: {at[h.name] for h in p.hosts if h.site == site} for site in p.segment_sites}
    assert any(on.values()) and all(len(w) <= 1 for w in on.values()), on
    # a home seeder is a peer: placed with its household, not pinned to the coordinator
    homes = {at[h.name] for h in p.hosts if h.home} | {at[h.home] for h in p.hosts if h.home}
    assert len(homes) == 1


def test_the_origin_and_tracker_stay_with_the_coordinator_and_peers_are_spread():
    p = flash(40)
    at = place(p, TWO)
    assert at["tracker"] == at["origin"] == "w1"
    per = loads(p, at)
    one = load(p.by_role("leecher")[0], p.content_bytes)
    assert abs(per["w1"] - per["w2"]) <= max(one, load(p.host("origin"), p.content_bytes) + one)
    assert place(p, TWO) == at                        # the same input, the same placement
    assert {h.name: h.machine for h in with_placement(p, at).hosts} == at


def test_a_bigger_worker_takes_more():
    p = flash(40)
    at = place(p, [Worker("big", cores=3), Worker("small", cores=1)])
    n_big = sum(1 for h in p.by_role("leecher") if at[h.name] == "big")
    assert 27 <= n_big <= 33                          # about three quarters of 40


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=30), st.integers(min_value=1, max_value=30),
       st.integers(min_value=1, max_value=5))
def test_the_greedy_keeps_workers_within_one_unit_of_each_other(n_tr, n_ar, k):
    """Least-loaded-first: at the end no worker is more than the heaviest unit (or what was
    pinned on the first) above the least loaded."""
    p = plan(parse_experiment({
        "name": "t", "content": {"size": "16MiB"},
        "seeders": [{"name": "origin", "access": {"up": "20mbit", "down": "20mbit"}}],
        "peers": [{"name": "tr", "count": n_tr, "client": "transmission", "access": {"up": "1mbit", "down": "8mbit"}},
                  {"name": "ar", "count": n_ar, "client": "aria2", "access": {"up": "1mbit", "down": "8mbit"}}]}),
        "t-20261126-000000-abcdef")
    workers = [Worker(f"w{i}") for i in range(1, k + 1)]
    at = place(p, workers)
    assert set(at) == {h.name for h in p.hosts}
    per = {w.name: 0.0 for w in workers} | loads(p, at)
    heaviest = max(sum(load(p.host(n), p.content_bytes) for n in u) for u in units(p))
    pinned = load(p.host("origin"), p.content_bytes) + load(p.host("tracker"), p.content_bytes)
    assert max(per.values()) - min(per.values()) <= max(heaviest, pinned) + 1e-9
