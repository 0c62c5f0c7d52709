"""One swarm spread over two workers of the one-machine harness (`testbed workers split`):
Ansible starts each worker's shard and keeps them in step, the site's switch is stretched over
VXLAN, and the results come back merged. Evidence from the far end: what each peer's client
downloaded and verified, on which worker, and what is left on the machine."""
from __future__ import annotations

import csv

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from testbed.analysis import stats
from testbed.plan.shard import shard_run_id
from tests.conftest import experiment_dict
from tests.integration.conftest import cli, nothing_left

# the origin's line is the bottleneck (Kumar-Ross: 6 x 4 MiB over 4 + 6 x 1 Mbit/s, 20 s),
# so completion times depend on the links, not on where the containers run
SWARM = experiment_dict(name="split", content={"size": "4MiB"}, timeout="3m",
                        seeders=[{"name": "origin", "client": "transmission", "access": {"up": "4mbit", "down": "20mbit"}}],
                        peers=[{"name": "leecher", "count": 6, "client": "transmission",
                                "access": {"up": "1mbit", "down": "16mbit"}}])


def experiment(tmp_path: Path) -> Path:
    path = tmp_path / "exp" / "split.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(SWARM))
    return path


def completions(run_dir: Path) -> tuple[dict, list[float]]:
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary, [p["completion_s"] for p in summary["peers"] if p["role"] == "leecher"]


def test_a_swarm_split_over_two_workers_completes_as_on_one(two_workers, tmp_path, docker_client):
    """The same experiment on one worker (`workers run`) and split over two: every leecher
    completes with the origin's file in both, and the two runs' mean completion times agree
    within their 99 % confidence intervals (the intervals overlap).
    Expected false failures: below 0.1 % a run. Completion here is bound by the origin's
    line; in 3 runs each way the means were 45.2-48.2 s (one worker) and 44.3-46.6 s (two),
    a spread of about 1.5 s (sd) each, so their difference has an sd of about 2 s; the 99 %
    intervals' half-widths summed to 8 s or more in every pair (95 %: 5.3 s or more, which
    would put a false failure near 1 %)."""
    h, exp = two_workers, experiment(tmp_path)
    inv = str(h.inventory_path())
    r = cli("workers", "run", str(exp), "--inventory", inv, "--worker", "w1", "--results", str(tmp_path / "one"),
            timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    one, t_one = completions(next((tmp_path / "one").iterdir()))
    r = cli("workers", "split", str(exp), "--inventory", inv, "--results", str(tmp_path / "two"), timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    run_dir = next((tmp_path / "two").iterdir())
    two, t_two = completions(run_dir)
    assert two["status"] == "complete" and two["leechers_completed"] == 6, two["error"]
    # split: the tracker and the origin on the first worker, leechers on both; a leecher on
    # the second verified the origin's file, all of which came from the first over the tunnel
    where = {p["name"]: p["worker"] for p in two["peers"]}
    assert where["origin"] == "w1" and "w2" in where.values()
    assert all(p["sha256_ok"] for p in two["peers"] if p["role"] == "leecher")
    assert all(p["bytes_down"] >= SIZE for p in two["peers"] if p["worker"] == "w2")
    assert {w: i["status"] for w, i in two["workers"].items()} == {"w1": "complete", "w2": "complete"}
    # ... as the tunnels' own counters say: the file, at least, went from the first to the second
    tunnel = {w: i["tunnel"] for w, i in two["workers"].items()}
    assert tunnel["w1"]["tx_bytes"] >= SIZE and tunnel["w2"]["rx_bytes"] >= SIZE, tunnel
    # one clock: every worker's offset measured (the harness's share this machine's: within
    # their error) and the shards' starts within a second of each other
    for info in two["workers"].values():
        assert abs(info["clock_offset_s"]) <= info["clock_error_s"] + 1e-4 and 0 <= info["shift_s"] < 1.0
    rows = (run_dir / "samples.csv").read_text().splitlines()
    assert {line.split(",")[2] for line in rows[1:]} == {p["name"] for p in two["peers"] if p["role"] != "tracker"}
    # each peer's meters come from the worker that ran it, its counters past the file; the
    # whole swarm's population adds up both shards' (as many peers online at once as on one)
    meter = [r for r in csv.DictReader((run_dir / "meter.csv").open()) if r["scope"] == "peer"]
    assert {(r["name"], r["worker"]) for r in meter} == {(n, w) for n, w in where.items() if n != "tracker"}
    assert all(max(int(r["ip_bytes_down"]) for r in meter if r["name"] == n) >= SIZE
               for n, w in where.items() if w == "w2")
    peak = lambda d: max(int(r["online"]) for r in csv.DictReader((d / "swarm.csv").open()))  # noqa: E731
    assert peak(run_dir) == peak(next((tmp_path / "one").iterdir())) == 7
    # the file's availability from both shards' clients' own piece maps, added up piece by
    # piece: more copies than either worker's peers could hold alone (w1 has 3, w2 4)
    copies = [float(r["copies"]) for r in csv.DictReader((run_dir / "swarm.csv").open()) if r["copies"]]
    assert copies and max(copies) > 4.5 and two["availability"]["min_copies"] >= 1, (copies, two["availability"])
    # the merged directory is a run directory as the analysis knows it
    rep = cli("report", str(run_dir), timeout=120)
    assert rep.returncode == 0 and "worker" in rep.stdout and "6/6 leechers completed" in rep.stdout, rep.stderr
    a, b = stats.mean_ci(t_one, 0.99), stats.mean_ci(t_two, 0.99)
    print(f"one worker {a.estimate:.1f} s [{a.low:.1f}, {a.high:.1f}], two {b.estimate:.1f} s [{b.low:.1f}, {b.high:.1f}]")
    assert a.low <= b.high and b.low <= a.high, (t_one, t_two)
    for s in (one, two):
        assert nothing_left(docker_client, s["run_id"])
    for info in two["workers"].values():
        assert nothing_left(docker_client, info["shard_run_id"])
    assert not (h.dir / "work").exists() or not any((h.dir / "work").iterdir())     # no copy kept


SIZE = 4 * 1024 * 1024


# a segment of two homes, one seeding (forwarded), one with background traffic and probes,
# under an RFC 6057 policy; the tracker, the internet server and three leechers at the core
HOMES = experiment_dict(
    name="split-homes", seed=5, content={"size": "6MiB"}, timeout="3m",
    topology={"generator": "isp", "isps": [{"name": "isp", "segments": 1, "homes": 2, "subscribed_up": "2mbit",
                                            "subscribed_down": "8mbit", "oversubscription": 2, "queue": 100}]},
    tracker={"site": "isp"},
    households=[{"name": "heavy", "site": "isp1", "access": {"up": "2mbit", "down": "8mbit", "queue": 50},
                 "probe": None},
                {"name": "light", "site": "isp1", "access": {"up": "2mbit", "down": "8mbit", "queue": 50},
                 "background": {"up": "300kbit"}, "probe": "500ms"}],
    seeders=[{"name": "hs", "client": "transmission", "household": "heavy", "forward": True}],
    peers=[{"name": "far", "count": 3, "client": "transmission", "site": "isp",
            "access": {"up": "2mbit", "down": "16mbit"}}],
    policies=[{"segment": "isp1", "congestion": {"window": "5s", "check_every": "1s"}}])


def test_households_and_a_segment_s_policy_run_on_the_worker_that_holds_them(two_workers, tmp_path,
                                                                               docker_client):
    """The segment (its two homes, its aggregation link and its RFC 6057 policy) on the second
    worker, the tracker and the internet server on the first: the home's seeder, behind its
    router's NAT, serves the leechers over the tunnel; the light home's pings and background
    upload reach the server on the other worker (its answers and TCP acks come back); the
    segment's own counters, read on the second worker, show the upload crossing its link, and
    its policy marks the seeding home. Expected false failures: below 0.1 % a run; the
    seeder's 2 Mbit/s line and the background's 300 kbit/s keep the segment's 2 Mbit/s
    upstream past the policy's 70 % for most of the run (first run: the seeder marked at
    16 s at 91 % of the link, the swarm complete at 61 s), where a 5 s window suffices."""
    h = two_workers
    path = tmp_path / "exp" / "homes.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(HOMES))
    r = cli("workers", "split", str(path), "--inventory", str(h.inventory_path()), "--results", str(tmp_path / "r"),
            timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    run_dir = next((tmp_path / "r").iterdir())
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "complete" and s["leechers_completed"] == 3 and s["homes"] == 2, s["error"]
    placed = json.loads((run_dir / "manifest.json").read_text())["placement"]
    assert {placed[n] for n in ("heavy", "light", "hs")} == {"w2"}
    assert {placed[n] for n in ("tracker", "internet")} == {"w1"}
    peers = {p["name"]: p for p in s["peers"]}
    # the seeder's own count: it served the file from behind its router on the second worker
    assert peers["hs"]["worker"] == "w2" and peers["hs"]["bytes_up"] >= 6 * 2 ** 20
    assert all(p["sha256_ok"] for p in s["peers"] if p["role"] == "leecher")
    homes = {x["name"]: x for x in json.loads((run_dir / "households.json").read_text())["homes"]}
    assert {n: x["worker"] for n, x in homes.items()} == {"heavy": "w2", "light": "w2"}
    # the light home's probes answered by the server on w1, and its background upload carried
    # there (a TCP stream: without the server's acks, no more than a window would leave)
    assert homes["light"]["rtt"]["answered"] >= 10, homes["light"]["rtt"]
    assert homes["light"]["traffic"]["other_up"] >= 300e3 / 8 * 10, homes["light"]["traffic"]
    # the segment's aggregation link lives with it, and its counters saw the seeder's upload
    seg = [r for r in csv.DictReader((run_dir / "meter.csv").open()) if r["scope"] == "segment"
           and "isp1" in r["name"]]
    assert seg and {r["worker"] for r in seg} == {"w2"}
    assert max(int(r["ip_bytes_up"]) for r in seg) >= 6 * 2 ** 20
    marks = list(csv.DictReader((run_dir / "policy.csv").open()))
    assert {(m["host"], m["worker"]) for m in marks if m["action"] == "mark" and m["direction"] == "up"} \
        == {("heavy", "w2")}, marks
    for info in s["workers"].values():
        assert nothing_left(docker_client, info["shard_run_id"])


def test_a_worker_lost_mid_run_is_named_and_the_others_results_kept(two_workers, tmp_path, docker_client):
    """The second worker loses the underlay once the swarm runs: the summary names it as lost,
    and the first worker's shard runs to its end (its leechers complete from the origin
    there) with its results kept. The lost worker's shard, its heartbeat unanswered, ends
    itself: its containers are gone (the Docker daemon's list) and its own summary says why,
    long before its timeout."""
    h, exp = two_workers, experiment(tmp_path)
    log = tmp_path / "progress.txt"

    def cut_when_running():
        end = time.monotonic() + 300
        while time.monotonic() < end:
            if log.exists() and "task: its leechers done" in log.read_text():
                time.sleep(5)
                h.cut(1)
                return
            time.sleep(0.2)
    cutter = threading.Thread(target=cut_when_running, daemon=True)
    cutter.start()
    t0 = time.monotonic()
    exe = Path(sys.executable).parent / "testbed"
    with log.open("w") as err:
        r = subprocess.run([str(exe), "workers", "split", str(exp), "--inventory", str(h.inventory_path()),
                            "--results", str(tmp_path / "r")], stdout=subprocess.PIPE, stderr=err, text=True,
                           timeout=900)
    cutter.join()
    r.stderr = log.read_text()
    assert r.returncode == 1, r.stderr[-2000:]
    run_dir = next((tmp_path / "r").iterdir())
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "failed" and "worker w2: lost" in s["error"]
    assert s["workers"]["w2"]["problem"].startswith("lost") and s["workers"]["w1"]["problem"] is None
    kept = [p for p in s["peers"] if p["worker"] == "w1" and p["role"] == "leecher"]
    assert kept and all(p["completed"] and p["sha256_ok"] for p in kept)
    assert {p["worker"] for p in s["peers"]} == {"w1"}
    assert (run_dir / "shards" / "w1").is_dir() and not (run_dir / "shards" / "w2").exists()
    assert nothing_left(docker_client, s["workers"]["w1"]["shard_run_id"])
    assert "worker w2" in r.stdout + r.stderr
    # the lost worker's shard ends itself once the coordinator has not answered for LOST_S,
    # and tears its swarm down: well within its timeout (3 min and the margins, from the start)
    from testbed.workers.shard import LOST_S
    w2_run = shard_run_id(s["run_id"], "w2")
    while time.monotonic() - t0 < 240 and not nothing_left(docker_client, w2_run):
        time.sleep(2)
    assert nothing_left(docker_client, w2_run)
    own = next((h.dir / "work").glob(f"*-w2/results/{w2_run}/summary.json"))
    own = json.loads(own.read_text())
    assert own["status"] == "failed" and "lost the coordinator" in own["error"], own["error"]
    assert LOST_S <= float(own["error"].split("answered for ")[1].split(" s")[0]) < LOST_S + 5
    h.down()


def test_a_worker_that_cannot_start_its_shard_stops_the_swarm_before_it_starts(two_workers, tmp_path,
                                                                                  docker_client):
    """The second worker's testbed is missing: the split fails within the bring-up, naming the
    worker and the task, and the first worker's shard, told to abort, tears its hosts down."""
    h, exp = two_workers, experiment(tmp_path)
    inv = h.inventory_path()
    text = inv.read_text().replace("      testbed_netns: " + h.netns[1],
                                   "      testbed_netns: " + h.netns[1] + "\n      testbed_exe: /nonexistent/testbed")
    assert text != inv.read_text()
    inv.write_text(text)
    t = time.monotonic()
    r = cli("workers", "split", str(exp), "--inventory", str(inv), "--results", str(tmp_path / "r"), timeout=600)
    assert r.returncode == 1, r.stderr[-2000:]
    assert time.monotonic() - t < 240                  # not the bring-up's 600 s wait
    s = json.loads((next((tmp_path / "r").iterdir()) / "summary.json").read_text())
    assert s["status"] == "failed"
    problem = s["workers"]["w2"]["problem"]
    assert "worker w2" in problem and "the shard ended before it was ready" in problem and "not found" in problem
    assert s["workers"]["w1"]["shard_run_id"] == shard_run_id(s["run_id"], "w1")      # its results came back
    assert nothing_left(docker_client, shard_run_id(s["run_id"], "w1"))
    assert not any((h.dir / "work").iterdir())


def test_an_image_a_worker_lacks_is_copied_from_the_coordinator(tmp_path, docker_client):
    """playbooks/images.yml through workers/images.py: the worker reports the image it lacks,
    and loads the archive the coordinator saved (`docker save`), no registry. The harness's
    worker shares this machine's Docker daemon, so the image is saved first and then removed
    from the daemon: the worker lacks it, and only its `docker load` can bring it back."""
    import io
    import secrets
    import tarfile

    import docker.errors

    from testbed.workers import harness, images
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("probe")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"probe"))
    tag = f"testbed/probe:{secrets.token_hex(4)}"
    docker_client.api.import_image_from_data(data.getvalue(), repository=tag.split(":")[0], tag=tag.split(":")[1])
    local = tmp_path / "local"
    local.mkdir()
    h = harness.Harness(1, tmp_path / "harness")
    h.up()
    try:
        images.save(docker_client, [tag], local)
        docker_client.images.remove(tag)
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(tag)
        copied = images.ensure(h.inventory_path(), ["w1"], {"w1": [tag]}, "probe", local, client=docker_client)
        assert copied == {"w1": [tag]}
        assert docker_client.images.get(tag).tags == [tag]            # the worker's docker load put it back
        assert images.ensure(h.inventory_path(), ["w1"], {"w1": [tag]}, "probe", local, client=docker_client) == {}
        assert not (h.dir / "work").exists() or not any((h.dir / "work").iterdir())
    finally:
        h.down()
        try:
            docker_client.images.remove(tag)
        except docker.errors.ImageNotFound:
            pass


def test_an_interrupted_coordinator_ends_every_shard_and_keeps_their_results(two_workers, tmp_path, docker_client):
    """SIGINT to `workers split` while the swarm runs: every shard is told to abort, stops at
    its next tick and tears its swarm down, and what it measured comes back merged, marked
    as not complete. Nothing of either shard is left, nor the workers' copies."""
    h, exp = two_workers, experiment(tmp_path)
    log = tmp_path / "progress.txt"
    exe = Path(sys.executable).parent / "testbed"
    with log.open("w") as err:
        proc = subprocess.Popen([str(exe), "workers", "split", str(exp), "--inventory", str(h.inventory_path()),
                                 "--results", str(tmp_path / "r")], stdout=subprocess.PIPE, stderr=err, text=True)
        end = time.monotonic() + 300
        while "task: its leechers done" not in log.read_text() and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(5)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=600)
    assert proc.returncode not in (0, 1), log.read_text()[-2000:]
    run_dir = next((tmp_path / "r").iterdir())
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "failed" and s["partial"]
    for w in ("w1", "w2"):
        info = s["workers"][w]
        assert info["shard_run_id"] == shard_run_id(s["run_id"], w), info       # its results came back
        assert "aborted" in info["problem"] or "interrupted" in info["problem"], info
        assert nothing_left(docker_client, shard_run_id(s["run_id"], w))
    assert any(p["worker"] == "w2" for p in s["peers"]) and not any(p.get("completed") for p in s["peers"]
                                                                     if p["role"] == "leecher")
    assert not (h.dir / "work").exists() or not any((h.dir / "work").iterdir())


def test_what_cannot_be_split_is_refused_before_any_worker_is_reached(tmp_path):
    """Bad input and what cannot be spread over workers: exit 2, one sentence naming the file
    and why, and no worker contacted (the inventory's worker does not exist)."""
    inv = tmp_path / "inv.yaml"
    inv.write_text("workers:\n  hosts:\n    w1: {ansible_host: 198.19.252.60}\n")
    reps = tmp_path / "reps.yaml"
    reps.write_text(yaml.safe_dump(experiment_dict(repetitions=2)))
    r = cli("workers", "split", str(reps), "--inventory", str(inv), "--results", str(tmp_path / "r"))
    assert r.returncode == 2 and "one repetition at a time" in r.stderr and "unreachable" not in r.stderr
    assert len([line for line in r.stderr.splitlines() if line.startswith("testbed:")]) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncontent: {size: 16}\n")
    r = cli("workers", "split", str(bad), "--inventory", str(inv), "--results", str(tmp_path / "r"))
    assert r.returncode == 2 and "size" in r.stderr and "unreachable" not in r.stderr
    assert not (tmp_path / "r").exists()
