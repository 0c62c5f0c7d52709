"""The CLI as a user types it: bad input, timeouts, kill -9 then clean."""
import csv
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, experiment_dict
from tests.integration.conftest import nothing_left, cli


def write(tmp_path, data, name="exp.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def labelled_containers(client) -> list:
    return client.containers.list(all=True, filters={"label": "testbed.run"})


def _bad(case: str) -> tuple[dict, str]:
    d = experiment_dict()
    if case == "unknown key":
        d["peers"][0]["acess"] = d["peers"][0].pop("access")
        return d, "peers[0].acess"
    if case == "bad unit":
        d["peers"][0]["access"]["up"] = "2mbits"
        return d, "peers[0].access.up"
    if case == "negative rate":
        d["seeders"][0]["access"]["down"] = "-5mbit"
        return d, "seeders[0].access.down"
    if case == "unknown client":
        d["peers"][0]["client"] = "utorrent"
        return d, "peers[0].client"
    if case == "unknown topology":
        d["topology"] = "ring"
        return d, "topology"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["unknown key", "bad unit", "negative rate", "unknown client", "unknown topology"])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_input_exits_2_names_the_key_and_starts_nothing(docker_client, tmp_path, case, command):
    data, key = _bad(case)
    path = write(tmp_path, data)
    results = tmp_path / "results"
    args = [command, str(path)] + (["--results", str(results)] if command == "run" else [])
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and str(path) in lines[0]
    assert not results.exists()
    assert labelled_containers(docker_client) == []


def test_validate_and_show_config():
    r = cli("validate", str(ROOT / "experiments" / "quickstart.yaml"))
    assert r.returncode == 0 and "valid" in r.stdout and "Kumar-Ross minimum 29.8s" in r.stdout
    # the timeline of a churned experiment, as the run would write it, with nothing started
    r = cli("validate", str(ROOT / "experiments" / "arrivals-file.yaml"), "--timeline")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert r.returncode == 0 and [float(x["t"]) for x in rows if x["kind"] == "arrive"][1:] == \
        [0.0, 4.0, 5.0, 12.0, 30.0, 31.0, 45.0]
    r = cli("run", str(ROOT / "experiments" / "quickstart.yaml"), "--show-config")
    resolved = yaml.safe_load(r.stdout)
    assert r.returncode == 0 and resolved["topology"]["sites"] == ["s1"] and resolved["timeout"] == "5m"


def test_timeout_leaves_partial_results_and_exits_1(docker_client, tmp_path):
    # past transmission's first 10 s rechoke period, so that some bytes have moved
    d = experiment_dict(timeout="14s", content={"size": "8MiB"})
    d["peers"][0]["count"] = 1
    d["peers"][0]["access"]["down"] = "256kbit"
    r = cli("run", str(write(tmp_path, d)), "--results", str(tmp_path / "results"))
    assert r.returncode == 1, r.stderr
    (run_dir,) = (tmp_path / "results").iterdir()
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "timeout" and s["partial"] is True
    assert s["peers"][1]["completed"] is False and s["peers"][1]["bytes_down"] > 0
    assert "status: timeout" in r.stdout
    assert nothing_left(docker_client, s["run_id"])


def test_kill_9_then_clean_leaves_nothing_and_the_next_run_works(docker_client, tmp_path):
    d = experiment_dict(content={"size": "8MiB"}, timeout="2m")
    path = write(tmp_path, d)
    run_id = "t-20261124-000000-0dead9"
    exe = Path(sys.executable).parent / "testbed"
    proc = subprocess.Popen([str(exe), "run", str(path), "--results", str(tmp_path / "r1"), "--run-id", run_id],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    events = tmp_path / "r1" / run_id / "events.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if events.exists() and '"swarm_start"' in events.read_text():
            break
        assert proc.poll() is None, "the run ended before the swarm started"
        time.sleep(0.2)
    else:
        pytest.fail("the swarm did not start within 60 s")
    time.sleep(2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not nothing_left(docker_client, run_id)          # kill -9 gives no chance to clean
    r = cli("clean", run_id)
    assert r.returncode == 0, r.stderr
    assert nothing_left(docker_client, run_id)
    # the next run: a whole swarm across the dumbbell's shaped core link
    r = cli("run", str(ROOT / "experiments" / "dumbbell.yaml"), "--results", str(tmp_path / "r2"))
    assert r.returncode == 0, r.stdout + r.stderr
    (run_dir,) = (tmp_path / "r2").iterdir()
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "complete" and all(p["sha256_ok"] for p in s["peers"])
    assert s["swarm_completion_s"] >= s["t_min_s"]


def test_sigterm_tears_down_and_marks_the_run_failed(docker_client, tmp_path):
    path = write(tmp_path, experiment_dict(content={"size": "8MiB"}))
    run_id = "t-20261124-000000-0beef1"
    exe = Path(sys.executable).parent / "testbed"
    proc = subprocess.Popen([str(exe), "run", str(path), "--results", str(tmp_path), "--run-id", run_id],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    events = tmp_path / run_id / "events.jsonl"
    deadline = time.monotonic() + 60
    while not (events.exists() and '"swarm_start"' in events.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    s = json.loads((tmp_path / run_id / "summary.json").read_text())
    assert s["status"] == "failed" and s["error"] == "interrupted" and s["partial"] is True
    assert nothing_left(docker_client, run_id)


def test_doctor_passes_on_a_set_up_machine():
    r = cli("doctor")
    assert r.returncode == 0, r.stdout
    assert "tc htb" in r.stdout and "tc netem" in r.stdout


def test_open_vswitch_asked_for_where_it_does_not_exist(docker_client, tmp_path):
    from testbed.run.preflight import ovs_available
    if ovs_available():
        pytest.skip("this machine has Open vSwitch: the preflight refusal cannot be shown here")
    d = experiment_dict(topology={"switch": "ovs", "sites": ["s1"]})
    r = cli("run", str(write(tmp_path, d)), "--results", str(tmp_path / "results"))
    assert r.returncode == 2 and "topology.switch: ovs" in r.stderr
    assert not (tmp_path / "results").exists() and labelled_containers(docker_client) == []
