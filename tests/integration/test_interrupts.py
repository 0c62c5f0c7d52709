"""Interruptions and faults from outside the run: Ctrl-C and SIGTERM during bring-up, mid-run
and teardown (a second one included), and containers killed under the run (the tracker, the
origin, a client by its memory limit). Each run either finishes or fails with a reason that
names what happened; events record each fault; the teardown always completes."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import experiment_dict
from tests.integration.conftest import nothing_left

EXE = Path(sys.executable).parent / "testbed"


def start(tmp_path: Path, data: dict, run_id: str) -> tuple[subprocess.Popen, Path]:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    # as from a terminal: SIGINT at its default, whatever this test process inherited (a job
    # started in the background by a non-interactive shell ignores SIGINT, and so would every
    # process it starts: Python then raises no KeyboardInterrupt)
    proc = subprocess.Popen([str(EXE), "run", str(path), "--results", str(tmp_path), "--run-id", run_id],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return proc, tmp_path / run_id


def wait_for(proc: subprocess.Popen, run_dir: Path, kind: str, timeout: float = 90, poll: float = 0.05) -> None:
    events = run_dir / "events.jsonl"
    deadline = time.monotonic() + timeout
    while not (events.exists() and f'"kind": "{kind}"' in events.read_text()):
        assert proc.poll() is None, f"the run ended before '{kind}'"
        assert time.monotonic() < deadline, f"no '{kind}' within {timeout:g} s"
        time.sleep(poll)


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_during_bring_up_tears_down_and_keeps_partial_results(docker_client, tmp_path, sig):
    """Sent the moment the containers exist, while the network is being built."""
    run_id = f"t-20261126-000000-1b{sig:04x}"
    proc, run_dir = start(tmp_path, experiment_dict(content={"size": "8MiB"}), run_id)
    wait_for(proc, run_dir, "containers")
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == 130, proc.stderr.read()
    s = summary(run_dir)
    assert s["status"] == "failed" and s["error"] == "interrupted" and s["partial"] is True
    assert nothing_left(docker_client, run_id)


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_second_interrupt_during_teardown_does_not_cut_it_short(docker_client, tmp_path, second):
    """Ctrl-C mid-run starts the teardown; a second signal sent once it is removing the run
    (its "teardown" event) lands in it, is noted, and the teardown completes. This swarm's
    removal took several seconds once; since its containers are killed at once and its links
    deleted as a group it takes about 0.2 s, so the event is looked for every 5 ms rather than
    the signal sent after a fixed wait. Expected false failures: under 1 %: this test would
    have to be kept off the CPU for over 0.15 s between seeing the event and signalling."""
    run_id = f"t-20261126-000000-2d{second:04x}"
    proc, run_dir = start(tmp_path, experiment_dict(content={"size": "8MiB"}), run_id)
    wait_for(proc, run_dir, "swarm_start")
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    wait_for(proc, run_dir, "teardown", poll=0.005)
    proc.send_signal(second)
    assert proc.wait(timeout=120) == 130
    assert "tearing the run down" in proc.stderr.read()
    s = summary(run_dir)
    assert s["status"] == "failed" and s["error"] == "interrupted" and s["partial"] is True
    deferred = [e for e in events(run_dir) if e["kind"] == "interrupts_deferred"]
    assert deferred and deferred[0]["signals"] == [signal.Signals(second).name]
    assert nothing_left(docker_client, run_id)


def test_a_killed_tracker_is_recorded_and_the_swarm_completes_without_it(docker_client, tmp_path):
    """The peers already had each other from the tracker's first answers: killed 3 s in, the
    tracker is an event, and the swarm still completes. The leechers run under limits, which
    are their containers' as Docker reports them."""
    run_id = "t-20261126-000000-3c0001"
    d = experiment_dict(content={"size": "8MiB"}, timeout="3m")
    d["peers"][0]["limits"] = {"memory": "256MiB", "cpus": 0.5}
    proc, run_dir = start(tmp_path, d, run_id)
    wait_for(proc, run_dir, "swarm_start")
    hc = docker_client.containers.get(f"tb-{run_id}-leecher1").attrs["HostConfig"]
    assert hc["Memory"] == 256 * 2**20 and hc["MemorySwap"] == 256 * 2**20 and hc["NanoCpus"] == 5 * 10**8
    assert docker_client.containers.get(f"tb-{run_id}-origin").attrs["HostConfig"]["Memory"] == 0
    time.sleep(3)
    docker_client.containers.get(f"tb-{run_id}-tracker").kill()
    assert proc.wait(timeout=240) == 0, proc.stderr.read()
    died = [e for e in events(run_dir) if e["kind"] == "container_died"]
    assert [e["host"] for e in died] == ["tracker"] and died[0]["exit_code"] == 137 and not died[0]["oom"]
    s = summary(run_dir)
    assert s["status"] == "complete" and s["container_deaths"][0]["host"] == "tracker"
    assert all(p["sha256_ok"] for p in s["peers"])
    assert nothing_left(docker_client, run_id)


def test_a_killed_origin_fails_the_run_with_the_reason(docker_client, tmp_path):
    """Killed 2 s in, when no leecher can hold a full copy (1 Mbit/s down for 8 MiB), the
    origin's death is why the swarm cannot complete: the run fails saying so."""
    run_id = "t-20261126-000000-3c0002"
    d = experiment_dict(content={"size": "8MiB"}, timeout="30s")
    d["peers"][0]["access"]["down"] = "1mbit"
    proc, run_dir = start(tmp_path, d, run_id)
    wait_for(proc, run_dir, "swarm_start")
    time.sleep(2)
    docker_client.containers.get(f"tb-{run_id}-origin").kill()
    assert proc.wait(timeout=120) == 1
    s = summary(run_dir)
    assert s["status"] == "failed" and s["partial"] is True
    assert s["error"] == "containers died during the run: origin (exit 137)", s["error"]
    origin = next(p for p in s["peers"] if p["name"] == "origin")
    assert origin["left_reason"] == "container_died"
    assert not any(p["completed"] for p in s["peers"] if p["role"] == "leecher")
    assert nothing_left(docker_client, run_id)


def test_a_client_beyond_its_memory_limit_fails_the_run_saying_so(docker_client, tmp_path):
    """deluged needs about 44 MiB at rest (benchmarks/clients.py); under limits.memory 32MiB
    the kernel either kills it (Docker's oom event, seen in 2 of 3 runs) or it thrashes in
    reclaim and never answers (its cgroup's high-water mark at the limit, seen in 1 of 3):
    either way the run fails naming the host and the limit."""
    d = experiment_dict(content={"size": "4MiB"}, timeout="1m")
    d["peers"][0].update(client="deluge", count=1, limits={"memory": "32MiB"})
    run_id = "t-20261126-000000-3c0003"
    proc, run_dir = start(tmp_path, d, run_id)
    assert proc.wait(timeout=180) == 1
    s = summary(run_dir)
    assert s["status"] == "failed", s["error"]
    assert "leecher: the container's memory limit (limits.memory) was reached" in s["error"], s["error"]
    leecher = next(p for p in s["peers"] if p["name"] == "leecher")
    assert s["out_of_memory"] == ["leecher"] or leecher["resources"]["mem_peak_bytes"] >= 0.99 * 32 * 2**20, \
        (s["out_of_memory"], leecher)
    assert nothing_left(docker_client, run_id)


def test_a_run_the_disk_cannot_hold_is_refused_before_anything_starts(docker_client, tmp_path):
    """Every client holds a copy of the content: 900 GiB for 3 clients is more than any disk
    here. Refused with the numbers, exit 2, no run directory, no container."""
    import shutil
    size = "900GiB"
    assert 4 * 900 * 2**30 > shutil.disk_usage(tmp_path).free
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment_dict(content={"size": size})))
    before = docker_client.containers.list(all=True, filters={"label": "testbed.run"})
    r = subprocess.run([str(EXE), "run", str(path), "--results", str(tmp_path / "r")], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "MiB of disk" in r.stderr and "is free" in r.stderr
    assert not (tmp_path / "r").exists()
    assert docker_client.containers.list(all=True, filters={"label": "testbed.run"}) == before
