"""qbittorrent-nox 4.5, driven through its Web API (qbittorrent-api)."""
from __future__ import annotations

from pathlib import Path

from testbed.clients.base import ClientDriver, PeerStats
from testbed.errors import RunError

# states in which qBittorrent reports the progress of a check, or nothing verified yet
CHECKING = {"checkingUP", "checkingDL", "checkingResumeData", "allocating", "metaDL"}


class QBittorrentDriver(ClientDriver):
    name = "qbittorrent"
    rpc_port = 8080

    def preferences(self) -> dict:
        """Web API preferences that differ from qBittorrent 4.5.2's defaults, and why."""
        p = {
            "dht": False, "pex": False, "lsd": False,            # the swarm is exactly the one defined
            "upnp": False,                                        # no UPnP/NAT-PMP probing
            **({"listen_port": self.peer_port, "random_port": False} if self.peer_port else {}),
            "current_network_interface": "eth0",                  # peer traffic only on the emulated network
            "current_interface_address": self.host.data_ip,
            "save_path": self.data_dir, "temp_path_enabled": False,
            "queueing_enabled": False,                            # every torrent active at once
            "max_ratio_enabled": False, "max_seeding_time_enabled": False,
            # bytes/s; 0 = unlimited
            "up_limit": round((self.behaviour.upload_limit or 0) / 8),
            "dl_limit": round((self.behaviour.download_limit or 0) / 8),
            "max_connec": 500, "max_connec_per_torrent": 100,
            "announce_to_all_trackers": True,
            # bittorrent_protocol: 0 = TCP and uTP (the default), 1 = TCP only, 2 = uTP only
            "bittorrent_protocol": {False: 1, "only": 2}.get(self.behaviour.utp, 0),
        }
        b = self.behaviour
        if b.max_connections is not None:
            p["max_connec_per_torrent"] = b.max_connections
        if b.upload_slots is not None:
            p["max_uploads_per_torrent"] = b.upload_slots
            p["max_uploads"] = b.upload_slots
        if b.encryption is not None:
            # 0 prefer encryption (plaintext accepted), 1 require (force), 2 disable
            p["encryption"] = {"prefer": 0, "require": 1, "disable": 2}[b.encryption]
        return p

    def configure(self) -> dict:
        conf = self.host.host_dir / "config" / "qBittorrent" / "config"
        conf.mkdir(parents=True, exist_ok=True)
        # Written before the first start so that DHT/LSD/UPnP are off from the first second;
        # the same settings are applied again through the Web API once it answers.
        (conf / "qBittorrent.conf").write_text("\n".join([
            "[LegalNotice]", "Accepted=true", "",
            "[BitTorrent]", "Session\\DHTEnabled=false", "Session\\PeXEnabled=false",
            "Session\\LSDEnabled=false", *([f"Session\\Port={self.peer_port}"] if self.peer_port else []),
            "Session\\Interface=eth0",
            "Session\\InterfaceName=eth0", f"Session\\InterfaceAddress={self.host.data_ip}",
            f"Session\\DefaultSavePath={self.data_dir}", "Session\\QueueingSystemEnabled=false", "",
            "[Preferences]", "Connection\\UPnP=false", f"WebUI\\Address={self.host.ctl_ip}",
            f"WebUI\\Port={self.rpc_port}", "WebUI\\LocalHostAuth=false",
            "WebUI\\AuthSubnetWhitelistEnabled=true", "WebUI\\AuthSubnetWhitelist=198.19.0.0/16",
            "WebUI\\CSRFProtection=false", "WebUI\\HostHeaderValidation=false", "General\\Locale=en", "",
        ]))
        return self.preferences()

    def start(self) -> None:
        self.spawn(["qbittorrent-nox", f"--profile={self.host.container_dir}/config",
                    f"--webui-port={self.rpc_port}"])

    def _client(self):
        if self._api is None:
            import logging

            import qbittorrentapi
            # urllib3 logs every refused connection while qBittorrent starts; wait_ready expects them
            logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
            self._api = qbittorrentapi.Client(host=f"http://{self.host.ctl_ip}:{self.rpc_port}",
                                              REQUESTS_ARGS={"timeout": 5}, DISABLE_LOGGING_DEBUG_OUTPUT=True)
        return self._api

    def ready(self) -> bool:
        try:
            self._client().app_version()
            self._client().app_set_preferences(self.preferences())
            return True
        except Exception:
            self._api = None
            return False

    def version(self) -> str:
        return str(self._client().app_version())

    def effective_settings(self) -> dict:
        return dict(self._client().app_preferences())

    def submit_torrent(self, torrent: Path, seed: bool) -> None:
        self._torrent = self.infohash
        # torrents/add returns before the torrent exists (add_torrent waits for has_torrent).
        # No recheck for a seeder: with no resume data qBittorrent checks the files it finds
        # on its own, and a recheck sent while it checks resume data stalls in checkingDL
        # (seen with 4.5.2).
        answer = self._client().torrents_add(torrent_files=torrent.read_bytes(), save_path=self.data_dir)
        if isinstance(answer, str) and answer.strip() != "Ok.":
            raise RunError(f"{self.host.name}: qBittorrent answered {answer.strip()!r} to adding the torrent "
                           f"(see {self.host.host_dir}/log)")

    def has_torrent(self) -> bool:
        return bool(self._client().torrents_info(torrent_hashes=self._torrent))

    def stop_torrent(self) -> None:
        self._client().torrents_pause(torrent_hashes=self._torrent)

    def stats(self) -> PeerStats:
        found = self._client().torrents_info(torrent_hashes=self._torrent)
        if not found:
            raise RunError(f"{self.host.name}: qBittorrent no longer lists the torrent {self._torrent}")
        t = found[0]
        # while qBittorrent checks, its progress is the check's, not verified bytes
        progress = 0.0 if t.state in CHECKING else float(t.progress)
        return PeerStats(progress=progress, rate_up=t.upspeed, rate_down=t.dlspeed,
                         bytes_up=t.uploaded, bytes_down=t.downloaded, peers=t.num_seeds + t.num_leechs)

    def pieces(self) -> list[bool] | None:
        # torrents/pieceStates: one state per piece, 0 not downloaded, 1 downloading, 2 downloaded
        # (hash-checked: libtorrent's have bits)
        states = self._client().torrents_piece_states(torrent_hash=self._torrent)
        if not states:
            # qBittorrent answers [] until it has a piece map of the torrent: seen (4.5.2) in the
            # first second after adding it, while it checks; and so without metadata
            return None
        return [s == 2 for s in states]
