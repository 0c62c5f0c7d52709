"""transmission-daemon, driven through transmission-rpc."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from testbed.clients.base import ClientDriver, PeerStats, bitfield_pieces
from testbed.clients.kept import KeptConnection
from testbed.errors import RunError


STATS_FIELDS = ["id", "percentDone", "rateUpload", "rateDownload", "uploadedEver", "downloadedEver",
                "peersConnected", "status", "haveValid", "sizeWhenDone", "recheckProgress"]
PIECE_FIELDS = ["pieces", "pieceCount"]
SESSION = "X-Transmission-Session-Id"


class TransmissionDriver(ClientDriver):
    name = "transmission"
    rpc_port = 9091
    _sampling: KeptConnection | None = None     # the sampler's own connection (sample_begin)
    _session_id = ""

    def settings(self) -> dict:
        """Settings that differ from transmission 3.00's defaults, and why."""
        s = {
            "bind-address-ipv4": self.host.data_ip,   # peer traffic only on the emulated network
            "bind-address-ipv6": "::1",
            "rpc-bind-address": self.host.ctl_ip,     # control API only on the control network
            "rpc-port": self.rpc_port,
            "rpc-authentication-required": False,
            "rpc-whitelist-enabled": False,
            "rpc-host-whitelist-enabled": False,
            **({"peer-port": self.peer_port} if self.peer_port else {}),     # default: 51413
            "peer-port-random-on-start": False,
            "dht-enabled": False,                     # the swarm is exactly the one defined
            "pex-enabled": False,
            "lpd-enabled": False,
            "port-forwarding-enabled": False,         # no UPnP/NAT-PMP probing
            "blocklist-enabled": False,
            "download-dir": self.data_dir,
            "incomplete-dir-enabled": False,
            "download-queue-enabled": False,
            "seed-queue-enabled": False,
            "ratio-limit-enabled": False,
            "idle-seeding-limit-enabled": False,
            # transmission 3.00 caps in kB/s (1000 bytes)
            "speed-limit-up-enabled": self.behaviour.upload_limit is not None,
            "speed-limit-up": round((self.behaviour.upload_limit or 0) / 8 / 1000),
            "speed-limit-down-enabled": self.behaviour.download_limit is not None,
            "speed-limit-down": round((self.behaviour.download_limit or 0) / 8 / 1000),
            "message-level": 2,
            # 3.00 default: uTP on. Note its uTP-to-TCP fallback is broken (transmission#4033,
            # fixed in 4.0), so with uTP on it cannot reach TCP-only peers (aria2, rtorrent).
            "utp-enabled": self.behaviour.utp is not False,
        }
        b = self.behaviour
        if b.max_connections is not None:
            s["peer-limit-per-torrent"] = b.max_connections
        if b.upload_slots is not None:
            s["upload-slots-per-torrent"] = b.upload_slots
        if b.encryption is not None:
            # settings.json: 0 tolerated (plaintext first), 1 preferred, 2 required
            s["encryption"] = {"prefer": 1, "require": 2}[b.encryption]
        return s

    def configure(self) -> dict:
        conf = self.host.host_dir / "config" / "transmission"
        conf.mkdir(parents=True, exist_ok=True)
        settings = self.settings()
        (conf / "settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True))
        return settings

    def start(self) -> None:
        self.spawn(["transmission-daemon", "-f", "-g", f"{self.host.container_dir}/config/transmission",
                    "--logfile", f"{self.host.container_dir}/log/transmission.log"])

    def _client(self):
        if self._api is None:
            from transmission_rpc import Client
            self._api = Client(host=self.host.ctl_ip, port=self.rpc_port, timeout=5)
        return self._api

    def ready(self) -> bool:
        try:
            self._client()
            return True
        except Exception:  # connection refused until the daemon listens
            self._api = None
            return False

    def version(self) -> str:
        return str(self._client().get_session().version)

    def effective_settings(self) -> dict:
        return {k: v for k, v in self._client().get_session().fields.items() if not isinstance(v, (dict, list))}

    def submit_torrent(self, torrent: Path, seed: bool) -> None:
        t = self._client().add_torrent(torrent.read_bytes(), download_dir=self.data_dir, paused=False)
        self._torrent = t.id

    def has_torrent(self) -> bool:
        return any(t.hash_string.lower() == self.infohash
                   for t in self._client().get_torrents(ids=[self._torrent], arguments=["id", "hashString"]))

    def torrent_listed(self, seed: bool) -> None:
        if seed:
            self._client().verify_torrent(self._torrent)

    def stop_torrent(self) -> None:
        self._client().stop_torrent(self._torrent)

    def stats(self) -> PeerStats:
        return self._stats_of(self._client().get_torrent(self._torrent, arguments=STATS_FIELDS))

    def pieces(self) -> list[bool]:
        return self._pieces_of(self._client().get_torrent(self._torrent, arguments=["id", *PIECE_FIELDS]))

    def sample(self, want_pieces: bool) -> tuple[PeerStats, list[bool] | None]:
        t = self._client().get_torrent(self._torrent, arguments=STATS_FIELDS + (PIECE_FIELDS if want_pieces else []))
        return self._stats_of(t), (self._pieces_of(t) if want_pieces else None)

    def sample_begin(self, want_pieces: bool) -> Callable[[], tuple[PeerStats, list[bool] | None]]:
        """The same torrent-get, over a kept connection of the sampler's own: transmission-rpc
        sends each call through urllib3's pool and decodes it with its own machinery (1.2 ms
        of the sampler's CPU a call in a 150-peer swarm). Its Torrent still reads the answer."""
        from transmission_rpc import Torrent
        if self._sampling is None:
            self._sampling = KeptConnection(self.host.ctl_ip, self.rpc_port, 5)
        body = json.dumps({"method": "torrent-get", "arguments": {
            "ids": [self._torrent], "fields": STATS_FIELDS + (PIECE_FIELDS if want_pieces else [])}}).encode()
        read = self._rpc(body)

        def answer() -> tuple[PeerStats, list[bool] | None]:
            got = read()
            if got.get("result") != "success" or not got.get("arguments", {}).get("torrents"):
                raise RunError(f"{self.host.name}: transmission's torrent-get: {str(got.get('result'))[:100]}")
            t = Torrent(fields=got["arguments"]["torrents"][0])
            return self._stats_of(t), (self._pieces_of(t) if want_pieces else None)
        return answer

    def _rpc(self, body: bytes, session_again: bool = True) -> Callable[[], dict]:
        """A call over the sampler's connection. Transmission answers 409 with the session id
        to send (its guard against cross-site requests) to a request without the current one:
        the request goes again with it."""
        read = self._sampling.begin("/transmission/rpc", body, {"Content-Type": "application/json",
                                                                 SESSION: self._session_id})

        def answer() -> dict:
            got = read()
            if got.status == 409 and session_again:
                self._session_id = got.headers.get(SESSION.lower(), "")
                return self._rpc(body, session_again=False)()
            if got.status != 200:
                raise RunError(f"{self.host.name}: transmission's RPC answered HTTP {got.status}")
            return json.loads(got.body)
        return answer

    @staticmethod
    def _stats_of(t) -> PeerStats:
        # percentDone counts bytes not yet hash-checked; haveValid is verified bytes.
        size = t.size_when_done or 1
        return PeerStats(progress=min(1.0, t.fields["haveValid"] / size), rate_up=t.rate_upload,
                         rate_down=t.rate_download, bytes_up=t.uploaded_ever,
                         bytes_down=t.downloaded_ever, peers=t.peers_connected)

    @staticmethod
    def _pieces_of(t) -> list[bool]:
        # "pieces": the completed (hash-checked) pieces as a base64 bitfield, piece 0 the high bit
        return bitfield_pieces(t.fields["pieces"], t.fields["pieceCount"], "base64")
