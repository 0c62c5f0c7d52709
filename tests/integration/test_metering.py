"""What the issue must show: calibration, a metered LTE swarm with its bills and a cap that
stops seeding, and a trace-driven link that follows its trace. Run through the CLI."""
import csv
import json
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.conftest import cli, nothing_left


def only_dir(root: Path) -> Path:
    (d,) = [p for p in root.iterdir() if p.is_dir()]
    return d


def test_calibrate_matches_configuration_and_follows_a_trace(docker_client, tmp_path):
    """Expected false failures: about 0.4 % a run, from the loss judgements (four lossy
    directions, each against its 99.9 % binomial interval); the rates and RTTs had margins of
    5x and more in every run seen."""
    r = cli("calibrate", "lte", "lossy-wired", "satellite", "--sweep", "256kbit,100mbit", "--pings", "300", "--seconds", "3",
            "--trace", "lte-drive.down", "--trace-seconds", "15", "--results", str(tmp_path), timeout=600)
    out = only_dir(tmp_path)
    summary = json.loads((out / "calibration.json").read_text())
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-2000:])
    assert summary["status"] == "complete" and not any(summary["left_behind"].values())
    rows = {row["link"]: row for row in summary["rows"]}
    for row in rows.values():
        assert row["rate_ok"] and row["rtt_ok"] and row["jitter_ok"] and row["loss_ok"], row
    # 256 kbit/s to 100 Mbit/s within 5 %, both directions
    for link in ("rate 256kbit", "rate 100mbit"):
        for d in ("up", "down"):
            assert abs(rows[link][f"{d}_measured_bps"] / rows[link][f"{d}_bps"] - 1) <= 0.05
    assert rows["satellite"]["rtt_ms"] > 790
    trace = summary["trace"]
    assert trace["within_10pct"] >= 0.8 * trace["seconds"], trace
    assert (out / "trace.png").stat().st_size > 10_000
    assert "| lte |" in (out / "calibration.md").read_text()


@pytest.fixture(scope="module")
def metered(docker_client, tmp_path_factory):
    results = tmp_path_factory.mktemp("metered")
    r = cli("run", str(ROOT / "experiments" / "metered-lte.yaml"), "--results", str(results), timeout=600)
    run = only_dir(results)
    summary = json.loads((run / "summary.json").read_text())
    assert nothing_left(docker_client, summary["run_id"])
    return r, run, summary


def per_interval(run: Path, key: str = "ip_bytes_up") -> dict[str, list[tuple[float, float, int]]]:
    """IP bytes in each sampling interval (start, end, bytes), per peer, from meter.csv: the
    interface counters at the switch end of each peer's line."""
    rows = defaultdict(list)
    with (run / "meter.csv").open() as f:
        for row in csv.DictReader(f):
            if row["scope"] == "peer":
                rows[row["name"]].append((float(row["t"]), int(row[key])))
    return {name: [(t0, t1, b1 - b0) for (t0, b0), (t1, b1) in zip(pts, pts[1:])] for name, pts in rows.items()}


def per_interval_upload(run: Path) -> dict[str, list[tuple[float, float, int]]]:
    return per_interval(run, "ip_bytes_up")


def test_metered_peers_get_a_bill_with_the_part_uploading_caused(metered):
    r, run, summary = metered
    assert r.returncode == 0 and summary["status"] == "complete", summary.get("error")
    peers = {p["name"]: p for p in summary["peers"]}
    for name in ("capped1", "capped2", "throttled", "payg1", "payg2"):
        bill = peers[name]["bill"]
        assert bill and bill["currency"] == "EUR" and bill["run_bytes_up"] > 1_000_000, (name, bill)
        assert peers[name]["access"]["profile"] == "lte"
    for name in ("payg1", "payg2"):
        bill = peers[name]["bill"]
        # 10 EUR per GB, every byte counted: uploading's part is exactly its bytes' price
        assert bill["caused_by_upload"] == pytest.approx(10 * bill["run_bytes_up"] / 1e9, abs=1e-5)
        assert bill["total"] == pytest.approx(10 * (bill["run_bytes_up"] + bill["run_bytes_down"]) / 1e9, abs=1e-5)
    assert peers["dsl1"]["bill"] is None
    assert (run / "usage.png").stat().st_size > 10_000


def test_a_cap_with_stop_seeding_stops_the_upload_there(metered):
    _, run, summary = metered
    peers = {p["name"]: p for p in summary["peers"]}
    upload = per_interval_upload(run)
    capped = [peers[n] for n in ("capped1", "capped2") if peers[n]["cap_reached_s"] is not None]
    assert capped, "no capped peer reached its cap"
    for p in capped:
        stopped = p["seeding"]["stopped_s"]
        assert stopped is not None and stopped >= p["cap_reached_s"] - 0.01
        if p["cap_reached_s"] > p["completion_s"]:
            # reached while seeding: the stop is on that very sample
            assert stopped - p["cap_reached_s"] < 0.1
        # from 3 s after the stop (the kernel drains what TCP had queued), no second carries a block
        after = [b for _, t, b in upload[p["name"]] if t > stopped + 3]
        assert after and max(after) < 16 * 1024, (p["name"], after)
        # before the stop it was uploading
        assert max(b for _, t, b in upload[p["name"]] if t <= stopped) > 50_000


def test_a_throttled_line_follows_the_carrier(metered):
    """Judged from the line's interface counters, not from what the testbed set: from the
    sample after the cap, no interval carries more than 512 kbit/s (+10 % and a frame of HTB
    burst) either way, where before it the line carried more than twice that."""
    _, run, summary = metered
    p = next(p for p in summary["peers"] if p["name"] == "throttled")
    if p["cap_reached_s"] is None:
        pytest.fail("the throttled peer did not reach its cap: the experiment's allowance needs adjusting")
    cap = p["cap_reached_s"]
    fastest_before = 0.0
    for key in ("ip_bytes_up", "ip_bytes_down"):
        intervals = per_interval(run, key)["throttled"]
        after = [(t0, t1, b) for t0, t1, b in intervals if t0 >= cap + 1]
        assert len(after) >= 5, (key, "too little of the run after the cap to judge")
        for t0, t1, b in after:
            assert b * 8 <= 1.1 * 512e3 * (t1 - t0) + 1514 * 8, (key, t0, b * 8 / (t1 - t0))
        fastest_before = max([fastest_before] + [b * 8 / (t1 - t0) for t0, t1, b in intervals if t1 <= cap])
    assert fastest_before > 2 * 512e3, fastest_before
    assert (run / "links.png").stat().st_size > 10_000


def test_traced_links_follow_their_trace_in_a_swarm_and_a_cut_line_departs(docker_client, tmp_path):
    """experiments/lte-trace.yaml, plus one peer whose carrier cuts it at a small cap."""
    import yaml
    exp = yaml.safe_load((ROOT / "experiments" / "lte-trace.yaml").read_text())
    exp["content"]["size"] = "8MiB"
    exp["peers"][0]["count"] = 2
    exp["peers"].append({"name": "cut", "access": {"profile": "lte", "plan": {"cap": "1MB", "at_cap": "cut"}}})
    for group in exp["peers"]:
        for key in ("down_trace", "up_trace"):
            if key in group["access"]:
                group["access"][key] = str(ROOT / "topologies" / "traces" / group["access"][key])
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    r = cli("run", str(path), "--results", str(tmp_path / "results"), timeout=600)
    run = only_dir(tmp_path / "results")
    summary = json.loads((run / "summary.json").read_text())
    assert r.returncode == 0 and summary["status"] == "complete", (summary.get("error"), r.stderr[-2000:])
    from testbed import traces
    trace = traces.load(str(ROOT / "topologies" / "traces" / "lte-drive.down"))
    # judged from car1's line, not from links.csv: no interval carries more down than the
    # trace allowed at any moment of it (+10 % and a frame of HTB burst)
    intervals = per_interval(run, "ip_bytes_down")["car1"]
    done = next(p for p in summary["peers"] if p["name"] == "car1")["completed_at_s"]
    judged = [(t0, t1, b) for t0, t1, b in intervals if t1 <= done and t1 - t0 > 0.5]
    assert len(judged) >= 10
    for t0, t1, b in judged:
        allowed = max(trace.rate_at(t0 + k * (t1 - t0) / 8) for k in range(9))
        assert b * 8 <= 1.1 * allowed * (t1 - t0) + 1514 * 8, (t0, b * 8 / (t1 - t0), allowed)
    # and it went where the trace went: seconds at the trace's rate (within 15 %) whose rates
    # differ by a factor of 1.5 or more. In the run this was written against, car1 downloaded
    # from 11 s to 23 s and carried 0.95-1.00 of the trace in 6 seconds spanning 12.1 to
    # 2.4 Mbit/s (a factor of 5).
    at_trace = [trace.rate_at((t0 + t1) / 2) for t0, t1, b in judged
                if b * 8 / (t1 - t0) >= 0.85 * trace.rate_at((t0 + t1) / 2)]
    assert len(at_trace) >= 3 and max(at_trace) >= 1.5 * min(at_trace), at_trace
    assert (run / "links.png").stat().st_size > 10_000
    cut = next(p for p in summary["peers"] if p["name"] == "cut")
    assert cut["line_cut_s"] is not None and not cut["completed"]
    # the line went down within the sample that saw the cap, after that sample's counters were
    # read: every interval that ends after the cut carries nothing up, but for the one it
    # began in, which may hold a frame sent in the milliseconds before. There is at least that
    # one: the run samples once more after the peer departs, even when its departure ends
    # the run (seen once in CI: the cut peer got no peer until its second announce, 30 s in,
    # and was cut at 37 s, after every other leecher had completed)
    after = [(t0, b) for t0, t1, b in per_interval_upload(run)["cut"] if t1 > cut["line_cut_s"] + 0.5]
    assert after, per_interval_upload(run)["cut"][-3:]
    assert all(b == 0 if t0 >= cut["line_cut_s"] else b <= 1514 for t0, b in after), after
