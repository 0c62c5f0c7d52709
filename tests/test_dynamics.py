"""The reproduction metrics, computed from a results directory written by hand: who sent to
whom, how full a line was, where download time went, and whether the leechers pile up."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from testbed.analysis import dynamics
from testbed.analysis.metrics import run_metrics


def peer(name, group, role="leecher", **kw):
    base = {"name": name, "group": group, "role": role, "client": "transmission", "arrived_s": 0.0,
            "completed": True, "completion_s": 10.0, "left_s": None, "bytes_up": 0, "bytes_down": 0,
            "if_bytes_up": 0, "if_bytes_down": 0, "up_bps": 1_000_000, "flows": []}
    return {**base, **kw}


def flow(remote, out, inn=0):
    return {"remote": remote, "proto": "udp", "bytes_out": out, "bytes_in": inn}


def test_in_class_share_counts_what_each_leecher_sent_to_leechers_only():
    summary = {"peers": [
        peer("seed", "seed", role="seeder", flows=[flow("f1", 10**6)]),
        # f1 sends 300 to f2 (own class) and 100 to s1; what it received and what went to
        # the seeder do not count
        peer("f1", "fast", flows=[flow("f2", 300, 999), flow("s1", 100), flow("seed", 5000), flow("198.18.9.9", 50)]),
        peer("f2", "fast", flows=[flow("f1", 100), flow("s1", 100)]),
        peer("s1", "slow", flows=[flow("f1", 0, 400)]),          # sent nothing: no share
    ]}
    out = dynamics.exchange(summary)
    assert out["in_class_share[fast]"] == pytest.approx((0.75 + 0.5) / 2)
    assert "in_class_share[slow]" not in out and "in_class_share[seed]" not in out


def test_upload_utilisation_on_the_line_or_against_a_lower_cap():
    line = peer("a", "g", if_bytes_up=1_000_000, if_bytes_up_after_completion=250_000)   # 750 kB in 10 s at 1 Mbit/s
    capped = peer("b", "g", upload_limit_bps=500_000, bytes_up=500_000, bytes_up_after_completion=0,
                  if_bytes_up=900_000)                                                     # 500 kB in 10 s at 0.5 Mbit/s
    assert dynamics._utilisation(line) == pytest.approx(0.6)
    assert dynamics._utilisation(capped) == pytest.approx(0.8)
    assert dynamics._utilisation({**line, "home": "home1"}) is None          # a shared line
    assert dynamics._utilisation({**line, "completed": False}) is None
    assert dynamics._utilisation({**line, "completion_s": 0.0}) is None


def write_run(d: Path, peers: list[dict], samples: list[tuple], swarm: list[tuple], pieces=4, piece=65536) -> Path:
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"run_id": "r", "status": "complete", "partial": False,
                                                "peers": peers}))
    (d / "plan.json").write_text(json.dumps({"content_bytes": pieces * piece, "piece_bytes": piece}))
    with (d / "samples.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", "peer", "progress"])
        w.writerows(samples)
    with (d / "swarm.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", "online", "seeds_online", "leechers_online"])
        w.writerows((t, n + 1, 1, n) for t, n in swarm)
    return d


def test_start_up_end_game_and_the_one_club(tmp_path):
    peers = [peer("a", "g", arrived_s=2.0, completion_s=9.0), peer("b", "g", arrived_s=0.0),
             peer("c", "g", completed=False, completion_s=None),           # 3 of 4 pieces: one short
             peer("d", "g", completed=False, completion_s=None),           # just under 3 of 4
             peer("e", "g", completed=False, completion_s=None, left_s=5.0),   # gone: not counted
             peer("x", "g", completed=False, completion_s=None, arrived_s=None)]   # never came
    samples = [(1, "a", 0), (3, "a", 0), (5, "a", 0.25), (8, "a", 0.96), (11, "a", 1.0),
               (1, "b", 0.1), (6, "b", 0.95), (7, "b", 1.0),
               (9, "c", 0.75), (9, "d", 0.7499), (4, "e", 0.75)]
    d = write_run(tmp_path / "run", peers, samples, [(0, 1), (10, 2)])
    out = dynamics.progress(d, json.loads((d / "summary.json").read_text()), 4 * 65536, 65536)
    # from arrival to the first sample holding data: a 5 - 2, b 1 - 0, c 9, d 9, e 4
    assert out["first_piece_median_s"] == pytest.approx(4.0)
    assert out["last_5pct_median_s"] == pytest.approx((3.0 + 1.0) / 2)        # a: 11 - 8; b: 7 - 6
    assert out["one_piece_short_share"] == pytest.approx(0.5)                 # c of c and d


def test_leecher_growth_is_the_slope_over_the_second_half(tmp_path):
    # flat for the first half, then one more leecher every 6 s: 10 a minute
    swarm = [(t, 3) for t in range(0, 60)] + [(t, 3 + (t - 60) // 6) for t in range(60, 121)]
    d = write_run(tmp_path / "run", [peer("a", "g")], [(1, "a", 1.0)], swarm)
    out = dynamics.population(d)
    assert out["leechers_online_end"] == 13
    assert out["leecher_growth_per_min"] == pytest.approx(10, rel=0.05)


def test_run_metrics_carries_the_new_metrics_per_group(tmp_path):
    peers = [peer("o", "origin", role="seeder"),
             peer("a", "g", completion_s=10.0), peer("b", "g", completion_s=20.0),
             peer("c", "h", completed=False, completion_s=None)]
    d = write_run(tmp_path / "run", peers, [(1, "a", 1.0)], [(0, 3), (1, 2)])
    m = run_metrics(d)["metrics"]
    assert m["completion_mean_s"] == 15.0 and m["completion_mean_s[g]"] == 15.0
    assert m["completed_fraction[g]"] == 1.0 and m["completed_fraction[h]"] == 0.0
    assert "completed_fraction[origin]" not in m
