"""libtorrent 2.0 (Debian's python3-libtorrent), driven through the small daemon that
ships in its image (images/libtorrent/lt-client.py): JSON over HTTP on the control network."""
from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from pathlib import Path

from testbed.clients.base import ClientDriver, PeerStats, bitfield_pieces
from testbed.clients.kept import KeptConnection
from testbed.errors import RunError

# libtorrent's enc_policy values (pe_forced, pe_enabled, pe_disabled); deluge and
# qBittorrent sit on libtorrent, deluge passes these through as they are
ENC_POLICY = {"require": 0, "prefer": 1, "disable": 2}
# torrent_status states in which status.progress is the progress of a check, not verified bytes
CHECKING = {"checking_files", "checking_resume_data", "queued_for_checking", "allocating", "downloading_metadata"}


class LibtorrentDriver(ClientDriver):
    name = "libtorrent"
    rpc_port = 6881

    def settings(self) -> dict:
        """settings_pack keys that differ from libtorrent 2.0.8's defaults, and why."""
        s = {
            # peers only on eth0; libtorrent's own default port is 6881
            "listen_interfaces": f"{self.host.data_ip}:{self.peer_port or 6881}",
            "outgoing_interfaces": "eth0",
            "enable_dht": False, "enable_lsd": False,                       # the swarm is exactly the one defined
            "enable_upnp": False, "enable_natpmp": False,
            "user_agent": "testbed-libtorrent/2.0",
            "alert_mask": 0,
            "active_downloads": -1, "active_seeds": -1, "active_limit": -1,
            "connections_limit": 500,
            "upload_rate_limit": round((self.behaviour.upload_limit or 0) / 8),       # bytes/s, 0 = none
            "download_rate_limit": round((self.behaviour.download_limit or 0) / 8),
            "enable_outgoing_utp": self.behaviour.utp is not False,   # default: on
            "enable_incoming_utp": self.behaviour.utp is not False,
            "enable_outgoing_tcp": self.behaviour.utp != "only",   # utp: only -> no TCP at all
            "enable_incoming_tcp": self.behaviour.utp != "only",
        }
        b = self.behaviour
        if b.max_connections is not None:
            s["connections_limit"] = b.max_connections
        if b.upload_slots is not None:
            s["unchoke_slots_limit"] = b.upload_slots
        if b.encryption is not None:
            s["out_enc_policy"] = s["in_enc_policy"] = ENC_POLICY[b.encryption]
            if b.encryption == "require":
                s["allowed_enc_level"] = 2       # pe_rc4: the payload too, not just the handshake
                s["prefer_rc4"] = True
        return s

    def configure(self) -> dict:
        settings = self.settings()
        (self.host.host_dir / "config" / "libtorrent.json").write_text(json.dumps(settings, indent=2))
        return settings

    def start(self) -> None:
        self.spawn(["lt-client", "--rpc-host", self.host.ctl_ip, "--rpc-port", str(self.rpc_port),
                    "--settings", f"{self.host.container_dir}/config/libtorrent.json"])

    # calls that may be sent again on a fresh connection if the kept one was found closed
    IDEMPOTENT = {"version", "status", "pieces", "effective_settings"}

    def call(self, method: str, **params):
        """One JSON call over a kept-alive HTTP connection (a new connection per call cost
        the sampler more CPU than the call itself); a restarted daemon gets a new one."""
        with self._rpc_lock:
            return self._begin(method, params, "_conn")()

    def _begin(self, method: str, params: dict, slot: str) -> Callable[[], object]:
        """A call in two halves over the kept connection in attribute `slot`: the request is
        sent now, and what is returned reads the answer."""
        if getattr(self, slot) is None:
            setattr(self, slot, KeptConnection(self.host.ctl_ip, self.rpc_port, 5))
        body = json.dumps({"method": method, "params": params}).encode()
        read = getattr(self, slot).begin("/", body, {"Content-Type": "application/json"},
                                         again=method in self.IDEMPOTENT)

        def answer() -> object:
            got = json.loads(read().body)
            if "error" in got:
                raise RunError(f"{self.host.name}: lt-client {method}: {got['error']}")
            return got["result"]
        return answer

    def ready(self) -> bool:
        try:
            self.call("version")
            return True
        except (OSError, ValueError):
            return False

    def version(self) -> str:
        return str(self.call("version"))

    def effective_settings(self) -> dict:
        return self.call("effective_settings")

    def submit_torrent(self, torrent: Path, seed: bool) -> None:
        self._torrent = self.call("add_torrent", torrent_b64=base64.b64encode(torrent.read_bytes()).decode(),
                                  save_path=self.data_dir, seed=seed)

    def has_torrent(self) -> bool:
        # lt-client keeps one torrent: status answers once its handle exists (an error before)
        return self.call("status") is not None and str(self._torrent).lower() == self.infohash

    def stop_torrent(self) -> None:
        self.call("stop_torrent")

    def __init__(self, host, behaviour=None, rpc_port=None):
        super().__init__(host, behaviour, rpc_port)
        self._rpc_lock = threading.Lock()
        self._conn: KeptConnection | None = None
        self._sampling: KeptConnection | None = None     # the sampler's own (sample_begin)

    def stats(self) -> PeerStats:
        return self.sample(False)[0]

    def pieces(self) -> list[bool]:
        # lt-client's pieces: torrent_status.pieces (the have bits: hash-checked) as a hex bitfield
        s = self.call("pieces")
        return bitfield_pieces(s["bitfield"], s["num_pieces"], "hex")

    def sample(self, want_pieces: bool) -> tuple[PeerStats, list[bool] | None]:
        # the have-bitfield comes in the same call when asked
        return self._sampled(self.call("status", pieces=want_pieces), want_pieces)

    def sample_begin(self, want_pieces: bool) -> Callable[[], tuple[PeerStats, list[bool] | None]]:
        # over a connection of the sampler's own, so that no lock is held between the halves
        read = self._begin("status", {"pieces": want_pieces}, "_sampling")
        return lambda: self._sampled(read(), want_pieces)

    def _sampled(self, s: dict, want_pieces: bool) -> tuple[PeerStats, list[bool] | None]:
        # while libtorrent checks, its progress is the check's, not verified bytes
        progress = 0.0 if s.get("state") in CHECKING else s["progress"]
        stats = PeerStats(progress=progress, rate_up=s["rate_up"], rate_down=s["rate_down"],
                          bytes_up=s["bytes_up"], bytes_down=s["bytes_down"], peers=s["peers"])
        have = s.get("pieces")
        return stats, (bitfield_pieces(have["bitfield"], have["num_pieces"], "hex") if want_pieces and have else None)
