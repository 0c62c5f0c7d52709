"""Churn in the model and the plan: named random streams, draws checked statistically,
participation mixes, and validation of what churn files may say. Pure."""
import math
import socket

import numpy as np
import pytest
from scipy import stats

from testbed.errors import InputError
from testbed.model import parse_experiment
from testbed.model.churn import Decaying, Exponential, Lognormal, Poisson, Weibull
from testbed.plan import plan
from testbed.plan import draws
from testbed.results import write_plan
from tests.conftest import experiment_dict

RUN = "t-20261124-120000-0a1b2c"
CHURN = {"name": "leecher", "count": 30, "access": {"up": "1mbit", "down": "4mbit"},
         "arrivals": {"kind": "poisson", "rate": "6/min"},
         "participation": [{"profile": "hit_and_run", "share": "30%"},
                           {"profile": "intermittent", "share": "70%",
                            "session": {"dist": "weibull", "shape": 0.38, "scale": "42.4m"}}]}


def timeline_csv(seed=7, repetition=1, tmp=None) -> bytes:
    p = plan(parse_experiment(experiment_dict(seed=seed, peers=[CHURN], timeout="30m")), RUN,
             repetition=repetition)
    write_plan(tmp, p)
    return (tmp / "timeline.csv").read_bytes()


def test_same_seed_same_timeline_byte_for_byte_and_different_otherwise(tmp_path):
    dirs = [tmp_path / str(i) for i in range(4)]
    for d in dirs:
        d.mkdir()
    a, b = timeline_csv(tmp=dirs[0]), timeline_csv(tmp=dirs[1])
    assert a == b and a.count(b"\n") > 40
    assert timeline_csv(seed=8, tmp=dirs[2]) != a
    assert timeline_csv(repetition=2, tmp=dirs[3]) != a


def test_streams_are_independent_by_purpose_and_repetition():
    x = draws.stream(1, 1, "arrivals/a").random(5)
    assert not np.allclose(x, draws.stream(1, 1, "arrivals/b").random(5))
    assert not np.allclose(x, draws.stream(1, 2, "arrivals/a").random(5))
    assert np.allclose(x, draws.stream(1, 1, "arrivals/a").random(5))
    assert draws.derived_seed(1, 1, "content") != draws.derived_seed(1, 2, "content")


@pytest.mark.parametrize("dist,cdf", [
    (Exponential(dist="exponential", mean="120s"), stats.expon(scale=120).cdf),
    (Weibull(dist="weibull", shape=0.38, scale="42.4m"), stats.weibull_min(0.38, scale=42.4 * 60).cdf),
    (Lognormal(dist="lognormal", median=f"{math.exp(4.9) * 60:.6f}s", sigma=1.6),
     stats.lognorm(1.6, scale=math.exp(4.9) * 60).cdf),
])
def test_durations_follow_their_distribution(dist, cdf):
    # Kolmogorov-Smirnov on 400 draws at the 0.1 % level: a correct sampler fails it with
    # probability 0.001 per seed; the seeds are fixed, so this test is deterministic.
    values = draws.durations(dist, 400, draws.stream(3, 1, "ks"))
    assert stats.kstest(values, cdf).pvalue > 0.001


def test_poisson_gaps_are_exponential_and_decaying_arrivals_follow_the_rate():
    t = draws.arrival_times(Poisson(kind="poisson", rate="0.5/s"), 400, draws.stream(4, 1, "ks"))
    assert stats.kstest(np.diff([0.0, *t]), stats.expon(scale=2.0).cdf).pvalue > 0.001
    # lambda(t) = r exp(-t/tau): given N arrivals, their times have density proportional to lambda
    tau = 100.0
    t = [x for x in draws.arrival_times(Decaying(kind="decaying", rate="1/s", tau="100s"), 500,
                                        draws.stream(5, 1, "ks")) if x is not None]
    assert 60 < len(t) < 140          # about r * tau = 100 arrive in all, the rest never
    horizon = max(t)
    cdf = lambda x: (1 - np.exp(-np.asarray(x) / tau)) / (1 - math.exp(-horizon / tau))  # noqa: E731
    assert stats.kstest(t, cdf).pvalue > 0.001


def test_a_mix_gives_exact_shares_in_a_seeded_order():
    p = plan(parse_experiment(experiment_dict(peers=[CHURN], timeout="30m")), RUN)
    profiles = [h.participant.profile for h in p.hosts if h.role == "leecher"]
    assert profiles.count("hit_and_run") == 9 and profiles.count("intermittent") == 21
    assert profiles != sorted(profiles)     # shuffled, not in blocks
    hit = next(h for h in p.hosts if h.participant and h.participant.profile == "hit_and_run")
    assert hit.participant.seeding == ("stop", None)


def test_profiles_map_onto_client_knobs():
    peers = [{"name": "shy", "count": 2, "access": {"up": "2mbit", "down": "8mbit"},
              "participation": "bandwidth_shy"},
             {"name": "nat", "access": {"up": "2mbit", "down": "8mbit"}, "participation": "not_connectable"},
             {"name": "free", "access": {"up": "2mbit", "down": "8mbit"}, "participation": "free_rider"}]
    p = plan(parse_experiment(experiment_dict(peers=peers)), RUN)
    assert p.host("shy1").behaviour.upload_limit == pytest.approx(0.5e6)
    assert p.host("nat").behaviour.connectable is False
    assert p.host("free").behaviour.upload_limit == 8192


def test_the_bound_is_only_for_a_flash_crowd_and_counts_client_caps():
    assert plan(parse_experiment(experiment_dict(peers=[CHURN])), RUN).t_min_s is None
    capped = experiment_dict()
    capped["peers"][0]["behaviour"] = {"upload_limit": "100kbit"}
    free = plan(parse_experiment(experiment_dict()), RUN)
    slow = plan(parse_experiment(capped), RUN)
    assert slow.t_min_s > free.t_min_s
    assert slow.t_min_terms["total_upload"] == pytest.approx(4 * 4 * 2**20 * 8 / (20e6 + 4 * 100e3))


def test_a_core_link_into_a_site_without_seeders_bounds_the_swarm():
    topo = {"sites": ["a", "b"], "core": [{"ends": ["a", "b"], "rate": "1mbit"}]}
    d = experiment_dict(topology=topo)
    d["seeders"][0]["site"] = "a"
    d["peers"][0]["site"] = "b"
    p = plan(parse_experiment(d), RUN)
    assert p.t_min_terms["core_link"] == pytest.approx(4 * 2**20 * 8 / 1e6)


@pytest.mark.parametrize("change,key", [
    ({"participation": [{"profile": "full", "share": "30%"}, {"profile": "hit_and_run", "share": "60%"}]},
     "participation"),
    ({"participation": "hit_and_rum"}, "participation[0].profile"),
    ({"arrivals": {"kind": "poisson", "rate": "2 per minute"}}, "arrivals"),
    ({"arrivals": {"kind": "poisson", "rate": "0/min"}}, "arrivals.rate"),
    ({"participation": {"profile": "intermittent", "offline": None}}, "participation[0]"),
    ({"participation": {"profile": "full", "session": {"dist": "weibull", "shape": 0, "scale": "1m"}}},
     "session.shape"),
])
def test_bad_churn_is_one_sentence_naming_the_key(change, key):
    peers = [{**experiment_dict()["peers"][0], **change}]
    with pytest.raises(InputError) as exc:
        parse_experiment(experiment_dict(peers=peers))
    assert key in str(exc.value) and "\n" not in str(exc.value)


def test_faults_name_real_hosts():
    with pytest.raises(InputError, match=r"faults\[0\].host: unknown host 'leecher9'"):
        parse_experiment(experiment_dict(faults=[{"at": "5s", "kind": "crash", "host": "leecher9"}]))
    with pytest.raises(InputError, match=r"faults\[0\].for"):
        parse_experiment(experiment_dict(faults=[{"at": "5s", "kind": "pause", "host": "leecher1"}]))


def test_arrival_and_duration_files_are_read_while_loading(tmp_path):
    (tmp_path / "arr.txt").write_text("# arrivals\n0s\n10s\n2.5s\n")
    (tmp_path / "sess.txt").write_text("1m\n2m\n")
    peers = [{**experiment_dict()["peers"][0], "count": 4, "arrivals": {"kind": "file", "path": "arr.txt"},
              "participation": {"profile": "full", "session": {"dist": "file", "path": "sess.txt"}}}]
    exp = parse_experiment(experiment_dict(peers=peers), base_dir=tmp_path)
    p = plan(exp, RUN)
    arrivals = sorted((h.participant.arrival_s for h in p.hosts if h.role == "leecher"),
                      key=lambda x: (x is None, x))
    assert arrivals == [0.0, 2.5, 10.0, None]
    sessions = {round(e.t - p.host(e.host).participant.arrival_s) for e in p.timeline if e.reason == "session_end"}
    assert sessions <= {60, 120}
    with pytest.raises(InputError, match="arrivals.path"):
        parse_experiment(experiment_dict(peers=[{**peers[0], "arrivals": {"kind": "file", "path": "nope"}}]),
                         base_dir=tmp_path)


def test_interface_counters_are_read_from_proc_net_dev():
    from testbed.run.sampler import parse_net_dev
    text = ("Inter-|   Receive                                                |  Transmit\n"
            " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo "
            "colls carrier compressed\n"
            "    lo:    1000      10    0    0    0     0          0         0     2000      20    0    0    0"
            "     0       0          0\n"
            "tb0a1b2cs1p3: 5 1 0 0 0 0 0 0 7 2 0 0 0 0 0 0\n")
    assert parse_net_dev(text) == {"lo": (1000, 2000, 10, 20), "tb0a1b2cs1p3": (5, 7, 1, 2)}


def test_flows_to_a_peer_add_up_over_reconnections():
    """Every connection to a peer's listening port has the same key: an ended connection's last
    counters (from its destroy event) are kept, and the live ones' latest added."""
    from testbed.flows import Conn, Entries, Tuple
    from testbed.run.sampler import Observed
    seen, me, other = Observed(), "198.18.0.2", "198.18.0.3"
    first, second = b"conn-1", b"conn-2"

    def conn(port, n):     # I dialed the other peer's listening port from local `port`: orig is what I sent
        return Conn(Tuple(socket.IPPROTO_TCP, me, port, other, 51413), 1, n, 1, n // 10)
    seen.add_entries("p", 51413, Entries({first: conn(40000, 100)}, [], {me}))
    seen.add_entries("p", 51413, Entries({first: conn(40000, 300)}, [], {me}))
    # the first connection ends (its destroy event: 320) and a second one starts
    seen.add_entries("p", 51413, Entries({second: conn(40001, 50)}, [(first, conn(40000, 320))], {me}))
    seen.add_entries("p", 51413, Entries({}, [], {me}))             # a tick without TCP lookups
    seen.add_entries("p", 51413, Entries({second: conn(40001, 80)}, [], {me}))
    assert seen.flow_totals("p") == {("tcp", other, 51413): {"bytes_out": 400, "bytes_in": 40,
                                                              "packets_out": 2, "packets_in": 2}}


def test_a_flow_replaced_in_one_reading_and_one_whose_end_was_lost_keep_their_bytes():
    """uTP: both ends use the peer port, so the entry that replaces an expired one has the
    same tuple, and can end and start again between two readings; and an entry whose destroy
    event was lost shows up again with counters that fell."""
    from testbed.flows import Conn, Entries, Tuple
    from testbed.run.sampler import Observed
    seen, me, other, raw = Observed(), "198.18.0.2", "198.18.0.3", b"udp-flow"

    def conn(n):
        return Conn(Tuple(socket.IPPROTO_UDP, me, 6881, other, 6881), 1, n, 1, 0)
    seen.add_entries("p", 6881, Entries({raw: conn(1000)}, [], {me}))
    seen.add_entries("p", 6881, Entries({raw: conn(200)}, [(raw, conn(1500))], {me}))    # ended at 1500, new at 200
    assert seen.flow_totals("p")[("udp", other, 6881)]["bytes_out"] == 1700
    seen.add_entries("p", 6881, Entries({raw: conn(50)}, [], {me}))      # its end at 200 never seen
    assert seen.flow_totals("p")[("udp", other, 6881)]["bytes_out"] == 1750
