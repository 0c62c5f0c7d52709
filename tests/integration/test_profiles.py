"""Every participation profile, the decaying and file arrival models, a session's end and
a stopped origin in one running swarm (experiments/participation-profiles.yaml), each
judged from interface counters (meter.csv), the clients' own stats (samples.csv) and the
wire counters in summary.json, not from the plan.

Timing: windows are judged from counter rows at least 2 s after an event (TCP drains a
closed socket's queue for up to about a second on these links); the executor applied
every event within 0.1 s of its time in the runs seen, so a false failure needs a stall
of the loop of over a second."""
import csv
import json
from collections import defaultdict

import pytest

from testbed.model import load_experiment
from testbed.run import run
from tests.conftest import ROOT
from tests.integration.conftest import nothing_left

KIB = 1024


@pytest.fixture(scope="module")
def swarm(docker_client, tmp_path_factory):
    exp = load_experiment(ROOT / "experiments" / "participation-profiles.yaml")
    result = run(exp, tmp_path_factory.mktemp("results"))
    d = result.run_dir
    meter, samples = defaultdict(list), defaultdict(list)
    for r in csv.DictReader((d / "meter.csv").open()):
        meter[r["name"]].append((float(r["t"]), int(r["ip_bytes_up"]), int(r["ip_bytes_down"])))
    for r in csv.DictReader((d / "samples.csv").open()):
        samples[r["peer"]].append({k: float(v) for k, v in r.items() if k != "peer"})
    timeline = list(csv.DictReader((d / "timeline.csv").open()))
    events = [json.loads(line) for line in (d / "events.jsonl").open()]
    peers = {p["name"]: p for p in result.summary["peers"]}
    assert nothing_left(docker_client, result.summary["run_id"])
    return result, meter, samples, timeline, events, peers, exp


def sent_after(rows, t0, t1=1e9) -> int:
    inside = [r for r in rows if t0 <= r[0] <= t1]
    return inside[-1][1] - inside[0][1] if len(inside) >= 2 else 0


def quiet(rows, t0, t1=1e9) -> bool:
    """A line that carries no upload from t0 on: at most resets and refusals to peers that
    still try it (about 300 B/s seen with 18 peers), under 1 KiB/s and 8 KiB at most beyond."""
    inside = [r for r in rows if t0 <= r[0] <= t1]
    span = inside[-1][0] - inside[0][0] if len(inside) >= 2 else 0.0
    return sent_after(rows, t0, t1) <= 1024 * span + 8 * KIB


def test_the_swarm_completes_without_its_origin(swarm):
    result, meter, _, timeline, _, peers, exp = swarm
    assert result.status == "complete" and result.summary["ended_by"] == "duration", result.summary["error"]
    stop = next(float(e["t"]) for e in timeline if e["kind"] == "leave" and e["host"] == "origin")
    assert peers["origin"]["left_reason"] == "fault"
    # the origin sends nothing once it left, yet peers still completing then got the content
    assert quiet(meter["origin"], stop + 2)
    late = [p for p in peers.values() if p["role"] == "leecher" and p["completed"] and p["completed_at_s"] > stop + 2]
    assert late, "no peer completed after the origin left: make the swarm slower"
    assert all(p["sha256_ok"] for p in late)


def test_decaying_and_file_arrivals_arrive_when_planned(swarm):
    _, meter, _, timeline, _, _, _ = swarm
    arrivals = [e for e in timeline if e["kind"] == "arrive" and e["host"].startswith(("decay", "replay"))]
    assert len(arrivals) >= 4
    for ev in arrivals:
        t, rows = float(ev["t"]), meter[ev["host"]]
        before = [r for r in rows if r[0] < t - 0.5]
        assert not before or before[-1][1] < 1500
        first = next(r[0] for r in rows if r[1] > (before[-1][1] if before else 0) + 200)
        assert t - 0.05 <= first <= t + 3.0, (ev["host"], t, first)
    assert [float(e["t"]) for e in arrivals if e["host"].startswith("replay")] == [4.0, 11.5]


def test_seeding_ends_after_its_time_and_at_its_ratio(swarm):
    _, meter, samples, _, _, peers, exp = swarm
    linger = peers["linger"]
    assert linger["left_reason"] == "seeding_done"
    # its seeding time was drawn from an exponential distribution (the draw is in the plan)
    drawn = linger["seeding"]["amount"]
    assert 1.0 < drawn < 30.0
    assert drawn <= linger["left_s"] - linger["completed_at_s"] < drawn + 1.5
    ratio = peers["ratio"]
    assert ratio["left_reason"] == "seeding_done"
    at_stop = max(s["client_bytes_up"] for s in samples["ratio"] if s["t"] <= ratio["seeding"]["stopped_s"])
    # it reached the ratio while seeding, and stopped on the first sample at or above it:
    # within one second's upload (its client's cap, 400 kbit/s) of it
    assert ratio["seeding"]["stopped_s"] > ratio["completed_at_s"] + 1
    assert 0.2 * exp.content.size <= at_stop <= 0.2 * exp.content.size + 400e3 / 8 + 16 * KIB
    for name in ("linger", "ratio"):
        assert quiet(meter[name], peers[name]["left_s"] + 2), name


def test_an_aborting_peer_gives_up_half_way(swarm):
    _, meter, samples, _, _, peers, _ = swarm
    q = peers["quitter"]
    assert q["left_reason"] == "abort_at" and not q["completed"]
    progress = [s["progress"] for s in samples["quitter"] if s["t"] <= q["left_s"]]
    assert 0.5 <= progress[-1] < 0.75
    assert quiet(meter["quitter"], q["left_s"] + 2)


def test_a_free_rider_uploads_almost_nothing_and_a_shy_peer_a_quarter_of_its_line(swarm):
    _, _, samples, _, _, peers, _ = swarm
    free = samples["free"]
    assert free[-1]["client_bytes_down"] > 64 * KIB        # it did download
    span = free[-1]["t"] - free[0]["t"]
    # 1 KiB/s cap, counted by the client itself (its interface also carries the ACKs of its download)
    assert free[-1]["client_bytes_up"] <= 1.2 * 1024 * span + 32 * KIB
    assert max(peers[n]["bytes_up"] for n in ("keen1", "keen2", "keen3")) > 20 * free[-1]["client_bytes_up"]
    shy = samples["shy"]
    rates = [(b["client_bytes_up"] - a["client_bytes_up"]) / (b["t"] - a["t"]) for a, b in zip(shy, shy[5:])]
    assert max(rates) * 8 <= 0.25 * 4e6 * 1.15     # 25 % of 4 Mbit/s, over 5-second windows


def test_a_peer_behind_a_nat_accepts_nothing(swarm):
    _, _, samples, _, _, peers, _ = swarm
    assert peers["nat"]["completed"]
    assert all(s["tcp_in"] == 0 for s in samples["nat"])
    assert peers["nat"]["wire"]["inbound_refused"] > 0


def test_an_intermittent_peer_is_silent_offline_and_comes_back_with_its_data(swarm):
    _, meter, samples, timeline, _, peers, _ = swarm
    cycles = [(float(a["t"]), float(b["t"])) for a, b in zip(
        [e for e in timeline if e["host"] == "onoff" and e["kind"] == "leave"],
        [e for e in timeline if e["host"] == "onoff" and e["kind"] == "rejoin"])]
    off, on = cycles[0]
    assert quiet(meter["onoff"], off + 2, on - 0.2)
    had = max(s["progress"] for s in samples["onoff"] if s["t"] < off)
    back = next(s["progress"] for s in samples["onoff"] if s["t"] > on and s["progress"] > 0)
    assert had > 0.05 and back >= had - 0.05
    assert peers["onoff"]["completed"] and peers["onoff"]["sessions"] >= 2


def test_a_session_ends_when_drawn(swarm):
    _, meter, _, timeline, _, peers, _ = swarm
    b = peers["brief"]
    # a Weibull session: it leaves when its draw says, and its line goes quiet then
    planned = next(float(e["t"]) for e in timeline if e["host"] == "brief" and e["reason"] == "session_end")
    assert b["left_reason"] == "session_end" and planned <= b["left_s"] < planned + 0.5
    assert quiet(meter["brief"], b["left_s"] + 2)


def test_utp_flows_are_counted_per_remote_peer(swarm):
    """libtorrent speaks uTP here: no TCP connection carries the swarm, yet the kernel's flow
    accounting sees every remote peer, and its bytes add up to what the line carried."""
    result, _, samples, _, _, peers, _ = swarm
    keen = peers["keen1"]
    assert max(s["tcp_in"] + s["tcp_out"] for s in samples["keen1"]) == 0
    assert max(s["utp_uploading"] for s in samples["keen1"]) >= 2
    assert {f["remote"] for f in keen["flows"] if f["proto"] == "udp" and f["bytes_in"] > 64 * KIB} >= {"origin"}
    total_in = sum(f["bytes_in"] for f in keen["flows"])
    assert total_in == pytest.approx(keen["ip_bytes_down"], rel=0.03)
    # the testbed's own share of a core while the swarm ran is recorded
    assert 0 < result.summary["testbed_cpu"]["share_of_core"] < 0.5
