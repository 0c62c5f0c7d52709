"""A real swarm: 1 origin seeder and 8 transmission leechers on shaped asymmetric links."""
import csv
import json
from pathlib import Path

import pytest

from testbed.run import run
from tests.integration.conftest import nothing_left, small_experiment


def docker0_packets() -> int:
    stats = Path("/sys/class/net/docker0/statistics")
    if not stats.exists():
        return 0
    return sum(int((stats / f).read_text()) for f in ("tx_packets", "rx_packets"))


@pytest.fixture(scope="module")
def swarm(docker_client, tmp_path_factory):
    exp = small_experiment(content={"size": "8MiB"}, seed=11, peers=[
        {"name": "leecher", "count": 8, "client": "transmission",
         "access": {"up": "2mbit", "down": "10mbit", "queue": 100}}])
    events = []
    before = docker0_packets()
    result = run(exp, tmp_path_factory.mktemp("results"), events.append)
    return result, events, docker0_packets() - before


def test_every_peer_completes_with_the_origins_bytes(swarm):
    result, _, _ = swarm
    s = result.summary
    assert result.status == "complete", s.get("error")
    leechers = [p for p in s["peers"] if p["role"] == "leecher"]
    assert len(leechers) == 8
    assert all(p["completed"] and p["sha256_ok"] for p in leechers)
    assert {p["client"] for p in s["peers"]} == {"transmission"}


def test_completion_is_never_faster_than_the_physical_bound(swarm):
    s = swarm[0].summary
    assert s["swarm_completion_s"] >= s["t_min_s"] > 0
    for p in s["peers"]:
        if p["role"] == "leecher":
            assert p["completion_s"] >= p["t_min_s"], p


def test_interface_counters_agree_with_what_clients_report(swarm):
    s = swarm[0].summary
    size = s["content_bytes"]
    for p in s["peers"]:
        if p["role"] == "leecher":
            # the wire carries at least the payload, plus TCP/IP and protocol overhead
            assert p["if_bytes_down"] >= size
            assert p["if_bytes_down"] >= 0.9 * p["bytes_down"]
    total_up = sum(p["if_bytes_up"] for p in s["peers"])
    total_down = sum(p["if_bytes_down"] for p in s["peers"])
    assert total_up == pytest.approx(total_down, rel=0.05)


def test_results_directory_contract(swarm):
    result, events, _ = swarm
    d = result.run_dir
    for name in ("experiment.yaml", "manifest.json", "events.jsonl", "samples.csv", "summary.json"):
        assert (d / name).is_file(), name
    manifest = json.loads((d / "manifest.json").read_text())
    for key in ("testbed", "images", "image_packages", "host", "traffic_control", "seed", "client_versions"):
        assert key in manifest, key
    assert "transmission-daemon" in manifest["image_packages"]["transmission"]
    assert manifest["teardown"]["removed"]["containers"] == 10
    assert manifest["teardown"]["left"] == {"containers": [], "links": [], "namespaces": []}
    kinds = [json.loads(line)["kind"] for line in (d / "events.jsonl").read_text().splitlines()]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end" and kinds.count("peer_complete") == 8
    rows = list(csv.DictReader((d / "samples.csv").open()))
    assert {r["peer"] for r in rows} >= {"origin", "leecher1", "leecher8"}
    assert max(float(r["progress"]) for r in rows if r["peer"] == "leecher1") == 1.0
    assert (d / "hosts" / "leecher1" / "config" / "effective.json").is_file()
    assert not (d / "hosts" / "leecher1" / "data").exists()   # payloads are not kept by default
    assert any(e["kind"] == "progress" for e in events)


def test_nothing_of_the_run_remains(swarm, docker_client):
    assert nothing_left(docker_client, swarm[0].summary["run_id"])


def test_no_packet_went_through_dockers_own_bridge(swarm):
    assert swarm[2] == 0
