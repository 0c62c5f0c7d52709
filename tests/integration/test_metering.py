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
    r = cli("calibrate", "lte", "lossy-wired", "satellite", "--sweep", "256kbit,100mbit", "--pings", "300", "--seconds", "3",
            "--trace", "lte-drive.down", "--trace-seconds", "15", "--results", str(tmp_path), timeout=600)
    out = only_dir(tmp_path)
    summary = json.loads((out / "calibration.json").read_text())
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-2000:])
    assert summary["status"] == "complete" and not any(summary["left_behind"].values())
    rows = {row["link"]: row for row in summary["rows"]}
    for row in rows.values():
        assert row["rate_ok"] and row["rtt_ok"] and row["loss_ok"], row
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


def per_interval_upload(run: Path) -> dict[str, list[tuple[float, float, int]]]:
    """IP bytes uploaded in each sampling interval (start, end, bytes), per peer, from meter.csv."""
    rows = defaultdict(list)
    with (run / "meter.csv").open() as f:
        for row in csv.DictReader(f):
            if row["scope"] == "peer":
                rows[row["name"]].append((float(row["t"]), int(row["ip_bytes_up"])))
    return {name: [(t0, t1, b1 - b0) for (t0, b0), (t1, b1) in zip(pts, pts[1:])] for name, pts in rows.items()}


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
    _, run, summary = metered
    p = next(p for p in summary["peers"] if p["name"] == "throttled")
    with (run / "links.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["host"] == "throttled"]
    if p["cap_reached_s"] is None:
        pytest.fail("the throttled peer did not reach its cap: the experiment's allowance needs adjusting")
    assert {(r["direction"], r["rate_bps"]) for r in rows if r["cause"] == "throttle"} == {("up", "512000"),
                                                                                          ("down", "512000")}
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
    with (run / "links.csv").open() as f:
        rows = [row for row in csv.DictReader(f) if row["host"] == "car1" and row["direction"] == "down"]
    assert len(rows) >= 10
    for row in rows:       # each step was applied when the trace says, at the trace's rate
        t = float(row["t"])
        assert abs(float(row["rate_bps"]) - trace.rate_at(round(t))) < 1, row
        assert abs(t - round(t)) < 0.3, row
    assert (run / "links.png").stat().st_size > 10_000
    cut = next(p for p in summary["peers"] if p["name"] == "cut")
    assert cut["line_cut_s"] is not None and not cut["completed"]
    # the line went down within the sample that saw the cap, after that sample's counters were
    # read: every interval that starts after the cut carries nothing up
    after = [b for t0, _, b in per_interval_upload(run)["cut"] if t0 >= cut["line_cut_s"]]
    assert len(after) >= 2 and all(b == 0 for b in after), after
