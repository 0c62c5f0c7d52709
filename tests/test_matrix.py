"""The matrix tells a driver race or testbed error from an interoperability failure, and
retries only the former: fake run directories, nothing started."""
import json
from pathlib import Path

import pytest

from testbed import matrix
from testbed.matrix import DRIVER, INTEROP, SHA_MISMATCH, classify


def peer(name, role, client, **over) -> dict:
    p = {"name": name, "role": role, "client": client, "completion_s": None, "sha256_ok": role == "seeder",
         "error": None}
    p.update(over)
    return p


def fake_run(tmp_path: Path, status: str, error: str | None = None, events=(), leecher=None, seeder=None,
             samples=()) -> dict:
    """A run directory as `testbed run` leaves it; returns the matrix entry run_pair would make."""
    run_dir = tmp_path / "runs" / f"pair-{status}"
    run_dir.mkdir(parents=True)
    leecher = leecher or peer("leecher", "leecher", "qbittorrent")
    seeder = seeder or peer("seeder", "seeder", "rtorrent")
    (run_dir / "summary.json").write_text(json.dumps(
        {"run_id": run_dir.name, "status": status, "error": error, "peers": [seeder, leecher]}))
    kinds = [{"kind": "run_start"}, *({"kind": k} if isinstance(k, str) else k for k in events)]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in kinds))
    (run_dir / "samples.csv").write_text("t,peer,progress\n" + "".join(f"{t},{p},{x}\n" for t, p, x in samples))
    return {"seeder": seeder["client"], "leecher": leecher["client"], "exit": 1, "status": status,
            "run_dir": str(run_dir), "error": error, "ok": False}


def test_rtorrent_race_before_the_swarm_is_a_driver_failure(tmp_path):
    # the flake: rtorrent's seeder asked for stats before it had registered the torrent
    error = "Fault: <Fault -501: 'Could not find info-hash.'>"
    e = fake_run(tmp_path, "failed", error, events=[
        "clients_ready", {"kind": "traceback", "text": "Traceback ...\nxmlrpc.client.Fault: <Fault -501: "
                                                        "'Could not find info-hash.'>\n"}])
    kind, reason = classify(e)
    assert kind == DRIVER and "Could not find info-hash" in reason


def test_a_run_error_before_the_swarm_started_is_a_driver_failure(tmp_path):
    error = "seeder: rtorrent did not list the torrent ab12 within 30s of adding it (see /x/log)"
    e = fake_run(tmp_path, "failed", error, events=["clients_ready"])
    assert classify(e) == (DRIVER, f"the run failed before the swarm started: {error}")


def test_a_client_error_during_the_swarm_is_a_driver_failure(tmp_path):
    e = fake_run(tmp_path, "timeout", events=[
        "swarm_start", {"kind": "client_error", "host": "leecher", "error": "ConnectionRefusedError: refused"},
        {"kind": "timeout", "after_s": 90}],
        leecher=peer("leecher", "leecher", "qbittorrent", error="ConnectionRefusedError: refused"))
    kind, reason = classify(e)
    assert kind == DRIVER and reason == "leecher's client failed: ConnectionRefusedError: refused"


def test_a_peer_error_alone_is_a_driver_failure(tmp_path):
    e = fake_run(tmp_path, "timeout", events=["swarm_start", {"kind": "timeout", "after_s": 90}],
                 seeder=peer("seeder", "seeder", "deluge", error="stopping the torrent: OSError: gone"))
    kind, reason = classify(e)
    assert kind == DRIVER and "seeder (deluge) failed: stopping the torrent" in reason


def test_a_timeout_with_both_clients_fine_is_an_interop_failure(tmp_path):
    e = fake_run(tmp_path, "timeout", events=["swarm_start", {"kind": "timeout", "after_s": 90}],
                 samples=[(1, "leecher", 0.0), (1, "seeder", 1.0), (90, "leecher", 0.25)])
    assert classify(e) == (INTEROP, "the leecher did not complete within 90s (qbittorrent 25 % verified)")


def test_data_that_differs_from_the_origin_is_an_interop_failure(tmp_path):
    e = fake_run(tmp_path, "failed", "a leecher's file differs from the origin's (sha256)",
                 events=["swarm_start", {"kind": "peer_complete", "host": "leecher"}],
                 leecher=peer("leecher", "leecher", "aria2", completion_s=3.2, sha256_ok=False))
    assert classify(e) == (INTEROP, SHA_MISMATCH)


def test_a_testbed_error_during_the_swarm_is_a_driver_failure(tmp_path):
    e = fake_run(tmp_path, "failed", "the userspace delay element exited (see /x/delayer.log)",
                 events=["swarm_start"])
    kind, reason = classify(e)
    assert kind == DRIVER and "delay element exited" in reason


def test_a_run_that_left_no_directory_is_a_driver_failure():
    e = {"seeder": "rtorrent", "leecher": "deluge", "exit": 1, "status": "failed", "error": "Error: no daemon"}
    kind, reason = classify(e)
    assert kind == DRIVER and "no daemon" in reason


def test_a_line_cut_short_in_events_is_skipped(tmp_path):
    e = fake_run(tmp_path, "timeout", events=["swarm_start", {"kind": "timeout", "after_s": 90}])
    with open(Path(e["run_dir"]) / "events.jsonl", "a") as f:
        f.write('{"kind": "client_err')
    assert classify(e)[0] == INTEROP


# ------------------------------------------------------------------ retries, with run_pair faked

def scripted(monkeypatch, outcomes: dict) -> list:
    """Replace run_pair: each call for a pair takes the next outcome ('ok', 'driver', 'interop')."""
    calls = []

    def run_pair(seeder, leecher, size, out, transmission_utp=None):
        key = (seeder, leecher) if transmission_utp is None else (seeder, leecher, "noutp")
        calls.append(key)
        outcome = outcomes.get(key, ["ok"]).pop(0) if outcomes.get(key) else "ok"
        e = {"seeder": seeder, "leecher": leecher, "status": "complete" if outcome == "ok" else "failed",
             "ok": outcome == "ok", "sha256_ok": outcome == "ok"}
        if outcome != "ok":
            e.update(failure=outcome, reason=f"a {outcome} failure")
        return e

    monkeypatch.setattr(matrix, "run_pair", run_pair)
    return calls


def test_a_driver_failure_is_retried_once_and_recorded(monkeypatch, tmp_path):
    calls = scripted(monkeypatch, {("rtorrent", "deluge"): ["driver", "ok"]})
    r = matrix.run_matrix(["rtorrent", "deluge"], "2MiB", tmp_path, parallel=1)
    assert calls.count(("rtorrent", "deluge")) == 2
    (e,) = [e for e in r["pairs"] if (e["seeder"], e["leecher"]) == ("rtorrent", "deluge")]
    assert e["ok"] and e["first_attempt"]["failure"] == DRIVER and e["first_attempt"]["reason"]
    assert r["passed"] == r["total"] == 4 and r["driver_retries"] == 1
    assert json.loads((tmp_path / "matrix.json").read_text())["driver_retries"] == 1


def test_an_interop_failure_twice_running_fails_the_matrix(monkeypatch, tmp_path):
    calls = scripted(monkeypatch, {("rtorrent", "deluge"): ["interop", "interop"]})
    r = matrix.run_matrix(["rtorrent", "deluge"], "2MiB", tmp_path, parallel=1)
    assert calls.count(("rtorrent", "deluge")) == 2
    assert r["passed"] == 3 and r["driver_retries"] == 0 and r["failures"] == {INTEROP: 1, DRIVER: 0}
    assert r["intermittent"] == 0


def test_an_interop_failure_then_a_success_is_intermittent(monkeypatch, tmp_path):
    calls = scripted(monkeypatch, {("rtorrent", "aria2"): ["interop", "ok"]})
    r = matrix.run_matrix(["rtorrent", "aria2"], "2MiB", tmp_path, parallel=1)
    assert calls.count(("rtorrent", "aria2")) == 2
    (e,) = [e for e in r["pairs"] if (e["seeder"], e["leecher"]) == ("rtorrent", "aria2")]
    assert e["ok"] and e["intermittent"] == "a interop failure" and e["first_attempt"]["failure"] == INTEROP
    assert r["passed"] == 4 and r["intermittent"] == 1 and r["failures"] == {INTEROP: 0, DRIVER: 0}


def test_a_driver_failure_that_happens_again_still_fails(monkeypatch, tmp_path):
    scripted(monkeypatch, {("deluge", "rtorrent"): ["driver", "driver"]})
    r = matrix.run_matrix(["rtorrent", "deluge"], "2MiB", tmp_path, parallel=1)
    (e,) = [e for e in r["pairs"] if not e["ok"]]
    assert e["failure"] == DRIVER and e["first_attempt"]["failure"] == DRIVER
    assert r["passed"] == 3 and r["failures"] == {INTEROP: 0, DRIVER: 1}


@pytest.mark.parametrize("first, explained", [("interop", True), ("driver", False)])
def test_transmission_utp_explains_only_an_interop_failure(monkeypatch, tmp_path, first, explained):
    # a driver failure twice is not transmission's uTP bug, whatever the run without uTP does
    pair = ("transmission", "rtorrent")
    calls = scripted(monkeypatch, {pair: [first, first, first], (*pair, "noutp"): ["ok"]})
    r = matrix.run_matrix(["transmission", "rtorrent"], "2MiB", tmp_path, parallel=1)
    (e,) = [e for e in r["pairs"] if (e["seeder"], e["leecher"]) == pair]
    assert bool(e.get("explained")) is explained
    assert ((*pair, "noutp") in calls) is explained
    assert r["explained"] == int(explained) and r["passed"] == 3
