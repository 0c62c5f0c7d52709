"""Link profiles, traces and data plans: parsed, resolved and checked without a machine."""
import pytest

from testbed import metering, traces
from testbed.errors import InputError
from testbed.model import DataPlan, link_profiles, parse_experiment, resolved_yaml
from testbed.plan import plan
from tests.conftest import experiment_dict


def with_access(**access):
    return experiment_dict(peers=[{"name": "phone", "count": 2, "access": access}])


def test_every_profile_has_its_source_and_the_issue_s_seven_exist():
    profiles = link_profiles()
    assert {"lan", "ftth", "cable", "dsl", "lte", "3g", "satellite"} <= set(profiles)
    for name, prof in profiles.items():
        assert prof.source.strip(), name
        assert prof.up > 0 and prof.down > 0 and prof.queue >= 1
    sat = profiles["satellite"]
    assert (sat.down, sat.delay, sat.loss, sat.queue) == (42e6, (0.4, 0.4), (0.0074, 0.0074), 1500)


def test_a_profile_fills_the_access_link_and_written_fields_win():
    exp = parse_experiment(with_access(profile="lte", up="3mbit", loss="2%"))
    a = exp.peers[0].access
    assert (a.up, a.down, a.queue) == (3e6, 9e6, 130)
    assert (a.delay, a.jitter, a.loss) == ((0.03, 0.03), (0.005, 0.005), (0.02, 0.02))
    # the resolved file shows every value, and reads back to the same experiment
    assert parse_experiment(__import__("yaml").safe_load(resolved_yaml(exp))) == exp


def test_delay_jitter_and_loss_may_differ_by_direction():
    exp = parse_experiment(with_access(profile="lte", loss={"up": "2%", "down": "0.5%"}, delay={"up": "40ms", "down": "20ms"}))
    p = plan(exp, "t-20261124-120000-0a1b2c")
    up, down = p.host("phone1").up, p.host("phone1").down
    assert (up.delay_s, up.loss, up.jitter_s) == (0.04, 0.02, 0.005)
    assert (down.delay_s, down.loss, down.jitter_s) == (0.02, 0.005, 0.005)
    text = resolved_yaml(exp)
    assert "loss:\n      up: 2%\n      down: 0.5%" in text and "jitter: 5ms" in text
    assert parse_experiment(__import__("yaml").safe_load(text)) == exp


def test_unknown_profile_is_named_with_a_suggestion():
    with pytest.raises(InputError, match=r"peers\[0\]\.access\.profile: unknown link profile 'ltee' \(did you mean 'lte'\?\)"):
        parse_experiment(with_access(profile="ltee"))


@pytest.mark.parametrize("access, key, words", [
    ({"down": "1mbit"}, "access.up", "give a rate, a profile, or a trace"),
    ({"profile": "lte", "loss": "100%"}, "access.loss", "below 100%"),
    ({"profile": "lte", "loss": "1"}, "access.loss", "is not a percentage"),
    ({"profile": "lte", "delay": "-5ms"}, "access.delay", "must be from 0s to 10s"),
    ({"profile": "lte", "delay": {"up": "5ms"}}, "access.delay", "both 'up' and 'down'"),
    ({"profile": "lte", "loss": {"up": "1%", "down": "50"}}, "access.loss", "is not a percentage"),
    ({"profile": "lte", "plan": {"at_cap": "cut"}}, "access.plan.at_cap", "needs a cap"),
    ({"profile": "lte", "plan": {"cap": "1GB", "at_cap": "explode"}}, "access.plan.at_cap", ""),
    ({"profile": "lte", "plan": {"cap": "1GB", "period": "1m"}}, "access.plan.period", "shorter than the run"),
    ({"profile": "lte", "down_trace": "no-such.trace"}, "access.down_trace", "no such trace file"),
    ({"profile": "lte", "up_trace": [{"at": "5s", "rate": "1mbit"}]}, "access.up_trace", "first step must be at 0s"),
])
def test_bad_access_values_are_named(access, key, words):
    with pytest.raises(InputError, match=key.replace(".", r"\.")) as err:
        parse_experiment(with_access(**access))
    assert words in str(err.value)


def test_mahimahi_trace_becomes_a_rate_per_step_and_repeats():
    # 2 s: 100 opportunities in the first second, 50 in the second
    text = "\n".join([str(i * 10) for i in range(100)] + [str(1000 + i * 20) for i in range(50)] + ["2000"])
    t = traces.read_mahimahi(text, "x")
    assert t.steps == ((0.0, 100 * 1500 * 8.0), (1.0, 51 * 1500 * 8.0)) and t.period == 2.0
    assert t.rate_at(2.5) == 1.2e6
    assert t.changes(3.0) == [(0.0, 1.2e6), (1.0, 612000.0), (2.0, 1.2e6), (3.0, 612000.0)]


def test_csv_trace_and_outages():
    t = traces.read_csv("time,rate\n0,2mbit\n5s,0\n7,1000000\n", "x.csv")
    assert t.steps == ((0.0, 2e6), (5.0, traces.MIN_RATE_BPS), (7.0, 1e6)) and t.period is None
    with pytest.raises(traces.TraceError, match="line 3"):
        traces.read_csv("0,1mbit\n1,2mbit\n2,fast\n", "x.csv")


def test_the_shipped_cellular_traces_read_and_drive_a_plan():
    exp = parse_experiment(with_access(profile="lte", down_trace="lte-drive.down", up_trace="lte-drive.up"))
    p = plan(exp, "t-20261124-120000-0a1b2c")
    down = p.host("phone1").down
    assert down.trace is not None and down.rate_bps == down.trace.rate_at(0)
    assert 1e6 < down.trace.mean_rate() < 20e6
    # the bound uses the trace's mean rate, not its first step
    # the bound is when the trace's integrated rate first covers the content, not size / mean rate
    t = p.peer_t_min_s["phone1"]
    carried = sum(r * max(0.0, min(t, t1) - t0) for (t0, r), (t1, _) in
                  zip(down.trace.changes(600), [*down.trace.changes(600)[1:], (1e9, 0)]))
    assert carried == pytest.approx(exp.content.size * 8, rel=1e-6)


PLAN = DataPlan(cap="1GB", used="900MB", per_gb=2.0, overage_per_gb=10.0, per_minute=0.01, fee=5.0)


def test_bill_splits_what_uploading_caused():
    b = metering.bill(PLAN, up=150_000_000, down=50_000_000, minutes=10)
    # 1.1 GB counted: 2.2 data, 1.0 overage (0.1 GB over), 5 fee, 0.1 time
    assert b["total"] == pytest.approx(8.3) and b["parts"]["overage"] == pytest.approx(1.0)
    # without the upload: 0.95 GB, no overage: 1.9 + 5 + 0.1 = 7.0
    assert b["caused_by_upload"] == pytest.approx(1.3)
    assert b["caused_by_run"] == pytest.approx(8.3 - 6.8)
    down_only = metering.bill(PLAN.model_copy(update={"counts": "down"}), 150_000_000, 50_000_000, 10)
    assert down_only["caused_by_upload"] == 0


def test_cap_is_reached_once_and_ip_bytes_drop_the_ethernet_header():
    w = metering.CapWatch(PLAN)
    assert not w.update(1.0, 50_000_000, 49_000_000)
    assert w.update(2.0, 50_000_000, 50_000_000) and w.reached_at == 2.0
    assert not w.update(3.0, 60_000_000, 60_000_000)
    assert metering.ip_bytes(1514 * 10, 10) == 1500 * 10


def test_a_trace_can_start_part_way_and_a_group_can_spread_over_it():
    t = traces.from_steps([(0.0, 1e6), (2.0, 2e6), (4.0, 3e6)], "x")
    assert t.starting_at(3.0).steps == ((0.0, 2e6), (1.0, 3e6))
    looped = traces.Trace("y", ((0.0, 1e6), (1.0, 2e6), (2.0, 3e6)), period=3.0)
    assert looped.starting_at(1.5).steps == ((0.0, 2e6), (0.5, 3e6), (1.5, 1e6), (2.5, 2e6))
    assert looped.starting_at(1.5).rate_at(2.0) == 1e6 and looped.starting_at(4.5).steps == looped.starting_at(1.5).steps
    exp = parse_experiment(with_access(profile="lte", down_trace="lte-drive.down", trace_offset="spread"))
    p = plan(exp, "t-20261124-120000-0a1b2c")
    full = traces.load(exp.peers[0].access.down_trace)
    assert p.host("phone1").down.trace.steps == full.steps
    assert p.host("phone2").down.rate_bps == full.rate_at(30.0)       # half of the 60 s trace
