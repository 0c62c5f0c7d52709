"""Each behaviour knob, obeyed by every client that takes it, measured from the wire.

Ten swarms run side by side (three at a time). Each test reads one of them: the
samples (per second, per peer) and the summary's wire counters, both written by the
testbed from each peer's own network namespace. Where a client does not honour a knob
as the wire judges it, its case is a strict xfail that says what the wire shows: it
fails the day the client starts to honour the knob.
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
# TCP/IP over Ethernet: a full segment carries 1448 payload bytes in 1514 (headers with timestamps)
WIRE_OVERHEAD = 1514 / 1448

DOWN_CAP, DOWN_CAP_BPS = "1mbit", 1e6       # download_limit swarm
SEED_FOR = 15.0                             # seed_duration swarm: seconds of seeding after completion
SEED_WINDOW = 8.0                           # ... it uploads in the last this many seconds before its stop
FOR_DEMAND_AT, FOR_FAST_AT = 22.0, 38.0     # ... when its demand grows, when its origin speeds up again
RATIO = 0.5                                 # seed_ratio swarm: uploaded / content size
RATIO_DEMAND_AT = 16.0                      # ... when its slow leechers arrive and the origin slows down


def peer(name, client, access=FAST, **behaviour):
    # TCP only where the client allows, so that every connection is visible to `ss`
    if client in ("transmission", "qbittorrent", "libtorrent"):
        behaviour.setdefault("utp", False)
    return {"name": name, "client": client, "access": access, **({"behaviour": behaviour} if behaviour else {})}


def group(name, client, count, access, at=None, **behaviour):
    """`count` peers alike (named name1, name2, ...), arriving together at `at` seconds."""
    g = {**peer(name, client, access, **behaviour), "count": count}
    return {**g, "arrivals": {"kind": "flash_crowd", "at": f"{at:g}s"}} if at else g


def steps(*pairs):
    """A rate schedule: (seconds, rate), ..."""
    return [{"at": f"{t:g}s", "rate": rate} for t, rate in pairs]


def swarm(name, seeders, peers, size="2MiB", timeout="100s"):
    return {"name": name, "seed": len(name), "content": {"size": size}, "timeout": timeout,
            "seeders": seeders, "peers": peers}


SWARMS = {
    # a leecher of each client seeds for SEED_FOR after completing. The origin, transmission,
    # unchokes no one for its first 10 s, the time a transmission leecher takes to show
    # interest: the leechers start together and complete close together, before FOR_DEMAND_AT.
    # Four slow leechers are there from the start, downloading at 64kbit until FOR_DEMAND_AT
    # (every seeding leecher has unchoked them when it completes: transmission rechokes every
    # 10 s), then at 2mbit: more than the seeding leechers' lines, down from 2mbit to 768kbit
    # then, can give (so each one has requests to serve until it stops); they upload 1 KiB/s,
    # so their demand goes to the others. From FOR_DEMAND_AT the origin uploads at 256kbit,
    # until FOR_FAST_AT, after the last stop. qBittorrent, not libtorrent, for the slow ones:
    # libtorrent charges the TCP/IP overhead of its downloads (acknowledgements) to its upload
    # limit, and at 1 KiB/s it downloads at a fifth of its line
    "seed_duration": swarm("knob-seedfor",
                           [peer("origin", "transmission", {"up_trace": steps((0, "20mbit"), (FOR_DEMAND_AT, "256kbit"),
                                                                               (FOR_FAST_AT, "20mbit")),
                                                            "down": "20mbit"})],
                           [peer("for" + SHORT[c], c, {"up_trace": steps((0, "2mbit"), (FOR_DEMAND_AT, "768kbit")),
                                                        "down": "20mbit"},
                                 seeding={"duration": f"{SEED_FOR:g}s"}) for c in DRIVERS]
                           + [group("want", "qbittorrent", 4, {"up": "1mbit", "down_trace": steps(
                               (0, "64kbit"), (FOR_DEMAND_AT, "2mbit"))}, upload_limit="8.192kbit")], size="3MiB"),
    # a leecher of each client capped at 1mbit on a 20mbit line ('lim'), and an uncapped one of
    # each ('free'): the controls, which complete first and then seed (for ever, the default)
    # to the capped ones: their demand
    "download_limit": swarm("knob-dlimit", [peer("origin", "libtorrent", {"up": "20mbit", "down": "20mbit"})],
                            [peer("lim" + SHORT[c], c, download_limit=DOWN_CAP) for c in DRIVERS]
                            + [peer("free" + SHORT[c], c) for c in DRIVERS], size="4MiB"),
    # a leecher of each client seeds until it uploaded RATIO x the content. Until RATIO_DEMAND_AT
    # its line uploads at 256kbit, so that it cannot come near the ratio while it downloads
    # (from a fast origin; a short queue keeps its acknowledgements from waiting seconds behind
    # its uploads, which slowed its download down to that time); then at 4mbit, when five slow
    # free-riding leechers arrive (they upload 1 KiB/s, so their demand goes to the others: more
    # than the ratio wants of them all) and the origin slows to 2mbit for 20 s (then it serves
    # what they still miss). qBittorrent for those, as in seed_duration
    "seed_ratio": swarm("knob-seedratio",
                        [peer("origin", "libtorrent", {"up_trace": steps((0, "20mbit"), (RATIO_DEMAND_AT, "2mbit"),
                                                                          (RATIO_DEMAND_AT + 20, "20mbit")),
                                                       "down": "20mbit"})],
                        [peer("rat" + SHORT[c], c, {"up_trace": steps((0, "256kbit"), (RATIO_DEMAND_AT, "4mbit")),
                                                    "down": "20mbit", "queue": 10}, seeding={"ratio": RATIO})
                         for c in DRIVERS]
                        + [group("want", "qbittorrent", 5, {"up": "1mbit", "down": "1mbit"}, at=RATIO_DEMAND_AT,
                                 upload_limit="8.192kbit")]),
    # 'late' peers arrive when the capped ones have long filled their two connections, and dial
    # every peer the tracker lists: each capped client meets connections beyond its limit
    "max_connections": swarm("knob-maxconn", [peer("origin", "transmission")],
                             [peer("cap" + SHORT[c], c, max_connections=2) for c in DRIVERS]
                             + [peer("freetr", "transmission"), peer("freelt", "libtorrent"),
                                peer("freeqb", "qbittorrent"),
                                group("latetr", "transmission", 1, FAST, at=15),
                                group("latelt", "libtorrent", 1, FAST, at=15)], size="4MiB"),
    # a leecher of each client leaves on completion; 'keen' seeds on (control); 'slow' keeps demand up
    "seeding": swarm("knob-seeding", [peer("origin", "transmission", {"up": "2mbit", "down": "20mbit"})],
                     [peer("stop" + SHORT[c], c, {"up": "2mbit", "down": "20mbit"}, seeding="stop") for c in DRIVERS]
                     + [peer("keen", "qbittorrent", {"up": "2mbit", "down": "20mbit"}),
                        peer("slow", "transmission", {"up": "2mbit", "down": "600kbit"})]),
    "upload_slots": swarm("knob-slots",
                          [peer("slot" + SHORT[c], c, {"up": "2mbit", "down": "20mbit"}, upload_slots=1)
                           for c in DRIVERS if "upload_slots" not in DRIVERS[c].unsupported]
                          + [peer("ctltr", "transmission", {"up": "2mbit", "down": "20mbit"})],
                          # leechers that stay interested in a seeder until they complete (see
                          # SLOTS_LEECHERS), 6 MiB so that the seeders serve them for 20 s or more
                          [group("lrt", "rtorrent", 3, {"up": "1mbit", "down": "20mbit"}),
                           group("llt", "libtorrent", 3, {"up": "1mbit", "down": "20mbit"})],
                          size="6MiB"),
    "connectable": swarm("knob-connectable", [peer("origin", "transmission")],
                         [peer("nat" + SHORT[c], c, connectable=False) for c in DRIVERS]
                         + [peer("opentr", "transmission"), peer("openlt", "libtorrent")]),
    # a leecher of each client that prefers encryption, an encryption-only seeder and a
    # plaintext-only one, both slow enough (for content big enough) that every leecher that can
    # use both takes blocks from both (transmission and aria2 connect to the plaintext-only one
    # late, after an encrypted attempt failed: with 2 MiB, as few as 2 blocks from it). The
    # leechers accept no connection, so none can reach another: each one's only partners are the
    # two seeders it dials, and its plaintext handshake counters speak of those two alone
    "prefer": swarm("knob-enc-prefer", [peer("secret", "libtorrent", {"up": "4mbit", "down": "20mbit"},
                                             encryption="require"),
                                        peer("plain", "libtorrent", {"up": "4mbit", "down": "20mbit"},
                                             encryption="disable")],
                    [peer("pf" + SHORT[c], c, encryption="prefer", connectable=False) for c in DRIVERS],
                    size="4MiB"),
    "require": swarm("knob-enc-require", [peer("origin", "transmission", encryption="require")],
                     [peer("enc" + SHORT[c], c, encryption="require") for c in DRIVERS]),
    # plaintext-only leechers of each client that can refuse encryption, a plaintext seeder
    # they can use, and an encryption-only seeder they cannot
    "disable": swarm("knob-enc-disable", [peer("plain", "libtorrent", encryption="disable"),
                                          peer("secret", "transmission", encryption="require")],
                     [peer("pl" + SHORT[c], c, encryption="disable") for c in DRIVERS
                      if "encryption=disable" not in DRIVERS[c].unsupported]),
    # uTP only: an origin and a leecher of each client that can turn TCP off, a libtorrent
    # leecher that speaks both (it relays between the two kinds) and one that speaks TCP only
    # (it cannot reach the uTP-only peers: all it gets comes from the one that speaks both).
    # Not transmission for those two: a transmission 3.00 pair with uTP on one side only
    # exchanged handshakes and no block in 100 s (the interoperability matrix's #4897 too)
    "utp_only": swarm("knob-utp-only", [peer("origin", "libtorrent", utp="only")],
                      [peer("only" + SHORT[c], c, utp="only") for c in DRIVERS
                       if c not in ("transmission", "aria2", "rtorrent", "deluge")]
                      + [peer("bothlt", "libtorrent", utp=True), peer("tcplt", "libtorrent", utp=False)]),
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

    def index_at(self, peer: str, t: float) -> int:
        """The last sample of `peer` read at or before swarm time t."""
        return max(i for i, row in enumerate(self.rows[peer]) if row["t"] <= t)

    def stopped(self, peer: str) -> float:
        """When the testbed stopped the peer's torrent for its seeding policy (`seeding.stopped_s`
        is when the policy decided it: the sample that saw the condition)."""
        p = self.peers[peer]
        assert p["sha256_ok"] and p["seeding"]["stopped_s"] is not None and p["left_reason"] == "seeding_done", \
            (peer, p["seeding"], p["left_reason"])
        return p["left_s"]

    def flow(self, peer: str, remote: str, key: str) -> int:
        """Bytes between two peers (TCP and uTP), as conntrack counted them at `peer`."""
        return sum(f[key] for f in self.peers[peer]["flows"] if f["remote"] == remote)


# Swarms run on their own, after the others, not three at a time: the upload-slot swarm, whose
# leechers were chosen (SLOTS_LEECHERS) from runs alone or beside one busy core, not beside
# two other swarms on this 2-core machine
ALONE = ("upload_slots",)


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
    together = [k for k in SWARMS if k not in ALONE]
    with ThreadPoolExecutor(3) as pool:
        result = dict(zip(together, pool.map(lambda k: _run(k, out), together)))
    result.update({k: _run(k, out) for k in ALONE})
    for r in result.values():
        assert nothing_left(docker_client, r.summary["run_id"])
    return result


def per_client(known: dict[str, str] | None = None, clients=None):
    """Parameters, one per client; `known`: clients that do not honour the knob as the wire
    judges it -> what the wire shows (a strict xfail: it fails the day they do)."""
    known = known or {}
    return [pytest.param(c, id=c, marks=[pytest.mark.xfail(strict=True, reason=known[c])] if c in known else [])
            for c in (clients or DRIVERS)]


def assert_upload_stopped(r: Run, name: str, t_stop: float) -> None:
    """The peer's torrent was stopped at t_stop: from then on it uploads nothing new.

    The client's own count stops within two seconds, but for a few blocks peers had already
    requested (qBittorrent pauses gracefully: 2 seen). Two, because counters lag:
    transmission carries out a stop on its next one-second pass, and qBittorrent refreshes
    its numbers every 1.5 s (CI once saw 6 blocks counted between 1 and 2 s after its stop;
    the wire check held). On the wire, all that leaves after the stop is what the kernel
    already held in its send queues at the last sample before it (TCP delivers a closed
    socket's data; to a slow peer that takes seconds), what the client reports sending
    after that sample, headers and chatter, and what it wrote into its sockets between that
    sample and the stop without counting it yet: at most one second of its upload
    (rtorrent counts in bursts: 819 KB left its line after a stop, 246 KB of it in its count
    and queues, after 538 KB in the second before). And from 2 s after the stop, no
    connection (TCP or uTP) carries a block in any second.

    Expected false failures: below 1 % a run (18 stops). In 228 stops of the current swarms
    (6 clients x 38 runs of the three seeding swarms) what left the line after the stop was at
    most 0.56 of its bound (mean 0.14, sd 0.11: the bound is 8 sd away), the client's count
    grew by 0 blocks after 2 s (4 allowed), and no connection carried a block from 2 s on."""
    rows = r.rows[name]
    i = r.index_at(name, t_stop)
    at_stop, last = rows[i], rows[-1]
    assert last["t"] >= t_stop + 6, (name, "the swarm ended before the stop could be watched")
    assert last["client_bytes_up"] - rows[i + 2]["client_bytes_up"] <= 4 * BLOCK, name
    payload = at_stop["tcp_send_queue_bytes"] + last["client_bytes_up"] - at_stop["client_bytes_up"]
    last_second = max(b["if_bytes_up"] - a["if_bytes_up"] for a, b in zip(rows[i - 2:i], rows[i - 1:i + 1]))
    sent = last["if_bytes_up"] - at_stop["if_bytes_up"]
    assert sent <= 1.06 * payload + last_second + 4 * BLOCK, (name, sent, payload, last_second)
    assert all(row["tcp_uploading"] == 0 == row["utp_uploading"] for row in rows if row["t"] >= t_stop + 2), name


def t_if(row: dict) -> float:
    """When the sample's interface counters were read (its client answered at row["t"])."""
    return row.get("t_if", row["t"])


def sent_between(r: Run, name: str, t0: float, t1: float) -> float:
    """Interface bytes up between the samples nearest before t0 and t1."""
    rows = r.rows[name]
    return rows[r.index_at(name, t1)]["if_bytes_up"] - rows[r.index_at(name, t0)]["if_bytes_up"]


# ------------------------------------------------------------------ seeding policies

def test_stop_on_completion_uploads_nothing_after_completing(runs):
    r = runs["seeding"]
    assert r.summary["status"] == "complete", r.summary["error"]
    for c in DRIVERS:
        name = "stop" + SHORT[c]
        stopped = r.stopped(name)
        # stopped on the sample that saw it complete
        assert stopped - r.peers[name]["completed_at_s"] < 1.0, name
        assert_upload_stopped(r, name, stopped)
    # the leecher that seeds on after completing did upload then: there was demand to refuse
    # ('slow' takes it from whichever it unchokes). Two blocks on its line, far above the
    # chatter of a finished peer (haves, keep-alives: a few hundred bytes); how much more
    # depends on when keen completed against slow: 3.9 blocks in the lowest run seen (CI)
    assert r.peers["keen"]["if_bytes_up_after_completion"] > 2 * BLOCK


def test_seeding_forever_keeps_uploading_while_there_is_demand(runs):
    """The uncapped leechers of the download_limit swarm seed for ever (the default). After
    completing, each goes on uploading as long as the six capped leechers (6 x 1mbit of
    demand) all still download: in each half of that time, at least one block on its line.
    Halves, not 6-second windows: whom the capped leechers take blocks from is their choice,
    and a 6-second window of deluge's once carried less than a block (CI, the 14th run).
    Expected false failures: below 1 % a run, by observation only: in 13 runs every 6-second
    window carried 5.5 blocks or more, so every half 11 or more; in the 14th the emptiest half
    carried 243 KB (15 blocks), though one 6-second window in it carried 1450 bytes."""
    r = runs["download_limit"]
    assert r.summary["status"] == "complete", r.summary["error"]
    demand_until = min(r.peers["lim" + SHORT[c]]["completed_at_s"] for c in DRIVERS)
    for c in DRIVERS:
        name = "free" + SHORT[c]
        p = r.peers[name]
        assert p["sha256_ok"] and p["left_s"] is None, name
        done = p["completed_at_s"]
        assert demand_until - done >= 7, (name, done, demand_until)       # the swarm gave it demand to serve
        mid = (done + 1 + demand_until) / 2
        windows = [(done + 1, mid), (mid, demand_until)]
        sent = [sent_between(r, name, a, b) for a, b in windows]
        assert min(sent) >= BLOCK, (name, windows, sent)
        assert p["bytes_up_after_completion"] >= 8 * BLOCK, name            # and its own count agrees


def test_seeding_for_a_duration_stops_on_time(runs):
    """Each leecher seeds for SEED_FOR after completing: the testbed stops it within 1 s of
    that time; its line still uploads at least 2 blocks in the last SEED_WINDOW s before the
    stop (it was seeding until then: it did not stop on its own before); and from the wire its
    upload stops there (see assert_upload_stopped).
    SEED_WINDOW is 8 s, not 4: aria2 seeds in bursts. With the slow leechers wanting more than
    it can give (each one still downloading, connected to it, 20+ s from completing), it
    stops serving for seconds at a time (its own count flat for up to 5 s, its line idle for
    up to 2 s once its send queue drained: 10 such spells in 208 seconds of demand, 18 runs),
    and CI once saw its line carry 1498 bytes in the 4 s before its stop. An 8 s window fails
    only on an idle spell of 7.7 s or more that ends at the stop.
    Expected false failures: about 0.3 % a run, by extrapolation (none seen). In 18 runs
    (108 seeding leechers) the stop came 0.00-0.21 s after completion + SEED_FOR and the
    last 8 s carried 16.7-40 blocks (aria2 18.1 at least);
    aria2's idle spells, 1-2 s long here and at least 4 s once in CI (in about 30 runs:
    1/30 a run), would have to be about twice that long: at half as likely per added second
    beyond 4 s, 1/30 x 2^-3.7. The swarm went on for 23-33 s after a stop (6 s needed)."""
    r = runs["seed_duration"]
    assert r.summary["status"] == "complete", r.summary["error"]
    for c in DRIVERS:
        name = "for" + SHORT[c]
        p = r.peers[name]
        stopped = r.stopped(name)
        assert SEED_FOR <= stopped - p["completed_at_s"] <= SEED_FOR + 1.0, (name, p["completed_at_s"], stopped)
        assert sent_between(r, name, stopped - SEED_WINDOW, stopped) >= 2 * BLOCK, name
        assert_upload_stopped(r, name, stopped)


def test_seeding_until_a_ratio_stops_there(runs):
    """Each leecher seeds until its client reports RATIO x the content uploaded: it had not
    reached it on completing, it still uploads in the last 3 s before the testbed stops it on
    the first sample that counts that much (the sampling interval, one second, is the slack),
    and from the wire its upload stops (see assert_upload_stopped: a client's count may run
    ahead of its line by what it wrote into the kernel's send queues).
    Expected false failures: below 0.5 % a run. In 13 runs (78 leechers) they had uploaded
    0-0.22 x the content on completing (0.47 allowed), their lines carried 7-65 blocks in the
    last 3 s before the stop (2 needed), and the swarm went on for 14-28 s after a stop."""
    r = runs["seed_ratio"]
    assert r.summary["status"] == "complete", r.summary["error"]
    target = RATIO * r.summary["content_bytes"]
    for c in DRIVERS:
        name = "rat" + SHORT[c]
        p = r.peers[name]
        rows, stopped = r.rows[name], r.stopped(name)
        done = rows[r.index_at(name, p["completed_at_s"])]
        assert done["client_bytes_up"] < target - 4 * BLOCK, (name, done["client_bytes_up"], target)
        i = r.index_at(name, stopped)
        assert rows[i - 1]["client_bytes_up"] < target <= rows[i]["client_bytes_up"], name
        assert sent_between(r, name, stopped - 3, stopped) >= 2 * BLOCK, name
        assert_upload_stopped(r, name, stopped)


# ------------------------------------------------------------------ connections

def test_max_connections_is_obeyed(runs):
    r = runs["max_connections"]
    assert r.summary["status"] == "complete", r.summary["error"]
    for c in DRIVERS:
        name = "cap" + SHORT[c]
        assert r.peers[name]["sha256_ok"], name
        # on the wire, the connections that carried payload in any second
        for key in ("tcp_uploading", "tcp_downloading"):
            assert max(r.column(name, key)) <= 2, (name, key, r.column(name, key))
        # the client's own count is never over the limit three samples running (2 s):
        # transmission enforces its limit by closing the excess peers on its once-a-second
        # pass (3, 4 and 5 seen in single samples, when handshakes finish together or it swaps
        # peers; once, in CI, 3 in two samples running, when its pass fell just after a sample)
        peers = r.column(name, "peers")
        assert not any(a > 2 and b > 2 and c > 2 for a, b, c in zip(peers, peers[1:], peers[2:])), (name, peers)
    assert max(max(r.column(n, "peers")) for n in ("freetr", "freelt", "freeqb")) > 2


# What the wire showed, in 12 runs of this swarm (its capped peers at a limit of 2)
HELD = ("holds connections beyond its limit on which it never answered the other side's handshake (68 bytes "
        "received, nothing sent) until its handshake timeout, and takes the next one")
OPEN_BEYOND_LIMIT = {
    "transmission": "dials every peer it learns at once (7-9 established connections 1 s in, in every run) and "
                    "keeps 3-5 for most of the run (22-57 samples running): dials that a peer at its own limit "
                    "leaves unanswered",
    "rtorrent": HELD + ": 5-6 open connections at most, over the limit for 15-57 samples running",
}
# Connections beyond the limit that libtorrent (qBittorrent and deluge run it) holds, its
# handshake unanswered, for up to its handshake timeout (10 s) each: a connection in the
# listen backlog it accepts but does not take as a peer. 1-2 at a time, for 8-36 samples
# running, in 35 of 36 client-runs (qBittorrent once stayed within the limit), 3 for 8
# samples once (libtorrent, CI): not the limit it was given, though it bounds what a client
# that ignored the limit (6-11 here) would hold
HELD_BEYOND_LIMIT = {"qbittorrent": 3, "libtorrent": 3, "deluge": 3}


@pytest.mark.parametrize("client", per_client(OPEN_BEYOND_LIMIT))
def test_max_connections_bounds_every_open_connection(runs, client):
    """Judged on every open connection, whether it carries blocks or not: the established TCP
    connections the client holds (accepted and dialed), and its uTP connections. A uTP flow
    counts only if its remote ever answered: `utp_flows` counts conntrack's UDP entries, and
    conntrack keeps an unanswered uTP attempt (here deluge's, to the TCP-only peers of this
    swarm) as one for 30 s; in this swarm none was ever answered, so no uTP connection was
    ever open. Over the limit for single samples only, as transmission's own count in
    test_max_connections_is_obeyed (a connection swapped for another); libtorrent's clients by
    HELD_BEYOND_LIMIT at most.
    Expected false failures: aria2, none in 18 runs of ~50 samples: it was at 3 for 1-3
    single samples a run, never two running (a run fails only if an extra connection outlives
    a sampling interval, which aria2's once-a-second connection check has not let happen; by
    observation only: below 16 % at 95 % confidence); libtorrent's clients: 4 at most in 12
    runs, then 5 for 8 samples in the 13th (CI); 6 fails, not seen in 39 client-runs (below
    8 % at 95 % confidence, by observation only; a client that ignores the limit held 6-11)."""
    r = runs["max_connections"]
    assert r.summary["status"] == "complete", r.summary["error"]
    name = "cap" + SHORT[client]
    answered = any(f["proto"] == "udp" and f["bytes_in"] > 0 and f["bytes_out"] > 0 for f in r.peers[name]["flows"])
    total = [row["tcp_in"] + row["tcp_out"] + (row["utp_flows"] if answered else 0) for row in r.rows[name]]
    if client in HELD_BEYOND_LIMIT:
        assert max(total) <= 2 + HELD_BEYOND_LIMIT[client], (name, total)
    else:
        assert not any(a > 2 and b > 2 for a, b in zip(total, total[1:])), (name, total)


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


# The upload-slot swarm's leechers are rtorrent and libtorrent, not transmission. A slot counts
# interested peers only: at each rechoke a seeder unchokes its slots' worth of interested peers
# and, without counting them, any uninterested peer that ranks above them (the reference
# choking algorithm; transmission 3.00's rechokeUploads ranks peers of equal rate by a random
# salt). A transmission leecher shows no interest for its first 10 s or so, and its interest
# comes and goes (its rechokeDownloads limits how many peers it wants blocks from). So a
# transmission seeder with one slot unchoked a transmission leecher that was not yet
# interested; once it was, 3 peers took blocks until the next rechoke 10 s later, or longer
# (transmission does not change a peer's choke within 10 s of the last change). With 3
# transmission leechers, 3 or more peers took blocks from it in 4 of 15 judged seconds in CI
# on 2026-11-26 and in 3 of 4 runs under load that day; with these leechers a transmission
# seeder had at most 2 (the slot and the optimistic unchoke) in every second of 6 runs (3 of
# them beside a busy loop on one core), the other clients as before.
SLOTS_LEECHERS = ("rtorrent", "libtorrent")
ALLOWED_FAST = 5        # pieces a peer may take whatever its choke (BEP 6; libtorrent's allowed_fast_set_size)


def test_upload_slots_are_obeyed(runs):
    """One slot, and one optimistic unchoke on top: over the seeder's active period the median
    number of peers that carry a block up in a second, when any does, is at most 1 + 1; and
    once its allowed-fast pieces are served (BEP 6: each leecher may take ALLOWED_FAST pieces
    whatever the seeder's slots; at most that many pieces each at the seeder's line rate from
    its first upload: 6 x 5 x 32 KiB at 2 Mbit/s, 3.9 s), until the last leecher completes,
    at most 10 % of its samples see more than 1 + 1 such peers.
    Expected false failures: below 0.5 % a run. In 17 runs the libtorrent clients and rtorrent
    had 0-4 such samples of 30-40, every one within the allowed-fast phase (deluge's 4, its
    first 4 s, failed CI on 2026-11-27 when the whole period was judged), none after it;
    with the leechers of SLOTS_LEECHERS transmission had none in 6 runs (2 in most seconds)."""
    r = runs["upload_slots"]
    assert r.summary["status"] == "complete", r.summary["error"]
    leechers = [p for p in r.summary["peers"] if p["role"] == "leecher"]
    assert {p["client"] for p in leechers} == set(SLOTS_LEECHERS)
    demand_until = max(p["completed_at_s"] for p in leechers)
    plan = json.loads((r.dir / "plan.json").read_text())
    seeder_up = {h["name"]: h["up"]["rate_bps"] for h in plan["hosts"] if h["role"] == "seeder"}
    fast_bytes = len(leechers) * ALLOWED_FAST * plan["piece_bytes"]

    def uploading(name, after=0.0):
        rows = [row for row in r.rows[name] if row["t"] <= demand_until]
        first = next(row["t"] for row in rows if row["tcp_uploading"] + row["utp_uploading"] > 0)
        return [row["tcp_uploading"] + row["utp_uploading"] for row in rows if row["t"] >= first + after]

    for c in DRIVERS:
        if "upload_slots" in DRIVERS[c].unsupported:
            continue
        name = "slot" + SHORT[c]
        col = uploading(name)
        assert statistics.median([v for v in col if v]) <= 1 + 1, (c, col)
        after = uploading(name, fast_bytes * 8 / seeder_up[name])
        assert len(after) >= 5, (c, "the leechers completed too early to judge the seeder")
        assert sum(v > 1 + 1 for v in after) <= 0.10 * len(after), (c, col)
    assert max(uploading("ctltr")) >= 3                     # the default lets more peers in at once


# ------------------------------------------------------------------ download limit

# What a client may let its line carry beyond the cap. aria2 holds its own count at the cap
# (0.85-0.91 of it), but lets its sockets' receive buffers fill in bursts (1.1 MB in 3 s once,
# then seconds of nothing on the line while it read them), and takes blocks it then throws away:
# its line carried 1.13-1.70 x the content in all runs (the other capped clients: 1.15-1.29).
# A burst at either end of the steady window moves the line's rate there by up to half the cap
# (0.60-1.49 x the cap in 16 runs: CI failed once at 0.60 while its own count was 0.88), so
# aria2's line is judged over its whole download, which holds every burst: 0.99-1.21 x the
# cap with headers in 7 runs, including that one (bounds 0.75 and 2.0).
DOWN_EXCESS = {"aria2": 2.0}
WHOLE_DOWNLOAD = {"aria2"}


def line_window(r: Run, name: str, client: str) -> tuple[dict, dict]:
    """The two samples between which a capped leecher's line is judged: the steady part of its
    download (25 % to 85 % verified), or for a client in WHOLE_DOWNLOAD from its last sample
    before its line carried 4 blocks (handshakes and bitfields are a few KB; its first sample,
    1 s in, may already be past that) to the sample that saw it complete."""
    if client in WHOLE_DOWNLOAD:
        rows = r.rows[name]
        before = [row for row in rows if row["if_bytes_down"] < 4 * BLOCK] or rows[:1]
        return before[-1], rows[r.index_at(name, r.peers[name]["completed_at_s"])]
    steady = [row for row in r.rows[name] if 0.25 <= row["progress"] <= 0.85]
    return steady[0], steady[-1]


@pytest.mark.parametrize("client", per_client())
def test_download_limit_holds_on_the_wire(runs, client):
    """A leecher capped at 1mbit on a 20mbit line: over the steady part of its download (from
    25 % to 85 % verified, 19-23 s) its line's download rate is the cap, payload plus TCP/IP
    headers, within +-25 % (aria2: over its whole download, up to 2 x: see DOWN_EXCESS), and
    its own count of payload within
    +-25 % of the cap; its uncapped twin in the same swarm downloads at least 2.5 x as fast.
    Expected false failures: below 0.5 % a run. Over 13 runs x 5 clients the line's rate was
    0.87-1.15 of the cap with headers (mean 0.98, sd 0.06: the bounds are 4.0 and 4.8 sd
    away), the clients' own counts (6 clients) 0.80-1.05 of the cap (mean 0.94, sd 0.05: 3.6
    sd), the twins 3.3-10.6 x the cap."""
    r = runs["download_limit"]
    assert r.summary["status"] == "complete", r.summary["error"]
    name, control = "lim" + SHORT[client], "free" + SHORT[client]
    assert r.peers[name]["sha256_ok"], name
    cap = DOWN_CAP_BPS / 8
    a, b = line_window(r, name, client)
    assert t_if(b) - t_if(a) >= 10, (name, a["t"], b["t"])
    rate = (b["if_bytes_down"] - a["if_bytes_down"]) / (t_if(b) - t_if(a))
    assert 0.75 * cap * WIRE_OVERHEAD <= rate <= DOWN_EXCESS.get(client, 1.25) * cap * WIRE_OVERHEAD, (name, rate, cap)
    steady = [row for row in r.rows[name] if 0.25 <= row["progress"] <= 0.85]
    a, b = steady[0], steady[-1]
    payload = (b["client_bytes_down"] - a["client_bytes_down"]) / (b["t"] - a["t"])
    assert 0.75 * cap <= payload <= 1.25 * cap, (name, payload, cap)
    rows = r.rows[control]
    first = next(row for row in rows if row["progress"] > 0)
    done = rows[r.index_at(control, r.peers[control]["completed_at_s"])]
    control_rate = (done["if_bytes_down"] - first["if_bytes_down"]) / (t_if(done) - t_if(first))
    assert control_rate >= 2.5 * cap, (control, control_rate)


# ------------------------------------------------------------------ encryption

def prefer_peer(r: Run, client: str) -> dict:
    """The leecher of `client` in the prefer swarm, and what makes its counters its own: it
    completed, no leecher of the swarm ever accepted a connection (so its partners were the
    two seeders it dialed), and the encryption-only seeder never sent a plaintext handshake.
    Bytes between it and a seeder are read at the seeder, where each of its connections is a
    flow of its own (at the leecher, a reconnection to the seeder's port replaces the
    earlier connection's count: see the report)."""
    assert r.summary["status"] == "complete", r.summary["error"]
    name = "pf" + SHORT[client]
    p = r.peers[name]
    assert p["sha256_ok"], name
    assert all(max(r.column(n, "tcp_in")) == 0 for n in r.peers if n.startswith("pf"))
    assert r.peers["secret"]["wire"]["plain_handshakes_out"] == 0
    return p


# Clients judged by the plaintext session with the plaintext-only seeder alone, not by blocks
# over it: transmission connects to that seeder late, after its encrypted attempt failed, and
# once (CI, 2026-11-26) kept the plaintext session open 20 s, handshakes and messages both
# ways, without taking a block: the encryption-only seeder had served it all by then.
SESSION_ONLY = ("transmission",)
HANDSHAKE = 68      # BitTorrent's handshake, bytes; what a session says past it is its messages


@pytest.mark.parametrize("client", per_client())
def test_preferred_encryption_accepts_plaintext_where_it_must(runs, client):
    """It sent a plaintext handshake and one reached it: a plaintext connection, with the
    plaintext-only seeder (the only peer that sends one to it), over which both sides sent
    messages past the handshake (a session, not a refusal) and, but for SESSION_ONLY, it took
    blocks.
    Expected false failures: below 1 % a run. The handshake counts were the same in every one
    of 20 runs; in 6 runs of this swarm the fewest blocks a leecher took from that seeder were
    9 (transmission; 9-67, and 0 once in CI), then 24 (aria2). With 2 MiB instead of 4, as few
    as 2 in 14 runs, none at 0."""
    r = runs["prefer"]
    p = prefer_peer(r, client)
    assert p["wire"]["plain_handshakes_in"] >= 1 and p["wire"]["plain_handshakes_out"] >= 1, (p["name"], p["wire"])
    flows = r.peers["plain"]["flows"]
    assert r.flow("plain", p["name"], "bytes_in") > HANDSHAKE, (p["name"], flows)
    assert r.flow("plain", p["name"], "bytes_out") > HANDSHAKE, (p["name"], flows)
    if client not in SESSION_ONLY:
        assert r.flow("plain", p["name"], "bytes_out") >= BLOCK, (p["name"], flows)


PLAINTEXT_FIRST = ("libtorrent's 'prefer' (pe_enabled) opens outgoing connections in plaintext first "
                   "(torrent_peer.cpp: pe_support(false), 'assume no support in order to prefer opening "
                   "non-encrypted connections'): its plaintext handshake to the encryption-only seeder goes "
                   "unanswered, and it does not retry encrypted before the swarm ends (a failed peer waits "
                   "min_reconnect_time, 60 s): no block from that seeder")


@pytest.mark.parametrize("client", per_client({c: PLAINTEXT_FIRST for c in ("qbittorrent", "libtorrent", "deluge")}))
def test_preferred_encryption_is_used_where_it_can_be(runs, client):
    """It took blocks from the encryption-only seeder (so over an encrypted connection), and
    every plaintext handshake it sent was answered: none went to that seeder, which answers
    none (the plaintext-only seeder answers each). Its line carries almost nothing up (it
    uploads to no one), so no handshake is lost and sent twice.
    Expected false failures: by observation only, not by margin: the handshake counts of
    transmission (1 sent, 1 answered), aria2 (2, 2) and rtorrent (1, 1) were the same in 20
    runs with these seeders (at least 138 blocks from the encryption-only one in the 6 with
    4 MiB). Once, in a run whose encryption-only seeder uploaded at 2mbit, aria2 sent it a
    plaintext handshake after an encrypted attempt failed, and took nothing from it."""
    r = runs["prefer"]
    p = prefer_peer(r, client)
    assert r.flow("secret", p["name"], "bytes_out") >= BLOCK, (p["name"], r.peers["secret"]["flows"])
    assert p["wire"]["plain_handshakes_out"] <= p["wire"]["plain_handshakes_in"], (p["name"], p["wire"])


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


UTP_ONLY = [c for c in DRIVERS if c in ("libtorrent", "qbittorrent")]


@pytest.mark.parametrize("client", UTP_ONLY)
def test_utp_only_peers_open_no_tcp_connection(runs, client):
    """`utp: only`: the client completes over uTP alone. Its namespace never holds an
    established TCP connection on the peer port (libtorrent accepts a TCP dial and closes it at
    once: a rare sample could catch it, a risk well under 1 % a run), and its data came over
    UDP: over TCP it received less than a block (the handshakes of peers that dialed it by TCP
    before the close, about 1 KB each; transmission backs off between tries)."""
    r = runs["utp_only"]
    name = "only" + SHORT[client]
    assert r.peers[name]["sha256_ok"], name
    assert max(r.column(name, "tcp_in")) == 0 == max(r.column(name, "tcp_out")), name
    assert max(r.column(name, "utp_flows")) > 0, name
    by_proto = {proto: sum(f["bytes_in"] for f in r.peers[name]["flows"] if f["proto"] == proto)
                for proto in ("tcp", "udp")}
    assert by_proto["tcp"] < BLOCK and by_proto["udp"] > r.summary["content_bytes"], (name, by_proto)


def test_a_tcp_only_peer_gets_nothing_from_utp_only_peers(runs):
    """The TCP-only leecher completes from the one peer that speaks both; the uTP-only origin
    and leechers send it less than a block (the SYNs, handshakes and closes of its TCP dials,
    and their uTP SYNs to its UDP port). Counted at the senders: once (CI, 2026-11-26) the
    leecher's own count missed its first connection to the relay, 2.1 MB that the relay's
    count had (the leecher stalled at 99 %, its connection closed, and it dialed again 60 s
    later). The likely cause, since fixed: a flow reset near the end of a run was reaped by
    the run's last lookup, whose destroy event was not read (test_flows.py,
    test_a_flow_reset_near_the_end_keeps_its_last_counters)."""
    r = runs["utp_only"]
    assert r.peers["tcplt"]["sha256_ok"]
    only = ["origin", *("only" + SHORT[c] for c in UTP_ONLY)]
    assert sum(r.flow(o, "tcplt", "bytes_out") for o in only) < BLOCK
    assert r.flow("bothlt", "tcplt", "bytes_out") > r.summary["content_bytes"]
