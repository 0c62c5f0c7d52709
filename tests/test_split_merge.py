"""A split swarm's results merged on the coordinator's clock (pure, over files), and a shard's
spec and sync directory."""
import csv
import json
from pathlib import Path

import pytest

from testbed.errors import InputError, RunError
from testbed.results import SAMPLE_FIELDS
from testbed.workers.merge import ShardResult, merge, shifts
from testbed.workers.shard import ShardSpec, Sync

PLAN = {"hosts": [{"name": n, "role": r} for n, r in
                  [("tracker", "tracker"), ("origin", "seeder"), ("a", "leecher"), ("b", "leecher")]],
        "t_min_s": 10.0, "t_min_terms": {"seed_upload": 10.0}}


def shard(root: Path, worker: str, start: float, peers: list[dict], status="complete") -> Path:
    d = root / worker / f"run-{worker}"
    d.mkdir(parents=True)
    (d / "events.jsonl").write_text("\n".join(json.dumps(e) for e in [
        {"kind": "run_start", "time": start - 5, "t": -5.0},
        {"kind": "swarm_start", "time": start + 0.25, "t": 0.25},
        {"kind": "run_end", "time": start + 30, "t": 30.0}]) + "\n{cut sho")
    with (d / "samples.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, SAMPLE_FIELDS, extrasaction="ignore")
        w.writeheader()
        for p in peers:
            w.writerow({"t": "1.000", "t_if": "1.001", "peer": p["name"]})
    (d / "summary.json").write_text(json.dumps({"run_id": f"run-{worker}", "status": status, "error": None,
                                                "shaper": "userspace", "peers": peers}))
    return d


def peer(name, role, arrived, completed=None):
    return {"name": name, "role": role, "arrived_s": arrived, "completed": completed is not None,
            "completed_at_s": completed, "completion_s": None if completed is None else completed - arrived,
            "left_s": None, "seeding": {"stopped_s": None}}


def test_shards_are_moved_onto_the_earliest_start_on_the_coordinators_clock(tmp_path):
    # w2's clock is 2 s ahead; its swarm started 0.5 s after w1's on the coordinator's clock
    s1 = shard(tmp_path, "w1", 1000.0, [peer("origin", "seeder", 0.0), peer("a", "leecher", 0.1, 20.0)])
    s2 = shard(tmp_path, "w2", 1002.5, [peer("b", "leecher", 0.1, 22.0)])
    shards = [ShardResult("w1", s1, offset_s=0.0, offset_error_s=1e-4), ShardResult("w2", s2, offset_s=2.0)]
    assert shifts(shards) == {"w1": 0.0, "w2": pytest.approx(0.5)}
    out = tmp_path / "out"
    out.mkdir()
    s = merge(out, "run", PLAN, {"tracker": "w1", "origin": "w1", "a": "w1", "b": "w2"}, shards)
    assert s["status"] == "complete" and not s["partial"] and s["error"] is None
    by = {p["name"]: p for p in s["peers"]}
    assert [p["name"] for p in s["peers"]] == ["origin", "a", "b"]
    assert by["b"]["completed_at_s"] == 22.5 and by["b"]["arrived_s"] == 0.6 and by["b"]["completion_s"] == 21.9
    assert by["a"]["completed_at_s"] == 20.0 and by["b"]["worker"] == "w2"
    assert s["swarm_completion_s"] == 22.5 and s["leechers_completed"] == 2 == s["leechers"]
    assert s["workers"]["w2"]["shift_s"] == 0.5 and s["workers"]["w2"]["hosts"] == ["b"]
    rows = list(csv.DictReader((out / "samples.csv").open()))
    assert [(r["peer"], r["t"], r["t_if"]) for r in rows] == [("a", "1.000", "1.001"), ("origin", "1.000", "1.001"),
                                                               ("b", "1.500", "1.501")]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [(e["worker"], e["kind"], e["t"]) for e in events if e["kind"] == "swarm_start"] == \
        [("w1", "swarm_start", 0.25), ("w2", "swarm_start", 0.75)]


def test_a_lost_worker_is_named_and_the_others_kept(tmp_path):
    s1 = shard(tmp_path, "w1", 1000.0, [peer("origin", "seeder", 0.0), peer("a", "leecher", 0.1, 20.0)])
    shards = [ShardResult("w1", s1), ShardResult("w2", None, problem="lost: worker w2 is unreachable")]
    out = tmp_path / "out"
    out.mkdir()
    s = merge(out, "run", PLAN, {"tracker": "w1", "origin": "w1", "a": "w1", "b": "w2"}, shards)
    assert s["status"] == "failed" and s["partial"] and s["error"] == "worker w2: lost: worker w2 is unreachable"
    assert s["workers"]["w2"]["status"] == "lost" and s["workers"]["w1"]["problem"] is None
    assert s["swarm_completion_s"] is None and s["leechers_completed"] == 1 and s["leechers"] == 2


def test_a_shard_that_timed_out_makes_the_swarm_time_out(tmp_path):
    s1 = shard(tmp_path, "w1", 1000.0, [peer("a", "leecher", 0.1, None)], status="timeout")
    s2 = shard(tmp_path, "w2", 1000.0, [peer("b", "leecher", 0.1, 5.0)])
    out = tmp_path / "out"
    out.mkdir()
    s = merge(out, "run", PLAN, {"tracker": "w1", "origin": "w1", "a": "w1", "b": "w2"},
              [ShardResult("w1", s1), ShardResult("w2", s2)])
    assert s["status"] == "timeout" and "w1: its shard ended timeout" in s["error"]
    assert s["swarm_completion_s"] is None
    # a failed shard beside a timed-out one: the swarm failed
    s3 = shard(tmp_path, "w3", 1000.0, [], status="failed")
    s = merge(out, "run", PLAN, {"tracker": "w1", "origin": "w1", "a": "w1", "b": "w3"},
              [ShardResult("w1", s1), ShardResult("w3", s3)])
    assert s["status"] == "failed"


def spec(**over):
    d = {"run_id": "x-20261126-000000-abcdef", "worker": "w2", "first": "w1", "placement": {"a": "w1", "b": "w2"},
         "underlays": {"w1": "198.19.252.2", "w2": "198.19.252.3"}}
    d.update(over)
    return d


def test_a_spec_round_trips_and_bad_ones_are_refused_naming_what(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec()))
    s = ShardSpec.load(path)
    assert s.shard_run_id.startswith("x-20261126-000000-w2-") and ShardSpec.load(path) == s
    path.write_text(s.to_json())
    assert ShardSpec.load(path) == s
    for bad, words in [(spec(underlays={"w1": "10.0.0.1", "w2": "198.19.252.3"}), "underlays.w1"),
                       (spec(placement={"a": "w3"}), "w3"), ({"run_id": 1}, "not a shard's spec")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(InputError, match=words):
            ShardSpec.load(path)
    path.write_text("{")
    with pytest.raises(InputError, match="not a shard's spec"):
        ShardSpec.load(path)


def test_sync_marks_stages_whole_and_waits_for_the_coordinator(tmp_path):
    s = Sync(tmp_path / "sync")
    s.mark("ready")
    assert (tmp_path / "sync" / "state").read_text() == "ready\n"
    s.mark("seeded")
    s.mark("ready")                     # a stage is marked once
    assert (tmp_path / "sync" / "state").read_text() == "seeded\n"
    (tmp_path / "sync" / "go").touch()
    s.wait("go", 1.0)
    with pytest.raises(RunError, match="did not say 'start'"):
        s.wait("start", 0.05)
    (tmp_path / "sync" / "abort").touch()
    with pytest.raises(RunError, match="aborted"):
        s.wait("start", 1.0)


def test_a_shard_whose_coordinator_went_silent_ends(tmp_path):
    """The heartbeat's silence past LOST_S ends the shard with a RunError that says why (the
    probes themselves go over the underlay: tests/integration/test_split.py cuts a worker)."""
    from testbed.workers.shard import LOST_S

    class Silent:
        silent = 0.0

        def silent_s(self):
            return self.silent
    beat = Silent()
    s = Sync(tmp_path / "sync", heartbeat=beat)
    s.check()
    beat.silent = LOST_S - 0.1
    assert s.arrived("end") is False
    beat.silent = LOST_S + 0.1
    with pytest.raises(RunError, match="lost the coordinator: it has not answered for 30 s"):
        s.check()
    with pytest.raises(RunError, match="lost the coordinator"):
        s.wait("start", 1.0)


def test_every_playbook_passes_ansibles_syntax_check(tmp_path):
    """What Ansible itself says of each playbook the testbed runs (a typo in one otherwise
    shows only when a swarm is spread over workers)."""
    import subprocess

    from testbed.workers.ansible import PLAYBOOKS, ansible_binary
    inv = tmp_path / "inv.yaml"
    inv.write_text("workers:\n  hosts:\n    w1: {ansible_host: 198.19.252.60}\n")
    books = sorted(PLAYBOOKS.glob("*.yml"))
    assert {"shard.yml", "shard-end.yml", "run.yml"} <= {b.name for b in books}
    for book in books:
        r = subprocess.run([ansible_binary(), "--syntax-check", "-i", str(inv), "-e", "testbed_workers=workers testbed_worker=w1",
                            str(book)], capture_output=True, text=True, env={"ANSIBLE_NOCOLOR": "1", "PATH": "/usr/bin:/bin"})
        assert r.returncode == 0, (book.name, r.stderr[-500:])


def test_each_worker_needs_the_images_of_its_hosts():
    from testbed.images import load_image
    from testbed.model import load_experiment
    from testbed.plan import plan
    from testbed.plan.placement import Worker, place
    from testbed.workers.images import archive_name, needed
    whole = plan(load_experiment(Path(__file__).resolve().parent.parent / "experiments" / "mixed-clients.yaml"),
                 "t-20261126-000000-abcdef")
    at = place(whole, [Worker("w1"), Worker("w2")])
    want = needed(whole, at)
    for w in ("w1", "w2"):
        assert want[w] == sorted({load_image(h.image).tag for h in whole.hosts if at[h.name] == w})
    assert load_image("tracker").tag in want["w1"]
    assert archive_name("testbed/tracker:ab12") == "testbed_tracker_ab12.tar"


def test_a_signal_during_a_playbook_is_held_and_the_handlers_restored():
    """What cancels a playbook (ansible-runner polls the flag) instead of interrupting it
    midway; afterwards the CLI's own handlers are back (ansible-runner's default would have
    replaced them for good)."""
    import os
    import signal

    from testbed.workers.ansible import cancel_on_signal
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with cancel_on_signal() as hit:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        assert hit == [signal.SIGTERM, signal.SIGINT]
    assert {s: signal.getsignal(s) for s in before} == before


def table(path: Path, fields: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)


def test_meters_and_population_are_merged_on_one_clock(tmp_path):
    from testbed.results import HOST_FIELDS, METER_FIELDS, SWARM_FIELDS
    s1 = shard(tmp_path, "w1", 1000.0, [peer("origin", "seeder", 0.0), peer("a", "leecher", 0.1, 20.0)])
    s2 = shard(tmp_path, "w2", 1000.3, [peer("b", "leecher", 0.1, 22.0)])
    swarm_row = lambda t, online, seeds: {"t": t, "online": online, "seeds_online": seeds,  # noqa: E731
                                          "leechers_online": online - seeds, "paused": 0, "offline": 0, "crashed": 0,
                                          "gone": 0, "copies": 1.5}
    # w1's swarm ends first (a lost or aborted shard): w2's later rows still count
    table(s1 / "swarm.csv", SWARM_FIELDS, [swarm_row(1.0, 2, 1), swarm_row(2.0, 2, 2), swarm_row(3.0, 2, 2)])
    table(s2 / "swarm.csv", SWARM_FIELDS, [swarm_row(1.0, 1, 0)] + [swarm_row(t, 1, 1) for t in (2.0, 3.0, 4.0, 5.0, 6.0)])
    table(s1 / "meter.csv", METER_FIELDS, [{"t": 1.0, "scope": "peer", "name": "a", "ip_bytes_up": 10}])
    table(s2 / "meter.csv", METER_FIELDS, [{"t": 0.5, "scope": "peer", "name": "b", "ip_bytes_up": 20}])
    table(s1 / "host.csv", HOST_FIELDS, [{"t": 1.0, "cpu_busy": 0.5}])
    table(s2 / "host.csv", HOST_FIELDS, [{"t": 1.0, "cpu_busy": 0.25}])
    out = tmp_path / "out"
    out.mkdir()
    merge(out, "run", PLAN, {"tracker": "w1", "origin": "w1", "a": "w1", "b": "w2"},
          [ShardResult("w1", s1), ShardResult("w2", s2)])
    read = lambda name: list(csv.DictReader((out / name).open()))  # noqa: E731
    assert [(r["t"], r["name"], r["ip_bytes_up"], r["worker"]) for r in read("meter.csv")] == \
        [("0.800", "b", "20", "w2"), ("1.000", "a", "10", "w1")]
    assert [(r["t"], r["cpu_busy"], r["worker"]) for r in read("host.csv")] == [("1.000", "0.5", "w1"),
                                                                               ("1.300", "0.25", "w2")]
    # a tick apart from w1's first row to w2's last (6.3): w2's row at 1.3 counts at 1, and w1
    # counts until a tick past its last row (3)
    assert [(r["t"], r["online"], r["seeds_online"], r["leechers_online"], r["copies"]) for r in read("swarm.csv")] == \
        [("1.000", "3", "1", "2", ""), ("2.000", "3", "3", "0", ""), ("3.000", "3", "3", "0", ""),
         ("4.000", "3", "3", "0", ""), ("5.000", "1", "1", "0", ""), ("6.000", "1", "1", "0", "")]
    # the report reads it (an empty `copies` is not known, not a crash)
    from testbed.report import read_population
    population = read_population(out)
    assert [r["online"] for r in population] == [3, 3, 3, 3, 1, 1] and population[0]["copies"] != population[0]["copies"]
    assert not (out / "links.csv").exists()         # no shard had one


def test_each_shard_s_homes_and_segments_are_merged_with_their_worker(tmp_path):
    s1 = shard(tmp_path, "w1", 1000.0, [peer("origin", "seeder", 0.0), peer("a", "leecher", 0.1, 20.0)])
    s2 = shard(tmp_path, "w2", 1000.3, [peer("b", "leecher", 0.1, 22.0)])
    home = lambda name, site: {"name": name, "site": site, "traffic": {"p2p_up": 1}}  # noqa: E731
    (s1 / "households.json").write_text(json.dumps({"homes": [home("h2", "core")], "segments": [],
                                                    "segment_policies": [], "note": "IP bytes"}))
    (s2 / "households.json").write_text(json.dumps({
        "homes": [home("h3", "seg"), home("h1", "seg")], "segments": [{"segment": "seg", "p2p_up": 2}],
        "segment_policies": [{"segment": "seg", "actions": 2}], "note": "IP bytes"}))
    out = tmp_path / "out"
    out.mkdir()
    plan = dict(PLAN, homes=[{"name": n} for n in ("h1", "h2", "h3")])
    s = merge(out, "run", plan, {"tracker": "w1", "origin": "w1", "a": "w1", "b": "w2"},
              [ShardResult("w1", s1), ShardResult("w2", s2)])
    homes = json.loads((out / "households.json").read_text())
    assert [(h["name"], h["worker"]) for h in homes["homes"]] == [("h1", "w2"), ("h2", "w1"), ("h3", "w2")]
    assert homes["segments"] == [{"segment": "seg", "p2p_up": 2, "worker": "w2"}]
    assert homes["segment_policies"] == [{"segment": "seg", "actions": 2, "worker": "w2"}]
    assert homes["note"] == "IP bytes" and s["homes"] == 3


def test_availability_adds_up_every_shard_s_pieces_at_one_tick(tmp_path):
    """w1's peers hold pieces 0 and 1, w2's pieces 1 and 2 of three: neither shard has a full
    copy, the swarm has one; then w1's peers leave and the full copy is lost."""
    from testbed.results import PIECE_FIELDS, SWARM_FIELDS
    s1 = shard(tmp_path, "w1", 1000.0, [peer("origin", "seeder", 0.0), peer("a", "leecher", 0.1, 20.0)])
    s2 = shard(tmp_path, "w2", 1000.0, [peer("b", "leecher", 0.1, 22.0)])
    row = lambda t, online: {"t": t, "online": online, "seeds_online": 0, "leechers_online": online,  # noqa: E731
                             "paused": 0, "offline": 0, "crashed": 0, "gone": 0, "copies": ""}
    table(s1 / "swarm.csv", SWARM_FIELDS, [row(1.0, 2), row(2.0, 2), row(3.0, 0)])
    table(s1 / "pieces.csv", PIECE_FIELDS, [{"t": 1.0, "counts": "1 1 0"},
                                            {"t": 2.0, "counts": "2 1 0"},
                                            {"t": 3.0, "counts": ""}])
    table(s2 / "swarm.csv", SWARM_FIELDS, [row(1.0, 1), row(2.0, 1), row(3.0, 1)])
    table(s2 / "pieces.csv", PIECE_FIELDS, [{"t": 1.0, "counts": "0 1 1"},
                                            {"t": 2.0, "counts": "0 1 1"},
                                            {"t": 3.0, "counts": "0 1 1"}])
    out = tmp_path / "out"
    out.mkdir()
    s = merge(out, "run", PLAN, {"tracker": "w1", "origin": "w1", "a": "w1", "b": "w2"},
              [ShardResult("w1", s1), ShardResult("w2", s2)])
    copies = [(r["t"], r["copies"]) for r in csv.DictReader((out / "swarm.csv").open())]
    # [1 2 1]: one copy and a third; [2 2 1]: one and two thirds; [0 1 1]: none, two thirds
    assert copies == [("1.000", "1.3333"), ("2.000", "1.6667"), ("3.000", "0.6667")]
    assert s["availability"] == {"min_copies": 0.6667, "last_full_copy_lost_s": 3.0, "full_copy_back_s": None}
    # a shard whose row has no pieces row (killed between the two) makes that tick unknown
    table(s2 / "pieces.csv", PIECE_FIELDS, [{"t": 1.0, "counts": "0 1 1"}])
    merge(out, "run", PLAN, {"tracker": "w1", "origin": "w1", "a": "w1", "b": "w2"},
          [ShardResult("w1", s1), ShardResult("w2", s2)])
    assert [r["copies"] for r in csv.DictReader((out / "swarm.csv").open())] == ["1.3333", "", ""]
