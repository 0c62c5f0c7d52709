"""aria2c 1.36, driven through its JSON-RPC (aria2p)."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from testbed.clients.base import ClientDriver, PeerStats, bitfield_pieces
from testbed.clients.kept import KeptConnection

SECRET = "testbed"
STATS_KEYS = ("completedLength", "totalLength", "uploadSpeed", "downloadSpeed", "uploadLength", "connections")
PIECE_KEYS = ("bitfield", "numPieces")
IDLE_S = 20.0           # a kept RPC connection idle longer than this is replaced (aria2 closes it at 30 s)
HEADERS = {"Content-Type": "application/json"}


def kept_alive_client(host: str, port: int, secret: str, timeout: float):
    """aria2p's Client, posting over one kept-alive HTTP connection. aria2p posts each call with
    requests.post: a new session and connection each time, which also reads the environment's
    proxy and netrc settings. That was most of the sampler's CPU in an aria2 swarm (3.3 ms a
    call; requests.Session 1.2 ms; http.client under 0.5 ms). aria2p has no option for it, so
    the transport is replaced here (testbed.clients.kept)."""
    import threading

    import aria2p

    class Client(aria2p.Client):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self._lock = threading.Lock()
            self._kept = KeptConnection(host.removeprefix("http://"), port, timeout, idle_s=IDLE_S)

        def post(self, payload: str) -> dict:
            with self._lock:
                return json.loads(self._kept.call("/jsonrpc", payload.encode(), HEADERS).body)

        def begin(self, method: str, params: list) -> Callable[[], object]:
            """call(method, params) in two halves: the request is sent now, and what is returned
            reads the answer. Not locked: for a client object only the sampler uses."""
            params = self.get_params(*params)
            params.insert(0, f"token:{self.secret}")
            read = self._kept.begin("/jsonrpc", self.get_payload(method, params).encode(), HEADERS)
            return lambda: self.res_or_raise(json.loads(read().body))

    return Client(host=host, port=port, secret=secret, timeout=timeout)


class Aria2Driver(ClientDriver):
    name = "aria2"
    rpc_port = 6800
    _seed = False           # set when the torrent is added as a seeder
    _sampling = None        # the sampler's own RPC client (sample_begin)

    def options(self) -> dict:
        """aria2c options that differ from aria2 1.36's defaults, and why."""
        o = {
            "enable-rpc": "true", "rpc-listen-port": str(self.rpc_port),
            "rpc-listen-all": "true",        # aria2 binds RPC to loopback or to all addresses, nothing between
            "rpc-secret": SECRET,
            # No --interface: aria2 binds its RPC listener to it as well, and the orchestrator
            # reaches RPC over ctl0. Peers and tracker are on the data subnet, so routing keeps
            # BitTorrent traffic on eth0 anyway.
            **({"listen-port": str(self.peer_port)} if self.peer_port else {}),   # default: 6881-6999
            "enable-dht": "false", "enable-dht6": "false", "bt-enable-lpd": "false",
            "enable-peer-exchange": "false",
            "dir": self.data_dir,
            "seed-ratio": "0.0",             # 0.0: seed regardless of ratio (default 1.0 stops at ratio 1)
            "file-allocation": "none",
            "max-concurrent-downloads": "100",
            "bt-max-peers": "55",
            # bytes/s; 0 = unlimited
            "max-overall-upload-limit": str(round((self.behaviour.upload_limit or 0) / 8)),
            "max-overall-download-limit": str(round((self.behaviour.download_limit or 0) / 8)),
            "check-certificate": "false",
            "summary-interval": "0",
            "console-log-level": "warn",
            "log": f"{self.host.container_dir}/log/aria2.log", "log-level": "notice",
            "disable-ipv6": "true",
        }
        b = self.behaviour
        if b.max_connections is not None:
            o["bt-max-peers"] = str(b.max_connections)
            # aria2 accepts peers beyond bt-max-peers while it downloads slower than this
            # (default 50K); 0 makes the limit hold
            o["bt-request-peer-speed-limit"] = "0"
        if b.encryption == "require":
            # the obfuscated handshake only, and RC4 for the payload (bt-min-crypto-level plain
            # would let the handshake choose a plaintext payload)
            o["bt-require-crypto"] = "true"
            o["bt-min-crypto-level"] = "arc4"
        elif b.encryption == "prefer":
            o["bt-require-crypto"] = "false"    # the default: obfuscated first, legacy accepted
        return o

    def configure(self) -> dict:
        opts = self.options()
        conf = self.host.host_dir / "config" / "aria2.conf"
        conf.write_text("".join(f"{k}={v}\n" for k, v in opts.items()))
        return opts

    def start(self) -> None:
        self.spawn(["aria2c", f"--conf-path={self.host.container_dir}/config/aria2.conf"])

    def _client(self):
        if self._api is None:
            import aria2p
            self._api = aria2p.API(kept_alive_client(f"http://{self.host.ctl_ip}", self.rpc_port, SECRET, 5))
        return self._api

    def ready(self) -> bool:
        try:
            self._client().client.get_version()
            return True
        except Exception:
            self._api = None
            return False

    def version(self) -> str:
        return str(self._client().client.get_version()["version"])

    def effective_settings(self) -> dict:
        return dict(self._client().client.get_global_option())

    def submit_torrent(self, torrent: Path, seed: bool) -> None:
        self._seed = seed
        opts = {"dir": self.data_dir, "check-integrity": "true" if seed else "false",
                "bt-seed-unverified": "false"}
        self._torrent = self._client().add_torrent(str(torrent), options=opts).gid

    def has_torrent(self) -> bool:
        status = self._client().client.tell_status(self._torrent, ["gid", "infoHash"])
        return status.get("infoHash", "").lower() == self.infohash

    def stop_torrent(self) -> None:
        # aria2.remove ends a seeding download; tellStatus still answers for it (status 'removed')
        self._client().client.remove(self._torrent)

    def stats(self) -> PeerStats:
        return self.sample(False)[0]

    def pieces(self) -> list[bool]:
        return self._pieces_of(self._client().client.tell_status(self._torrent, list(PIECE_KEYS)))

    def sample(self, want_pieces: bool) -> tuple[PeerStats, list[bool] | None]:
        # one tellStatus with only the keys read (aria2p's get_download asks for all of them,
        # file lists and torrent info included)
        return self._sampled(self._client().client.tell_status(self._torrent, self._keys(want_pieces)), want_pieces)

    def sample_begin(self, want_pieces: bool) -> Callable[[], tuple[PeerStats, list[bool] | None]]:
        # over a connection of the sampler's own, so that no lock is held between the halves
        if self._sampling is None:
            self._sampling = kept_alive_client(f"http://{self.host.ctl_ip}", self.rpc_port, SECRET, 5)
        finish = self._sampling.begin("aria2.tellStatus", [self._torrent, self._keys(want_pieces)])
        return lambda: self._sampled(finish(), want_pieces)

    @staticmethod
    def _keys(want_pieces: bool) -> list[str]:
        return [*STATS_KEYS, *(PIECE_KEYS if want_pieces else ())]

    def _sampled(self, d: dict, want_pieces: bool) -> tuple[PeerStats, list[bool] | None]:
        # aria2 answers numbers as strings
        done, total = int(d["completedLength"]), int(d["totalLength"])
        # a finished BitTorrent download stays the same gid while it seeds
        stats = PeerStats(progress=done / total if total else 0.0, rate_up=int(d["uploadSpeed"]),
                          rate_down=int(d["downloadSpeed"]), bytes_up=int(d["uploadLength"]),
                          # aria2 counts no downloaded-bytes total: completed bytes, and none for a seed
                          bytes_down=0 if self._seed else done, peers=int(d["connections"]))
        return stats, (self._pieces_of(d) if want_pieces else None)

    @staticmethod
    def _pieces_of(s: dict) -> list[bool]:
        # bitfield: hex, piece 0 the high bit, spare bits zero; aria2 leaves the key out while
        # the download has not started (nothing loaded yet)
        n = int(s["numPieces"])
        return bitfield_pieces(s["bitfield"], n, "hex") if "bitfield" in s else [False] * n
