"""rtorrent 0.9.8, driven through its XML-RPC interface over SCGI.

No maintained Python library speaks XML-RPC over SCGI (xmlrpc.client speaks HTTP), so
the transport is written here: a netstring-framed SCGI request around xmlrpc.client's
dumps/loads, about ten lines.
"""
from __future__ import annotations

import socket
import xmlrpc.client
from pathlib import Path

from testbed.clients.base import ClientDriver, PeerStats, bitfield_pieces


def scgi_call(host: str, port: int, method: str, *params, timeout: float = 5.0):
    body = xmlrpc.client.dumps(params, method).encode()
    headers = {"CONTENT_LENGTH": str(len(body)), "SCGI": "1", "REQUEST_METHOD": "POST"}
    head = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in headers.items())
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(str(len(head)).encode() + b":" + head + b"," + body)
        reply = b"".join(iter(lambda: s.recv(65536), b""))
    payload = reply.split(b"\r\n\r\n", 1)[1]
    return xmlrpc.client.loads(payload)[0][0]


STATS_CALLS = ("d.completed_bytes", "d.size_bytes", "d.up.rate", "d.down.rate", "d.up.total", "d.down.total",
               "d.peers_connected", "d.is_hash_checking")
PIECE_CALLS = ("d.bitfield", "d.size_chunks")


def kib(bits_per_s: float | None) -> int:
    return 0 if bits_per_s is None else max(1, round(bits_per_s / 8 / 1024))


class RTorrentDriver(ClientDriver):
    name = "rtorrent"
    rpc_port = 5000

    def settings(self) -> dict:
        """rtorrent.rc settings that differ from rtorrent 0.9.8's defaults, and why."""
        s = {
            "system.daemon.set": "true",
            "network.scgi.open_port": f"{self.host.ctl_ip}:{self.rpc_port}",   # control network only
            "network.bind_address.set": self.host.data_ip,                     # peers only on eth0
            "network.local_address.set": self.host.data_ip,
            **({"network.port_range.set": f"{self.peer_port}-{self.peer_port}", "network.port_random.set": "no"}
               if self.peer_port else {}),                                     # default: 6890-6999
            "dht.mode.set": "disable", "protocol.pex.set": "no", "trackers.use_udp.set": "no",
            "directory.default.set": self.data_dir,
            "session.path.set": f"{self.host.container_dir}/config/rtorrent/session",
            "network.xmlrpc.size_limit.set": "8M",
            "pieces.hash.on_completion.set": "no",
            # rtorrent throttles in KiB/s; 0 = unlimited
            "throttle.global_up.max_rate.set_kb": str(kib(self.behaviour.upload_limit)),
            "throttle.global_down.max_rate.set_kb": str(kib(self.behaviour.download_limit)),
            "throttle.max_peers.normal.set": "100", "throttle.max_peers.seed.set": "100",
            "log.open_file": f"\"main\", {self.host.container_dir}/log/rtorrent.log",
            "log.add_output": "\"info\", \"main\"",
        }
        b = self.behaviour
        if b.max_connections is not None:
            for kind in ("normal", "seed"):
                s[f"throttle.min_peers.{kind}.set"] = str(b.max_connections)
                s[f"throttle.max_peers.{kind}.set"] = str(b.max_connections)
        if b.upload_slots is not None:
            s["throttle.max_uploads.set"] = str(b.upload_slots)
            s["throttle.max_uploads.global.set"] = str(b.upload_slots)
        if b.encryption is not None:
            s["protocol.encryption.set"] = {"require": "allow_incoming,try_outgoing,require,require_RC4",
                                            "prefer": "allow_incoming,try_outgoing,enable_retry",
                                            "disable": "none"}[b.encryption]
        return s

    def configure(self) -> dict:
        conf = self.host.host_dir / "config" / "rtorrent"
        (conf / "session").mkdir(parents=True, exist_ok=True)
        settings = self.settings()
        (conf / "rtorrent.rc").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        return settings

    def start(self) -> None:
        self.spawn(["rtorrent", "-n", "-o", f"import={self.host.container_dir}/config/rtorrent/rtorrent.rc"])

    def call(self, method: str, *params):
        return scgi_call(self.host.ctl_ip, self.rpc_port, method, *params)

    def ready(self) -> bool:
        try:
            self.call("system.client_version")
            return True
        except Exception:
            return False

    def version(self) -> str:
        return str(self.call("system.client_version"))

    def effective_settings(self) -> dict:
        """rtorrent has no 'dump all settings' call: read back each setting the driver wrote,
        plus the behaviour-shaping ones it left at their defaults."""
        queries = ["network.port_range", "protocol.pex", "protocol.encryption", "throttle.max_uploads",
                   "throttle.max_peers.normal", "throttle.max_peers.seed", "throttle.global_up.max_rate",
                   "throttle.global_down.max_rate", "network.bind_address", "trackers.use_udp", "directory.default"]
        out = {}
        for q in queries:
            try:
                out[q] = self.call(q)
            except Exception as exc:   # a query this version does not know
                out[q] = f"unavailable: {exc}"
        return out

    def submit_torrent(self, torrent: Path, seed: bool) -> None:
        self._torrent = self.infohash.upper()
        # rtorrent hash-checks files that already exist when it starts a torrent. The call
        # returns before the download is registered: until then d.* answer fault -501
        # 'Could not find info-hash', hence add_torrent waits for has_torrent().
        self.call("load.raw_start_verbose", "", xmlrpc.client.Binary(torrent.read_bytes()),
                  f"d.directory.set={self.data_dir}")

    def has_torrent(self) -> bool:
        return self._torrent in self.call("download_list", "")

    def stop_torrent(self) -> None:
        self.call("d.stop", self._torrent)

    def multicall(self, *methods: str) -> list:
        """The swarm's torrent's d.* `methods` in one request (XML-RPC's system.multicall):
        one connection, where a call each costs the testbed a connection each."""
        answers = self.call("system.multicall", [{"methodName": m, "params": [self._torrent]} for m in methods])
        out = []
        for method, answer in zip(methods, answers, strict=True):
            if isinstance(answer, dict):            # a fault of that one call
                raise xmlrpc.client.Fault(answer.get("faultCode", 0), f"{method}: {answer.get('faultString')}")
            out.append(answer[0])
        return out

    def stats(self) -> PeerStats:
        return self.sample(False)[0]

    def pieces(self) -> list[bool]:
        # d.bitfield: the completed chunks as hex, chunk 0 the high bit; d.size_chunks: their count
        return bitfield_pieces(*self.multicall(*PIECE_CALLS), "hex")

    def sample(self, want_pieces: bool) -> tuple[PeerStats, list[bool] | None]:
        got = self.multicall(*STATS_CALLS, *(PIECE_CALLS if want_pieces else ()))
        done, size, up, down, up_total, down_total, peers, hashing = got[:len(STATS_CALLS)]
        # only trust the verified bytes once rtorrent's hash check is over
        stats = PeerStats(progress=done / size if size and not hashing else 0.0, rate_up=up, rate_down=down,
                          bytes_up=up_total, bytes_down=down_total, peers=peers)
        return stats, (bitfield_pieces(*got[len(STATS_CALLS):], "hex") if want_pieces else None)
