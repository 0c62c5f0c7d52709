"""Each behaviour knob, obeyed by every client that takes it, measured from the wire.

Six swarms run side by side (three at a time). Each test reads one of them: the
samples (per second, per peer) and the summary's wire counters, both written by the
testbed from each peer's own network namespace.
"""
import csv
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from testbed.clients import DRIVERS
from tests.integration.conftest import nothing_left

SHORT = {"transmission": "tr", "qbittorrent": "qb", "aria2": "ar", "libtorrent": "lt", "rtorrent": "rt",
         "deluge": "dl"}
BLOCK = 16 * 1024
FAST = {"up": "4mbit", "down": "20mbit"}


def peer(name, client, access=FAST, **behaviour):
    # TCP only where the client allows, so that every connection is visible to `ss`
    if client in ("transmission", "qbittorrent", "libtorrent"):
        behaviour.setdefault("utp", False)
    return {"name": name, "client": client, "access": access, **({"behaviour": behaviour} if behaviour else {})}


def swarm(name, seeders, peers, size="2MiB", timeout="100s"):
    return {"name": name, "seed": len(name), "content": {"size": size}, "timeout": timeout,
            "seeders": seeders, "peers": peers}


SWARMS = {
    # a leecher of each client leaves on completion; 'keen' seeds on (control); 'slow' keeps demand up
    "seeding": swarm("knob-seeding", [peer("origin", "transmission", {"up": "2mbit", "down": "20mbit"})],
                     [peer("stop" + SHORT[c], c, {"up": "2mbit", "down": "20mbit"}, seeding="stop") for c in DRIVERS]
                     + [peer("linger", "libtorrent", {"up": "2mbit", "down": "20mbit"}, seeding={"duration": "5s"}),
                        peer("share", "deluge", {"up": "2mbit", "down": "20mbit"}, seeding={"ratio": 0.25}),
                        peer("keen", "qbittorrent", {"up": "2mbit", "down": "20mbit"}),
                        peer("slow", "transmission", {"up": "2mbit", "down": "600kbit"})]),
    "max_connections": swarm("knob-maxconn", [peer("origin", "transmission")],
                             [peer("cap" + SHORT[c], c, max_connections=2) for c in DRIVERS]
                             + [peer("freetr", "transmission"), peer("freelt", "libtorrent"),
                                peer("freeqb", "qbittorrent")], size="4MiB"),
    "connectable": swarm("knob-connectable", [peer("origin", "transmission")],
                         [peer("nat" + SHORT[c], c, connectable=False) for c in DRIVERS]
                         + [peer("opentr", "transmission"), peer("openlt", "libtorrent")]),
    "upload_slots": swarm("knob-slots",
                          [peer("slot" + SHORT[c], c, {"up": "2mbit", "down": "20mbit"}, upload_slots=1)
                           for c in DRIVERS if "upload_slots" not in DRIVERS[c].unsupported]
                          + [peer("ctltr", "transmission", {"up": "2mbit", "down": "20mbit"})],
                          [{**peer("x", "transmission", {"up": "1mbit", "down": "20mbit"}), "name": "ltr", "count": 3},
                           {**peer("x", "libtorrent", {"up": "1mbit", "down": "20mbit"}), "name": "llt", "count": 3}],
                          size="4MiB"),
    "require": swarm("knob-enc-require", [peer("origin", "transmission", encryption="require")],
                     [peer("enc" + SHORT[c], c, encryption="require") for c in DRIVERS]),
    # plaintext-only leechers of each client that can refuse encryption, a plaintext seeder
    # they can use, and an encryption-only seeder they cannot
    "disable": swarm("knob-enc-disable", [peer("plain", "libtorrent", encryption="disable"),
                                          peer("secret", "transmission", encryption="require")],
                     [peer("pl" + SHORT[c], c, encryption="disable") for c in DRIVERS
                      if "encryption=disable" not in DRIVERS[c].unsupported]),
}


class Run:
    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self.summary = json.loads((run_dir / "summary.json").read_text())
        self.peers = {p["name"]: p for p in self.summary["peers"]}
        self.rows: dict[str, list[dict]] = {}
        for r in csv.DictReader((run_dir / "samples.csv").open()):
            self.rows.setdefault(r["peer"], []).append({k: float(v) for k, v in r.items() if k != "peer"})

    def column(self, peer: str, key: str) -> list[float]:
        return [r[key] for r in self.rows[peer]]

    def after_stop(self, peer: str, grace: float = 2.0) -> list[dict]:
        """Samples from `grace` seconds after the testbed stopped the peer's torrent (its
        link's queue has drained by then)."""
        return [r for r in self.rows[peer] if r["t"] >= self.peers[peer]["seeding"]["stopped_s"] + grace]


def _run(key: str, out: Path) -> Run:
    path = out / f"{key}.yaml"
    path.write_text(yaml.safe_dump(SWARMS[key]))
    subprocess.run([str(Path(sys.executable).parent / "testbed"), "run", str(path), "--results", str(out / key)],
                   capture_output=True, text=True, timeout=400)
    (run_dir,) = (out / key).iterdir()
    return Run(run_dir)


@pytest.fixture(scope="module")
def runs(docker_client, tmp_path_factory):
    out = tmp_path_factory.mktemp("knobs")
    with ThreadPoolExecutor(3) as pool:
        result = dict(zip(SWARMS, pool.map(lambda k: _run(k, out), SWARMS)))
    for r in result.values():
        assert nothing_left(docker_client, r.summary["run_id"])
    return result


def test_stop_on_completion_uploads_nothing_after_completing(runs):
    r = runs["seeding"]
    assert r.summary["status"] == "complete", r.summary["error"]
    for c in DRIVERS:
        name = "stop" + SHORT[c]
        p = r.peers[name]
        assert p["sha256_ok"] and p["seeding"]["stopped_s"] is not None, name
        # stopped on the sample that saw it complete
        assert p["seeding"]["stopped_s"] - p["completion_s"] < 1.0, name
        rows = r.rows[name]
        i = next(k for k, row in enumerate(rows) if row["t"] == p["seeding"]["stopped_s"])
        at_stop, last = rows[i], rows[-1]
        # the client's own count stops within two seconds, but for a few blocks peers had
        # already requested (qBittorrent pauses gracefully: 2 seen). Two, because counters
        # lag: transmission carries out a stop on its next one-second pass, and qBittorrent
        # refreshes its numbers every 1.5 s (CI once saw 6 blocks counted between 1 and 2 s
        # after its stop; the wire check below held)
        assert last["client_bytes_up"] - rows[i + 2]["client_bytes_up"] <= 4 * BLOCK, name
        # on the wire, all that left after the stop is what the kernel already held in its
        # send queues then (TCP delivers a closed socket's data; to a slow peer that takes
        # seconds), what the client reports sending before it acted, headers and chatter
        payload = at_stop["tcp_send_queue"] + last["client_bytes_up"] - at_stop["client_bytes_up"]
        sent = last["if_bytes_up"] - at_stop["if_bytes_up"]
        assert sent <= 1.06 * payload + 4 * BLOCK, (name, sent, payload)
        # and from 2 s after the stop, no connection carried a block in any second
        assert all(row["tcp_uploading"] == 0 for row in r.after_stop(name)), name
    # the leechers that seed on after completing ('keen' for ever, 'linger' for 5 s) did
    # upload then: there was demand to refuse ('slow' takes it from whichever it unchokes)
    assert sum(r.peers[n]["if_bytes_up_after_completion"] for n in ("keen", "linger")) > 4 * BLOCK


def test_seeding_for_a_duration_and_until_a_ratio(runs):
    r = runs["seeding"]
    linger = r.peers["linger"]
    assert 5.0 <= linger["seeding"]["stopped_s"] - linger["completion_s"] < 6.5
    share = r.peers["share"]
    event = next(json.loads(line) for line in (r.dir / "events.jsonl").open()
                 if '"seeding_stopped"' in line and '"share"' in line)
    assert event["bytes_up"] >= 0.25 * r.summary["content_bytes"]
    for name in ("linger", "share"):
        assert all(row["tcp_uploading"] == 0 for row in r.after_stop(name)), name


def test_max_connections_is_obeyed(runs):
    r = runs["max_connections"]
    assert r.summary["status"] == "complete", r.summary["error"]
    for c in DRIVERS:
        name = "cap" + SHORT[c]
        assert r.peers[name]["sha256_ok"], name
        # on the wire, the connections that carried payload in any second
        for key in ("tcp_uploading", "tcp_downloading"):
            assert max(r.column(name, key)) <= 2, (name, key, r.column(name, key))
        # the client's own count is never over the limit two samples running: transmission
        # enforces its limit by closing the excess peers on its once-a-second pass (3, 4 and
        # 5 seen in single samples, when handshakes finish together or it swaps peers)
        peers = r.column(name, "peers")
        assert not any(a > 2 and b > 2 for a, b in zip(peers, peers[1:])), (name, peers)
    assert max(max(r.column(n, "peers")) for n in ("freetr", "freelt", "freeqb")) > 2


def test_a_non_connectable_peer_never_accepts_a_connection(runs):
    r = runs["connectable"]
    assert r.summary["status"] == "complete", r.summary["error"]
    for c in DRIVERS:
        name = "nat" + SHORT[c]
        p = r.peers[name]
        assert p["sha256_ok"], name                        # it completes by dialing out
        assert max(r.column(name, "tcp_in")) == 0, name    # never an accepted connection
        assert p["wire"]["inbound_refused"] > 0, name      # though others tried
    assert r.peers["origin"]["tcp_max"]["tcp_in"] > 0      # connectable peers accept


def test_upload_slots_are_obeyed(runs):
    r = runs["upload_slots"]
    assert r.summary["status"] == "complete", r.summary["error"]

    def uploading(name):
        # over the seeder's active period; one optimistic unchoke comes on top of the slots,
        # and allowed-fast pieces (BEP 6) and choke changes let single seconds exceed them
        col = r.column(name, "tcp_uploading")
        active = [i for i, v in enumerate(col) if v > 0]
        return col[active[0]:active[-1] + 1]

    for c in DRIVERS:
        if "upload_slots" in DRIVERS[c].unsupported:
            continue
        col = uploading("slot" + SHORT[c])
        assert statistics.median(col) <= 1 + 1, (c, col)
    assert max(uploading("ctltr")) >= 3                     # the default lets more peers in at once


def test_required_encryption_leaves_no_plaintext_handshake_on_the_wire(runs):
    r = runs["require"]
    assert r.summary["status"] == "complete", r.summary["error"]
    for name, p in r.peers.items():
        assert p["sha256_ok"], name
        assert p["wire"]["plain_handshakes_in"] == 0 == p["wire"]["plain_handshakes_out"], (name, p["wire"])


def test_plaintext_only_peers_cannot_use_an_encryption_only_seeder(runs):
    r = runs["disable"]
    assert r.summary["status"] == "complete", r.summary["error"]
    for name, p in r.peers.items():
        if name.startswith("pl"):
            assert p["sha256_ok"] and p["wire"]["plain_handshakes_out"] > 0, (name, p["wire"])
    secret = r.peers["secret"]
    assert secret["bytes_up"] == 0 and secret["wire"]["plain_handshakes_out"] == 0
    assert secret["wire"]["plain_handshakes_in"] > 0         # they tried, in plaintext, and were refused
