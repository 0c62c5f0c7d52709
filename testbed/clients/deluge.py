"""deluged 2.0.3, driven through deluge-client.

Debian's deluged crashes at start under Python 3.11 when it logs at info level, so it
runs with `-L none`; its own log is therefore empty and the driver records its settings.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path

from testbed.clients.base import ClientDriver, PeerStats
from testbed.clients.libtorrent import ENC_POLICY
from testbed.errors import RunError

USER, PASSWORD = "testbed", "testbed"


STATS_KEYS = ("progress", "upload_payload_rate", "download_payload_rate", "total_uploaded", "all_time_download",
              "num_peers", "state")
PIECE_KEYS = ("pieces", "num_pieces", "is_seed")


class DelugeDriver(ClientDriver):
    name = "deluge"
    rpc_port = 58846
    _last_pieces: list[bool] | None = None     # the last piece map read (see pieces())

    def core_settings(self) -> dict:
        """core.conf settings that differ from deluge 2.0.3's defaults, and why."""
        s = {
            "allow_remote": True,                         # the orchestrator connects over ctl0
            "dht": False, "lsd": False, "utpex": False,   # the swarm is exactly the one defined
            "upnp": False, "natpmp": False,
            "new_release_check": False,                   # no update check
            **({"listen_ports": [self.peer_port, self.peer_port], "random_port": False} if self.peer_port else {}),
            "listen_interface": self.host.data_ip, "outgoing_interface": "eth0",
            "download_location": self.data_dir, "move_completed": False,
            "queue_new_to_top": False, "max_active_limit": -1, "max_active_downloading": -1,
            "max_active_seeding": -1, "dont_count_slow_torrents": True,
            "stop_seed_at_ratio": False,
            # KiB/s; -1 = unlimited
            "max_upload_speed": self.behaviour.upload_limit / 8 / 1024 if self.behaviour.upload_limit else -1.0,
            "max_download_speed": self.behaviour.download_limit / 8 / 1024 if self.behaviour.download_limit else -1.0,
            "max_connections_global": 500, "enabled_plugins": [],
        }
        b = self.behaviour
        if b.max_connections is not None:
            s["max_connections_per_torrent"] = b.max_connections
        if b.upload_slots is not None:
            s["max_upload_slots_per_torrent"] = b.upload_slots
            s["max_upload_slots_global"] = b.upload_slots
        if b.encryption is not None:
            s["enc_in_policy"] = s["enc_out_policy"] = ENC_POLICY[b.encryption]
            if b.encryption == "require":
                s["enc_level"] = 1               # full stream (RC4), not only the handshake
        return s

    def configure(self) -> dict:
        conf = self.host.host_dir / "config" / "deluge"
        conf.mkdir(parents=True, exist_ok=True)
        settings = self.core_settings()
        # deluge's config format: a version header object followed by the settings object
        (conf / "core.conf").write_text(json.dumps({"file": 1, "format": 1}) + json.dumps(settings, indent=2))
        (conf / "auth").write_text(f"{USER}:{PASSWORD}:10\n")
        return settings

    def start(self) -> None:
        self.spawn(["deluged", "-d", "-L", "none", "-c", f"{self.host.container_dir}/config/deluge",
                    "-p", str(self.rpc_port), "-u", self.host.ctl_ip, "-i", self.host.data_ip])

    def _client(self):
        if self._api is None:
            from deluge_client import DelugeRPCClient
            rpc = DelugeRPCClient(self.host.ctl_ip, self.rpc_port, USER, PASSWORD, decode_utf8=True)
            rpc.connect()
            # deluge-client writes each request in two parts; without TCP_NODELAY the second
            # waits for the first's ACK (Nagle), and every call took 44 ms instead of 0.35 ms
            rpc._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._api = rpc
        return self._api

    def ready(self) -> bool:
        try:
            self._client().call("daemon.info")
            return True
        except Exception:
            self._api = None
            return False

    def version(self) -> str:
        return str(self._client().call("daemon.info"))

    def effective_settings(self) -> dict:
        return dict(self._client().call("core.get_config"))

    def submit_torrent(self, torrent: Path, seed: bool) -> None:
        import base64
        # No recheck for a seeder: with no resume data libtorrent checks the files it finds
        # on its own. A recheck sent on top (as before) left the torrent Queued, announced
        # 'stopped', until libtorrent's next queue pass up to 30 s later.
        torrent_id = self._client().call("core.add_torrent_file", torrent.name,
                                         base64.b64encode(torrent.read_bytes()).decode(),
                                         {"download_location": self.data_dir})
        self._torrent = torrent_id or self.infohash     # deluge's torrent id is the info-hash

    def has_torrent(self) -> bool:
        return self._torrent in self._client().call("core.get_session_state")

    def stop_torrent(self) -> None:
        self._client().call("core.pause_torrent", self._torrent)

    def _status(self, keys: tuple[str, ...]) -> dict:
        s = self._client().call("core.get_torrent_status", self._torrent, list(keys))
        if not s:   # deluge answers {} for a torrent it does not know
            raise RunError(f"{self.host.name}: deluge does not list the torrent {self._torrent}")
        return s

    def stats(self) -> PeerStats:
        return self.sample(False)[0]

    def pieces(self) -> list[bool] | None:
        return self._pieces_of(self._status(PIECE_KEYS))

    def sample(self, want_pieces: bool) -> tuple[PeerStats, list[bool] | None]:
        s = self._status(STATS_KEYS + (PIECE_KEYS if want_pieces else ()))
        # deluge reports progress 100 while it is still checking: only trust it once not checking
        progress = 0.0 if s["state"] in ("Checking", "Allocating") else s["progress"] / 100.0
        stats = PeerStats(progress=progress, rate_up=s["upload_payload_rate"], rate_down=s["download_payload_rate"],
                          bytes_up=s["total_uploaded"], bytes_down=s["all_time_download"], peers=s["num_peers"])
        return stats, (self._pieces_of(s) if want_pieces else None)

    def _pieces_of(self, s: dict) -> list[bool] | None:
        """deluge 2.0.3's "pieces" is its UI's piece bar: per piece 3 completed (libtorrent's
        have bit: hash-checked), 2 being downloaded, 1 a peer has it, 0 none. It answers None
        for a seeding torrent (all pieces had: is_seed) and for one without metadata."""
        n = s["num_pieces"]
        if s["is_seed"]:
            return [True] * n
        states = s["pieces"]
        if states is None or len(states) != n:
            # deluge pairs the have bits with libtorrent's piece_availability(), which is empty
            # while the torrent has no piece picker, and so answers fewer entries than pieces:
            # at that moment it cannot say
            return None
        # deluge writes 2 over a piece's state for every peer whose downloading_piece_index
        # points at it, even when the piece is already complete (deluge/core/torrent.py,
        # _get_pieces_info): a 2 says nothing of the have bit, so the last reading stands
        last = self._last_pieces if self._last_pieces and len(self._last_pieces) == n else [False] * n
        have = [v == 3 or (v == 2 and was) for v, was in zip(states, last)]
        self._last_pieces = have
        return have
