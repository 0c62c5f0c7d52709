"""aria2c 1.36, driven through its JSON-RPC (aria2p)."""
from __future__ import annotations

from pathlib import Path

from testbed.clients.base import ClientDriver, PeerStats, bitfield_pieces

SECRET = "testbed"


class Aria2Driver(ClientDriver):
    name = "aria2"
    rpc_port = 6800
    _seed = False           # set when the torrent is added as a seeder

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
            self._api = aria2p.API(aria2p.Client(host=f"http://{self.host.ctl_ip}", port=self.rpc_port,
                                                 secret=SECRET, timeout=5))
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
        d = self._client().get_download(self._torrent)
        # a finished BitTorrent download stays the same gid while it seeds
        return PeerStats(progress=d.completed_length / d.total_length if d.total_length else 0.0,
                         rate_up=d.upload_speed, rate_down=d.download_speed, bytes_up=d.upload_length,
                         # aria2 counts no downloaded-bytes total: completed bytes, and none for a seed
                         bytes_down=0 if self._seed else d.completed_length, peers=d.connections)

    def pieces(self) -> list[bool]:
        # bitfield: hex, piece 0 the high bit, spare bits zero; aria2 leaves the key out while
        # the download has not started (nothing loaded yet)
        s = self._client().client.tell_status(self._torrent, ["bitfield", "numPieces"])
        n = int(s["numPieces"])
        return bitfield_pieces(s["bitfield"], n, "hex") if "bitfield" in s else [False] * n
