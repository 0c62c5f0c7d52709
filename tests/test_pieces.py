"""pieces(): the shared bitfield decoding, and each driver against what its client's API answers.

The fakes answer in each client's own format, as seen from the real clients (transmission
3.00, qBittorrent 4.5.2, aria2 1.36, lt-client on libtorrent 2.0.8, rtorrent 0.9.8,
deluge 2.0.3): no container is started here.
"""
import base64
import importlib.util
import sys
import types
from pathlib import Path

import pytest
from transmission_rpc import Torrent

from testbed.clients import DRIVERS
from testbed.clients.base import bitfield_pieces
from testbed.errors import RunError
from tests.conftest import ROOT

# 12 pieces: had 0, 2, 3, 8 and 11 -> 1011 0000 1001 (spare 0000)
HAVE = [True, False, True, True, False, False, False, False, True, False, False, True]
FIELD = bytes([0b10110000, 0b10010000])


def encode(bits: list[bool]) -> bytes:
    """A test's own encoder: piece i is bit 7 - i % 8 of byte i // 8."""
    out = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        if b:
            out[i // 8] |= 0x80 >> (i % 8)
    return bytes(out)


# ---------------------------------------------------------------- the decoding helper
def test_piece_zero_is_the_most_significant_bit():
    assert bitfield_pieces(b"\x80", 1) == [True]
    assert bitfield_pieces(b"\x80", 8) == [True] + [False] * 7
    assert bitfield_pieces(b"\x01", 8) == [False] * 7 + [True]
    assert bitfield_pieces(b"\x40\x01", 16) == [False, True] + [False] * 13 + [True]
    assert bitfield_pieces(FIELD, 12) == HAVE


def test_spare_bits_after_the_last_piece_are_ignored():
    assert bitfield_pieces(b"\xff", 3) == [True] * 3
    assert bitfield_pieces(b"\xff\xff", 9) == [True] * 9
    assert bitfield_pieces(bytes([FIELD[0], FIELD[1] | 0x0F]), 12) == HAVE


@pytest.mark.parametrize("n", [*range(0, 34), 127, 128, 129, 1000, 2047])
def test_exactly_n_pieces_come_back(n):
    bits = [(i * 7) % 3 == 0 for i in range(n)]
    assert bitfield_pieces(encode(bits), n) == bits
    assert len(bitfield_pieces(b"\xff" * ((n + 7) // 8), n)) == n


def test_hex_and_base64_decode_the_same_bits():
    assert bitfield_pieces(FIELD.hex(), 12, "hex") == HAVE
    assert bitfield_pieces(FIELD.hex().upper(), 12, "hex") == HAVE          # rtorrent answers upper case
    assert bitfield_pieces(base64.b64encode(FIELD).decode(), 12, "base64") == HAVE
    assert bitfield_pieces(base64.b64encode(FIELD), 12, "base64") == HAVE  # bytes of base64 too
    assert bitfield_pieces(bytearray(FIELD), 12) == HAVE
    assert bitfield_pieces("", 0, "hex") == [] == bitfield_pieces("", 0, "base64")


@pytest.mark.parametrize("field,n", [(b"", 1), (b"\xff", 9), (b"\xff\xff", 8), (b"\x00" * 3, 16)])
def test_a_bitfield_of_the_wrong_length_is_refused(field, n):
    with pytest.raises(ValueError, match="bytes"):
        bitfield_pieces(field, n)


@pytest.mark.parametrize("field,encoding", [("0g", "hex"), ("abc", "hex"), ("gA=", "base64"), ("g@==", "base64")])
def test_a_malformed_bitfield_is_refused(field, encoding):
    with pytest.raises(ValueError):
        bitfield_pieces(field, 1, encoding)


def test_an_unknown_encoding_or_a_negative_count_is_refused():
    with pytest.raises(ValueError, match="encoding"):
        bitfield_pieces("80", 1, "base16")
    with pytest.raises(ValueError, match="negative"):
        bitfield_pieces(b"", -1)


# ---------------------------------------------------------------- each driver against its API
class FakeHost:
    name = "p1"
    data_ip = "198.18.0.5"
    ctl_ip = "198.19.0.6"
    container_dir = "/tb"

    def __init__(self, tmp: Path):
        self.host_dir = tmp

    def exec(self, argv, detach=False):
        raise AssertionError("pieces() must not start anything")


INFOHASH = "43f57f7519b7cff0d3d7933a8fae08cf65c5a1d1"


def driver(name, tmp_path, handle):
    d = DRIVERS[name](FakeHost(tmp_path))
    d.infohash, d._torrent = INFOHASH, handle
    return d


class Recorder:
    """Remembers every call made to the fake API."""

    def __init__(self):
        self.calls = []


class FakeTransmission(Recorder):
    def __init__(self, fields):
        super().__init__()
        self.fields = fields

    def get_torrent(self, torrent_id, arguments=None, timeout=None):
        self.calls.append((torrent_id, sorted(arguments)))
        # what transmission-rpc hands back: a Torrent of the asked fields (plus id, hashString)
        return Torrent(fields={"id": torrent_id, "hashString": INFOHASH,
                               **{k: v for k, v in self.fields.items() if k in arguments}})


def transmission(tmp_path, monkeypatch, have):
    api = FakeTransmission({"pieces": base64.b64encode(encode(have)).decode(), "pieceCount": len(have),
                            "percentDone": 0.5, "haveValid": 500, "sizeWhenDone": 1000, "rateUpload": 7,
                            "rateDownload": 9, "uploadedEver": 70, "downloadedEver": 600, "peersConnected": 3,
                            "status": 4, "recheckProgress": 0})
    d = driver("transmission", tmp_path, 1)
    monkeypatch.setattr(d, "_client", lambda: api)
    return d, api


class FakeQBittorrent(Recorder):
    def __init__(self, states):
        super().__init__()
        self.states = states

    def torrents_piece_states(self, torrent_hash=None, **kw):
        self.calls.append(torrent_hash)
        from qbittorrentapi import TorrentPieceInfoList
        return TorrentPieceInfoList(self.states)


def qbittorrent(tmp_path, monkeypatch, have):
    # 2 downloaded, 1 downloading (not verified yet), 0 not downloaded
    api = FakeQBittorrent([2 if h else (1 if i % 2 else 0) for i, h in enumerate(have)])
    d = driver("qbittorrent", tmp_path, INFOHASH)
    monkeypatch.setattr(d, "_client", lambda: api)
    return d, api


class FakeAria2(Recorder):
    def __init__(self, status):
        super().__init__()
        self.status = status
        self.client = self           # the driver reaches the JSON-RPC calls through API.client

    def tell_status(self, gid, keys=None):
        self.calls.append((gid, list(keys)))
        return {k: v for k, v in self.status.items() if k in keys}


def aria2(tmp_path, monkeypatch, have):
    # aria2's values are strings: bitfield in lower-case hex, numPieces a decimal
    api = FakeAria2({"bitfield": encode(have).hex(), "numPieces": str(len(have)), "status": "active",
                     "completedLength": "500", "totalLength": "1000", "uploadSpeed": "7", "downloadSpeed": "9",
                     "uploadLength": "70", "connections": "3"})
    d = driver("aria2", tmp_path, "2089b05ecca3d829")
    monkeypatch.setattr(d, "_client", lambda: api)
    return d, api


class FakeRTorrent(Recorder):
    def __init__(self, answers):
        super().__init__()
        self.answers = answers

    def __call__(self, method, *params):
        self.calls.append((method, *params))
        if method == "system.multicall":    # each call's answer in a list of one, a fault as a struct
            return [[self.answers[c["methodName"]]] if c["methodName"] in self.answers
                    else {"faultCode": -501, "faultString": "Unsupported target type found."} for c in params[0]]
        return self.answers[method]


def rtorrent(tmp_path, monkeypatch, have):
    api = FakeRTorrent({"d.bitfield": encode(have).hex().upper(), "d.size_chunks": len(have),
                        "d.completed_bytes": 500, "d.size_bytes": 1000, "d.up.rate": 7, "d.down.rate": 9,
                        "d.up.total": 70, "d.down.total": 600, "d.peers_connected": 3, "d.is_hash_checking": 0})
    d = driver("rtorrent", tmp_path, INFOHASH.upper())
    monkeypatch.setattr(d, "call", api)
    return d, api


class FakeLtClient(Recorder):
    def __init__(self, answer):
        super().__init__()
        self.answer = answer

    def __call__(self, method, **params):
        self.calls.append((method, params))
        if method == "status":
            return {"progress": 0.5, "rate_up": 7, "rate_down": 9, "bytes_up": 70, "bytes_down": 600, "peers": 3,
                    "state": "downloading", **({"pieces": self.answer} if params.get("pieces") else {})}
        return {"pieces": self.answer}[method]


def libtorrent(tmp_path, monkeypatch, have):
    api = FakeLtClient({"bitfield": encode(have).hex(), "num_pieces": len(have)})
    d = driver("libtorrent", tmp_path, INFOHASH)
    monkeypatch.setattr(d, "call", api)
    return d, api


class FakeDeluge(Recorder):
    def __init__(self, status):
        super().__init__()
        self.status = status

    def call(self, method, *args):
        self.calls.append((method, *args))
        assert method == "core.get_torrent_status"
        torrent_id, keys = args
        return {k: v for k, v in self.status.items() if k in keys} if self.status else {}


def deluge(tmp_path, monkeypatch, have):
    # deluge's piece bar: 3 completed, 2 being downloaded, 1 some peer has it, 0 none
    api = FakeDeluge({"pieces": [3 if h else i % 3 for i, h in enumerate(have)], "num_pieces": len(have),
                      "is_seed": all(have) and bool(have), "state": "Downloading",
                      "progress": 50.0, "upload_payload_rate": 7, "download_payload_rate": 9, "total_uploaded": 70,
                      "all_time_download": 600, "num_peers": 3})
    d = driver("deluge", tmp_path, INFOHASH)
    monkeypatch.setattr(d, "_client", lambda: api)
    return d, api


FAKES = {"transmission": transmission, "qbittorrent": qbittorrent, "aria2": aria2, "rtorrent": rtorrent,
         "libtorrent": libtorrent, "deluge": deluge}


def test_every_driver_has_a_fake_here():
    assert set(FAKES) == set(DRIVERS)


@pytest.mark.parametrize("name", list(DRIVERS))
@pytest.mark.parametrize("have", [HAVE, [True] * 12, [False] * 12, [True] * 8, [True, False] * 64 + [True]],
                         ids=["partial-12", "all-12", "none-12", "all-8", "alternating-129"])
def test_each_driver_decodes_its_clients_answer(name, have, tmp_path, monkeypatch):
    d, api = FAKES[name](tmp_path, monkeypatch, have)
    assert d.pieces() == have
    assert len(api.calls) == 1      # one request per reading (rtorrent's: one multicall)


# what the sampler asks each second: stats and pieces, in one request where the client allows
# (qBittorrent has no call that answers both)
@pytest.mark.parametrize("name", [n for n in DRIVERS if n != "qbittorrent"])
def test_each_driver_samples_stats_and_pieces_together(name, tmp_path, monkeypatch):
    d, api = FAKES[name](tmp_path, monkeypatch, HAVE)
    stats, have = d.sample(True)
    assert have == HAVE and len(api.calls) == 1
    assert (stats.progress, stats.rate_up, stats.rate_down, stats.bytes_up, stats.peers) == (0.5, 7, 9, 70, 3)
    assert stats.bytes_down in (500, 600)      # aria2 counts completed bytes as downloaded
    api.calls.clear()
    again, none = d.sample(False)
    assert none is None and again == stats and len(api.calls) == 1
    asked = repr(api.calls).replace("'pieces': False", "")      # lt-client's status(pieces=False)
    assert not any(k in asked for k in ("bitfield", "pieces", "size_chunks", "numPieces"))


# lt-client keeps one torrent and is asked without naming it
@pytest.mark.parametrize("name", [n for n in DRIVERS if n != "libtorrent"])
def test_each_driver_asks_about_the_swarms_torrent(name, tmp_path, monkeypatch):
    d, api = FAKES[name](tmp_path, monkeypatch, HAVE)
    d.pieces()
    assert str(d._torrent) in repr(api.calls)


def test_transmission_asks_only_for_the_bitfield_and_count(tmp_path, monkeypatch):
    d, api = transmission(tmp_path, monkeypatch, HAVE)
    d.pieces()
    assert api.calls == [(1, ["id", "pieceCount", "pieces"])]


def test_qbittorrent_counts_only_downloaded_pieces(tmp_path, monkeypatch):
    d, api = qbittorrent(tmp_path, monkeypatch, HAVE)
    api.states = [0, 1, 2, 1, 2]
    assert d.pieces() == [False, False, True, False, True]


def test_qbittorrent_without_a_piece_map_cannot_say(tmp_path, monkeypatch):
    # while it checks a torrent it just added, qBittorrent answers [] (seen with 4.5.2)
    d, api = qbittorrent(tmp_path, monkeypatch, HAVE)
    api.states = []
    assert d.pieces() is None


def test_aria2_before_the_download_starts_has_nothing(tmp_path, monkeypatch):
    # aria2 leaves bitfield out of tellStatus until the download has started
    d, api = aria2(tmp_path, monkeypatch, HAVE)
    del api.status["bitfield"]
    assert d.pieces() == [False] * 12


def test_aria2_refuses_a_bitfield_of_another_torrent(tmp_path, monkeypatch):
    d, api = aria2(tmp_path, monkeypatch, HAVE)
    api.status["numPieces"] = "20"
    with pytest.raises(ValueError):
        d.pieces()


def test_rtorrent_asks_for_bitfield_and_chunk_count(tmp_path, monkeypatch):
    d, api = rtorrent(tmp_path, monkeypatch, HAVE)
    d.pieces()
    [(method, calls)] = api.calls
    assert method == "system.multicall"
    assert [c["methodName"] for c in calls] == ["d.bitfield", "d.size_chunks"]
    assert all(c["params"] == [INFOHASH.upper()] for c in calls)


def test_rtorrent_names_the_call_that_failed_in_a_multicall(tmp_path, monkeypatch):
    import xmlrpc.client
    d, api = rtorrent(tmp_path, monkeypatch, HAVE)
    del api.answers["d.size_chunks"]
    with pytest.raises(xmlrpc.client.Fault, match="d.size_chunks"):
        d.pieces()


def test_rtorrent_in_its_own_case(tmp_path, monkeypatch):
    d, api = rtorrent(tmp_path, monkeypatch, HAVE)
    api.answers["d.bitfield"] = "B090"
    assert d.pieces() == HAVE
    api.answers["d.bitfield"] = "b090"
    assert d.pieces() == HAVE


def test_deluge_counts_only_completed_pieces(tmp_path, monkeypatch):
    d, api = deluge(tmp_path, monkeypatch, HAVE)
    api.status["pieces"], api.status["num_pieces"] = [0, 1, 2, 3, 3, 2], 6
    assert d.pieces() == [False, False, False, True, True, False]


def test_deluge_says_nothing_of_a_seed_but_that_it_is_one(tmp_path, monkeypatch):
    # deluge 2.0.3 answers pieces: None for a seeding torrent
    d, api = deluge(tmp_path, monkeypatch, HAVE)
    api.status.update(pieces=None, is_seed=True, state="Seeding")
    assert d.pieces() == [True] * 12


@pytest.mark.parametrize("pieces", [None, [], [3, 3, 1]])
def test_deluge_cannot_say_when_its_answer_does_not_cover_every_piece(pieces, tmp_path, monkeypatch):
    # None without metadata; fewer entries than pieces while libtorrent has no piece picker
    d, api = deluge(tmp_path, monkeypatch, HAVE)
    api.status["pieces"] = pieces
    assert d.pieces() is None


def test_deluge_not_listing_the_torrent_is_an_error(tmp_path, monkeypatch):
    d, api = deluge(tmp_path, monkeypatch, HAVE)
    api.status = {}
    with pytest.raises(RunError, match="does not list"):
        d.pieces()


# ---------------------------------------------------------------- lt-client's end of the libtorrent driver
def load_lt_client(monkeypatch):
    """images/libtorrent/lt-client.py, with a stand-in for the libtorrent module it imports."""
    fake = types.ModuleType("libtorrent")
    fake.torrent_handle = types.SimpleNamespace(query_pieces=1 << 5)
    monkeypatch.setitem(sys.modules, "libtorrent", fake)
    spec = importlib.util.spec_from_file_location("lt_client", ROOT / "images" / "libtorrent" / "lt-client.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, fake


class FakeHandle:
    def __init__(self, have):
        self.have, self.flags = have, []

    def status(self, flags=0xFFFFFFFF):
        self.flags.append(flags)
        return types.SimpleNamespace(pieces=list(self.have) if flags & (1 << 5) else [])

    def torrent_file(self):
        return types.SimpleNamespace(num_pieces=lambda: len(self.have))


@pytest.mark.parametrize("have", [HAVE, [True] * 8, [False] * 9, [True], [], [True, False] * 64 + [True]])
def test_lt_client_encodes_what_the_driver_decodes(have, monkeypatch, tmp_path):
    mod, fake = load_lt_client(monkeypatch)
    daemon = mod.Daemon.__new__(mod.Daemon)        # no session: only the handle is used
    daemon.handle = FakeHandle(have)
    answer = daemon.pieces()
    assert answer["num_pieces"] == len(have)
    assert answer["bitfield"] == encode(have).hex()
    assert daemon.handle.flags == [fake.torrent_handle.query_pieces]   # status() asked for the pieces only
    d = driver("libtorrent", tmp_path, INFOHASH)
    monkeypatch.setattr(d, "call", lambda method, **params: answer)
    assert d.pieces() == have


def test_deluge_s_downloading_mark_does_not_hide_a_piece_it_had():
    """deluge writes 2 ('being downloaded') over a complete piece while a peer's
    downloading_piece_index still points at it; the driver keeps the last reading there."""
    from testbed.clients.deluge import DelugeDriver

    class Answer:
        def __init__(self, states):
            self.states = states

        def call(self, *args):
            return {"pieces": self.states, "num_pieces": len(self.states), "is_seed": False}

    d = DelugeDriver.__new__(DelugeDriver)
    d._torrent = "x"
    got = []
    for states in ([3, 2, 0], [2, 2, 0], [3, 3, 2], [3, 3, 3]):
        d._client = lambda s=states: Answer(s)
        got.append(d.pieces())
    assert got == [[True, False, False], [True, False, False], [True, True, False], [True, True, True]]


def test_aria2_s_kept_connection_is_replaced_when_aria2_closed_it(monkeypatch):
    """aria2 closes an RPC connection idle for 30 s; a call on it fails before aria2 reads it,
    and goes once more on a new connection. A timeout is not retried."""
    from testbed.clients import kept

    from testbed.clients import aria2

    made = []

    class Conn:
        def __init__(self, *a, **kw):
            self.closed, self.fail = False, None
            made.append(self)

        def connect(self):
            self.sock = types.SimpleNamespace(setsockopt=lambda *a: None, settimeout=lambda t: None)

        def request(self, *a, **kw):
            if self.fail:
                raise self.fail

        def getresponse(self):
            return types.SimpleNamespace(keep_alive=True, status=200, headers={}, read=lambda: b'{"id": "x", "jsonrpc": "2.0", "result": "ok"}')

        def close(self):
            self.closed = True
    monkeypatch.setattr(kept, "Connection", Conn)
    client = aria2.kept_alive_client("http://198.19.0.6", 6800, "s", 5)
    assert client.post('{"method": "aria2.addTorrent"}')["result"] == "ok"
    made[0].fail = kept.Closed("closed")
    assert client.post('{"method": "aria2.addTorrent"}')["result"] == "ok"      # not lost: sent again
    assert len(made) == 2 and made[0].closed
    made[1].fail = TimeoutError("timed out")
    with pytest.raises(TimeoutError):
        client.post('{"method": "aria2.tellStatus"}')
    assert len(made) == 2                                                          # not asked twice
    client.post('{"method": "aria2.tellStatus"}')                                  # a new one after
    client._kept._used -= aria2.IDLE_S + 1
    client.post('{"method": "aria2.tellStatus"}')
    assert len(made) == 4 and made[2].closed                                       # idle: replaced


def test_aria2_s_sample_call_is_sent_first_and_read_later_and_survives_a_closed_connection(monkeypatch):
    """The sampler's split call: begin() sends the request (with the secret) and reads nothing;
    the answer is read when asked for. A kept connection aria2 had closed, found at either
    half, costs one new connection and the same request again."""
    from testbed.clients import kept
    import json

    from testbed.clients import aria2

    made, log = [], []

    class Conn:
        def __init__(self, *a, **kw):
            self.fail_send = self.fail_read = None
            made.append(self)

        def connect(self):
            self.sock = types.SimpleNamespace(setsockopt=lambda *a: None, settimeout=lambda t: None)

        def request(self, method, path, body, headers):
            if self.fail_send:
                raise self.fail_send
            log.append(("sent", made.index(self), json.loads(body)))

        def getresponse(self):
            if self.fail_read:
                raise self.fail_read
            log.append(("read", made.index(self)))
            return types.SimpleNamespace(keep_alive=True, status=200, headers={}, read=lambda: b'{"id": "x", "jsonrpc": "2.0", "result": {"n": "1"}}')

        def close(self):
            pass
    monkeypatch.setattr(kept, "Connection", Conn)
    client = aria2.kept_alive_client("http://198.19.0.6", 6800, "s", 5)
    finish = client.begin("aria2.tellStatus", ["gid", ["n"]])
    assert [e[0] for e in log] == ["sent"] and log[0][2]["params"] == ["token:s", "gid", ["n"]]
    assert finish() == {"n": "1"} and log[-1] == ("read", 0)
    made[0].fail_read = kept.Closed("closed")
    assert client.begin("aria2.tellStatus", ["gid", ["n"]])() == {"n": "1"}
    assert log[-2:] == [("sent", 1, log[0][2] | {"id": log[-2][2]["id"]}), ("read", 1)]
    made[1].fail_send = BrokenPipeError()
    assert client.begin("aria2.tellStatus", ["gid", ["n"]])() == {"n": "1"} and log[-1] == ("read", 2)
    made[2].fail_read = TimeoutError("timed out")
    finish = client.begin("aria2.tellStatus", ["gid", ["n"]])
    with pytest.raises(TimeoutError):
        finish()
    assert len(made) == 3                                                          # a hung aria2: not asked twice


def test_lt_client_s_sample_call_is_sent_first_read_later_and_agrees_with_sample(tmp_path, monkeypatch):
    """libtorrent's split call: the status request goes out at sample_begin over the
    sampler's own connection, the answer is read when asked for and decoded as sample()
    decodes it; a kept connection found closed is replaced and the request sent again."""
    from testbed.clients import kept
    import json

    made, log = [], []
    status = {"progress": 0.5, "rate_up": 7, "rate_down": 9, "bytes_up": 70, "bytes_down": 600, "peers": 3,
              "state": "downloading", "pieces": {"bitfield": encode(HAVE).hex(), "num_pieces": len(HAVE)}}

    class Conn:
        def __init__(self, *a, **kw):
            self.fail_read = None
            made.append(self)

        def connect(self):
            self.sock = types.SimpleNamespace(setsockopt=lambda *a: None, settimeout=lambda t: None)

        def request(self, method, path, body, headers):
            log.append(("sent", made.index(self), json.loads(body)))

        def getresponse(self):
            if self.fail_read:
                raise self.fail_read
            log.append(("read", made.index(self)))
            return types.SimpleNamespace(keep_alive=True, status=200, headers={}, read=lambda: json.dumps({"result": status}).encode())

        def close(self):
            pass
    monkeypatch.setattr(kept, "Connection", Conn)
    d = driver("libtorrent", tmp_path, INFOHASH)
    d.host.ctl_ip = "198.19.0.6"
    read = d.sample_begin(True)
    assert log == [("sent", 0, {"method": "status", "params": {"pieces": True}})]
    split = read()
    assert log[-1] == ("read", 0) and split[1] == HAVE and split == d.sample(True)
    assert len(made) == 2           # sample() went over the driver's other connection
    made[0].fail_read = ConnectionResetError()
    assert d.sample_begin(False)()[0] == split[0] and log[-2:] == [("sent", 2, log[-2][2]), ("read", 2)]


def test_transmission_s_sample_call_takes_the_session_id_and_agrees_with_sample(tmp_path, monkeypatch):
    """transmission's split call: torrent-get goes out at sample_begin; the 409 transmission
    answers to a request without its session id is answered by the same request with it, and
    the torrent is decoded as sample() decodes transmission-rpc's."""
    from testbed.clients import kept
    import json

    fields = {"id": 1, "pieces": base64.b64encode(encode(HAVE)).decode(), "pieceCount": len(HAVE),
              "percentDone": 0.5, "haveValid": 500, "sizeWhenDone": 1000, "rateUpload": 7, "rateDownload": 9,
              "uploadedEver": 70, "downloadedEver": 600, "peersConnected": 3, "status": 4, "recheckProgress": 0}
    sent = []

    class Conn:
        def __init__(self, *a, **kw):
            pass

        def connect(self):
            self.sock = types.SimpleNamespace(setsockopt=lambda *a: None, settimeout=lambda t: None)

        def request(self, method, path, body, headers):
            sent.append((path, json.loads(body), headers["X-Transmission-Session-Id"]))

        def getresponse(self):
            if sent[-1][2] != "abc":
                return types.SimpleNamespace(keep_alive=True, status=409, headers={"x-transmission-session-id": "abc"}, read=lambda: b"")
            body = json.dumps({"result": "success", "arguments": {"torrents": [fields]}}).encode()
            return types.SimpleNamespace(keep_alive=True, status=200, headers={}, read=lambda: body)

        def close(self):
            pass
    monkeypatch.setattr(kept, "Connection", Conn)
    d, _ = transmission(tmp_path, monkeypatch, HAVE)
    d.host.ctl_ip = "198.19.0.6"
    read = d.sample_begin(True)
    assert len(sent) == 1 and sent[0][1]["method"] == "torrent-get" and sent[0][1]["arguments"]["ids"] == [1]
    assert read() == d.sample(True)
    assert [s[2] for s in sent] == ["", "abc"]
    assert d.sample_begin(False)()[1] is None and sent[-1][2] == "abc" and len(sent) == 3     # the id kept


def test_a_kept_connection_s_read_waits_only_what_is_left_of_its_timeout(monkeypatch):
    """Answers read one after another (the sampler reads every peer's after sending all) wait
    at most the timeout counted from their request, not a full timeout each."""
    from testbed.clients import kept

    timeouts, clock = [], [100.0]

    class Conn:
        def __init__(self, *a, **kw):
            pass

        def connect(self):
            self.sock = types.SimpleNamespace(setsockopt=lambda *a: None, settimeout=timeouts.append)

        def request(self, *a):
            pass

        def getresponse(self):
            return types.SimpleNamespace(keep_alive=True, status=200, headers={}, read=lambda: b"{}")
    monkeypatch.setattr(kept, "Connection", Conn)
    monkeypatch.setattr(kept.time, "monotonic", lambda: clock[0])
    read = kept.KeptConnection("198.19.0.6", 1, timeout=5.0).begin("/", b"", {})
    clock[0] += 3.0
    read()
    assert timeouts == [2.0, 5.0]           # 2 s left while reading, then the full timeout again
    late = kept.KeptConnection("198.19.0.6", 1, timeout=5.0).begin("/", b"", {})
    clock[0] += 9.0
    late()
    assert timeouts[-2] == 0.05             # past its time: a last short wait, not a negative one
