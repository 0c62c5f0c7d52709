"""pieces() of every client, for real: one seeder and one leecher of each of the six clients.

The test reads them itself: every driver's sample() (what the run's sampler calls each tick,
and most drivers' stats() too) is wrapped for the run so that each reading is followed at
once by pieces() and a second stats(). The run's own sampling and completion detection see
the first answer only, as without the wrapper.
"""
import math
import statistics
import threading
import time
from dataclasses import dataclass

import pytest

from testbed.clients import DRIVERS
from testbed.run import run
from tests.integration.conftest import nothing_left, small_experiment

pytestmark = pytest.mark.integration

SHORT = {"transmission": "tr", "qbittorrent": "qb", "aria2": "ar", "libtorrent": "lt", "rtorrent": "rt",
         "deluge": "dl"}
LINK = {"up": "4mbit", "down": "4mbit"}      # 4MiB in about 8 s: many samples mid-download
# Clients whose stats().progress is verified bytes only (transmission's haveValid, rtorrent's
# d.completed_bytes): pieces() agrees with it within one piece. The others count the blocks
# already received of pieces not yet complete (libtorrent's total_wanted_done with the
# accurate counters that handle.status() asks for by default, under lt-client, qBittorrent
# and deluge; aria2's completedLength): their progress runs ahead of the verified pieces by
# what is in flight. Measured in this swarm: up to 4 pieces of 128 (qBittorrent), 3 (deluge),
# 2.5 (libtorrent, aria2).
PROGRESS_IS_VERIFIED = {"transmission", "rtorrent"}
IN_FLIGHT = 8          # pieces
# clients that may answer None (cannot say), and when: before they have any piece
MAY_NOT_SAY = {"qbittorrent": "an empty piece-state list while it checks the torrent just added",
               "deluge": "fewer entries than pieces while libtorrent has no piece picker"}


@dataclass
class Reading:
    t: float
    host: str
    client: str
    before: float          # stats().progress just before pieces()
    after: float           # and just after
    pieces: list[bool] | None
    error: str | None
    seconds: float         # what the pieces() call took


@pytest.fixture(scope="module")
def swarm(docker_client, tmp_path_factory):
    readings: list[Reading] = []
    lock = threading.Lock()

    inside = threading.local()      # the wrapper's own stats() calls go through sample() too

    def wrap(sample):
        def reading(self, want_pieces):
            s, have = sample(self, want_pieces)
            if getattr(inside, "on", False):
                return s, have
            inside.on = True
            try:
                t0 = time.perf_counter()
                try:
                    p, err = self.pieces(), None
                except Exception as exc:
                    p, err = None, f"{exc.__class__.__name__}: {exc}"
                took = time.perf_counter() - t0
                after = self.stats().progress
            finally:
                inside.on = False
            with lock:
                readings.append(Reading(time.monotonic(), self.host.name, self.name, s.progress, after, p, err,
                                        took))
            return s, have
        return reading

    exp = small_experiment(name="pieces", seed=23, content={"size": "4MiB"}, timeout="2m",
                           seeders=[{"name": "s" + SHORT[c], "client": c, "access": LINK} for c in DRIVERS],
                           peers=[{"name": "l" + SHORT[c], "client": c, "access": LINK} for c in DRIVERS])
    events = []
    with pytest.MonkeyPatch.context() as mp:
        for cls in DRIVERS.values():
            mp.setattr(cls, "sample", wrap(cls.sample))
            # every sample through sample(), where the readings are taken: not split in two
            # halves (sample_begin's decoding is sample()'s, checked in tests/test_pieces.py)
            mp.setattr(cls, "sample_begin", lambda self, want_pieces: None)
        result = run(exp, tmp_path_factory.mktemp("results"), events.append, sample_interval=0.5)
    (content,) = [e for e in events if e.get("kind") == "content"]
    n = math.ceil(content["bytes"] / content["piece_bytes"])
    by_host = {}
    for r in readings:
        by_host.setdefault(r.host, []).append(r)
    return result, n, by_host


def test_the_swarm_completes(swarm, docker_client):
    result, n, by_host = swarm
    assert result.status == "complete", result.summary.get("error")
    assert all(p["completed"] and p["sha256_ok"] for p in result.summary["peers"])
    assert set(by_host) == {p + SHORT[c] for c in DRIVERS for p in "sl"}
    assert n > 16
    assert nothing_left(docker_client, result.summary["run_id"])


def test_pieces_never_fails_and_says_none_only_where_explained(swarm):
    _, n, by_host = swarm
    for host, rs in by_host.items():
        assert [r.error for r in rs if r.error] == [], host
        for r in rs:
            if r.pieces is None:
                assert r.client in MAY_NOT_SAY and r.before == 0.0, (host, r)
            else:
                assert len(r.pieces) == n, (host, len(r.pieces))


@pytest.mark.parametrize("client", list(DRIVERS))
def test_a_seeder_has_every_piece(swarm, client):
    _, n, by_host = swarm
    verified = [r for r in by_host["s" + SHORT[client]] if r.before >= 1.0]
    assert len(verified) >= 5        # the whole swarm long
    assert all(r.pieces == [True] * n for r in verified)


@pytest.mark.parametrize("client", list(DRIVERS))
def test_a_leecher_mid_download_has_some_pieces_in_step_with_its_progress(swarm, client):
    _, n, by_host = swarm
    rs = [r for r in by_host["l" + SHORT[client]] if r.pieces is not None]
    mid = [r for r in rs if 0 < sum(r.pieces) < n]
    assert len(mid) >= 3, f"{client}: {len(mid)} readings mid-download"
    slack = 1 if client in PROGRESS_IS_VERIFIED else IN_FLIGHT
    for r in rs:
        have = sum(r.pieces)
        # never more verified pieces than the progress read after them says...
        assert have <= r.after * n + 1, (client, have, r.after * n)
        # ...and not fewer than the one read before, less what was in flight
        assert have >= r.before * n - slack, (client, have, r.before * n)


@pytest.mark.parametrize("client", list(DRIVERS))
def test_a_leecher_keeps_every_piece_it_verified_and_ends_with_all(swarm, client):
    _, n, by_host = swarm
    rs = [r for r in by_host["l" + SHORT[client]] if r.pieces is not None]
    for a, b in zip(rs, rs[1:]):
        assert all(y for x, y in zip(a.pieces, b.pieces) if x), f"{client} lost a piece between readings"
    done = [r for r in rs if r.before >= 1.0]
    assert done and all(r.pieces == [True] * n for r in done)
    assert rs[-1].pieces == [True] * n


def test_a_reading_is_cheap(swarm):
    _, _, by_host = swarm
    for host, rs in by_host.items():
        # deluge's ~44 ms is its RPC transport's (Nagle and delayed ACK), the same for stats()
        assert statistics.median(r.seconds for r in rs) < 0.25, host
