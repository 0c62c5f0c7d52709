"""The arithmetic of `testbed calibrate` (testbed/calibrate_judge.py), pure."""
import numpy as np
import pytest

from testbed.calibrate_judge import (active_rate, binomial_interval, expected_rtt, expected_rtt_sd, judge,
                                     passed, ping_interval, rate_window)
from testbed.plan import Shaping


def link(rate="1mbit", delay=0.0, jitter=0.0, loss=0.0) -> Shaping:
    from testbed.units import parse_rate
    return Shaping(rate_bps=parse_rate(rate), delay_s=delay, jitter_s=jitter, loss=loss, queue_pkts=100)


def row(**over) -> dict:
    r = {"up_bps": 1e6, "down_bps": 1e6, "up_measured_bps": 1.01e6, "down_measured_bps": 0.99e6,
         "rtt_expected_ms": 60.0, "rtt_ms": 60.4, "rtt_sd_expected_ms": 4.08, "rtt_sd_ms": 4.2,
         "up_loss_interval": [0, 3], "up_lost": 1, "down_loss_interval": [0, 3], "down_lost": 0}
    r.update(over)
    return r


def test_the_round_trips_spread_is_that_of_four_uniform_draws():
    up, down, ref = link(jitter=0.005), link(jitter=0.010), link()
    sd = expected_rtt_sd(up, down, ref, ref)
    assert sd == pytest.approx(((0.005 ** 2 + 0.010 ** 2) / 3) ** 0.5)
    # the same from draws: each direction of each link adds its own uniform +/- jitter
    rng = np.random.default_rng(1)
    draws = rng.uniform(-0.005, 0.005, 200_000) + rng.uniform(-0.010, 0.010, 200_000)
    assert np.std(draws) == pytest.approx(sd, rel=0.01)
    assert expected_rtt_sd(ref, ref, ref, ref) == 0
    assert expected_rtt(link(delay=0.03), link(delay=0.03), ref, ref) == pytest.approx(0.06)


def test_echoes_are_spaced_so_jitter_cannot_bring_two_together():
    assert ping_interval(link(jitter=0.010), link(jitter=0.010)) >= 4 * 0.020
    # without jitter: a tenth of the slower direction's rate, and ping's 2 ms floor
    assert ping_interval(link("1mbit"), link("10mbit")) == pytest.approx(10 * 98 * 8 / 1e6)
    assert ping_interval(link("1gbit"), link("1gbit")) == 0.002


@pytest.mark.parametrize("measured,expected,ok", [(4.2, 4.08, True), (3.2, 4.08, True), (6.5, 4.08, False),
                                                  (1.5, 4.08, False), (0.6, 0.0, True), (1.2, 0.0, False)])
def test_jitter_passes_within_a_millisecond_and_a_quarter(measured, expected, ok):
    r = row(rtt_sd_ms=measured, rtt_sd_expected_ms=expected)
    verdict = judge(r)
    assert verdict["jitter_ok"] is ok
    assert passed({**r, **verdict}) is ok       # the other figures of the row pass


def test_each_figure_fails_on_its_own():
    assert not judge(row(up_measured_bps=0.9e6))["rate_ok"]
    assert not judge(row(rtt_ms=66.0))["rtt_ok"]
    assert not judge(row(down_lost=4))["loss_ok"]


def test_loss_intervals_and_rate_windows():
    lo, hi = binomial_interval(1000, 0.02, 0.999)
    assert lo < 20 < hi and binomial_interval(1000, 0.0) == (0, 0)
    seconds, step = rate_window(30e3, 3)          # dial-up: 40 frames of 1442 bytes take 15 s
    assert seconds == pytest.approx(40 * 1442 * 8 / 30e3) and step >= 0.25
    # 1 Mbit/s after a second of set-up: the idle start and the partial edges are left out
    samples = [(t, 0) for t in (0.0, 0.5, 1.0)] + [(1.0 + 0.5 * k, 62_500 * k) for k in range(1, 11)]
    assert active_rate(samples, 1e6) == pytest.approx(1e6)
