#!/usr/bin/python3
"""A minimal BitTorrent daemon on libtorrent's session API (Debian's python3-libtorrent).

libtorrent is a library, not a program: this is the smallest daemon around it that the
testbed can drive. Control is JSON over HTTP on the control address:
    POST /  {"method": NAME, "params": {...}}  ->  {"result": ...} or {"error": "..."}
Methods: version, add_torrent(torrent_b64, save_path, seed), status, pieces, stop_torrent,
effective_settings.
Settings come from a JSON file of libtorrent settings_pack keys, written by the driver.
"""
import argparse
import base64
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import libtorrent as lt


class Daemon:
    def __init__(self, settings: dict):
        # No default plugins: no ut_pex, no ut_metadata, so peers come only from the tracker.
        self.session = lt.session(settings, flags=0)
        self.handle = None

    def version(self, **_):
        return lt.__version__

    def add_torrent(self, torrent_b64: str, save_path: str, seed: bool = False, **_):
        info = lt.torrent_info(lt.bdecode(base64.b64decode(torrent_b64)))
        params = lt.add_torrent_params()
        params.ti = info
        params.save_path = save_path
        self.handle = self.session.add_torrent(params)
        if seed:
            self.handle.force_recheck()
        return str(info.info_hashes().v1) if hasattr(info, "info_hashes") else str(info.info_hash())

    def stop_torrent(self, **_):
        # Out of the session's queue first, or an auto-managed torrent is resumed by it.
        self.handle.unset_flags(lt.torrent_flags.auto_managed)
        self.handle.pause()
        return True

    def status(self, pieces: bool = False, **_):
        """The torrent's numbers; with pieces=True its have-bitfield too, in the same call (the
        testbed samples both every second)."""
        s = self.handle.status(lt.torrent_handle.query_pieces if pieces else 0)
        out = {"progress": s.progress, "rate_up": s.upload_payload_rate, "rate_down": s.download_payload_rate,
               "bytes_up": s.all_time_upload, "bytes_down": s.all_time_download, "peers": s.num_peers,
               "state": str(s.state), "seeding": s.is_seeding}
        if pieces:
            out["pieces"] = self._bitfield(s.pieces)
        return out

    def pieces(self, **_):
        return self._bitfield(self.handle.status(lt.torrent_handle.query_pieces).pieces)

    def _bitfield(self, have) -> dict:
        """The pieces had (hash-checked) as a hex bitfield, piece 0 the high bit of the first
        byte, spare bits zero (as on the wire), and the torrent's piece count."""
        n = self.handle.torrent_file().num_pieces()
        bits = "".join("1" if b else "0" for b in have) + "0" * (-len(have) % 8)
        field = int(bits, 2).to_bytes(len(bits) // 8, "big").hex() if bits else ""
        return {"bitfield": field, "num_pieces": n}

    def effective_settings(self, **_):
        return {k: v for k, v in self.session.get_settings().items() if isinstance(v, (int, str, bool, float))}


def serve(daemon: Daemon, host: str, port: int) -> ThreadingHTTPServer:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        # keep-alive: the driver asks every second over one connection, not a new one each time
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            try:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with lock:
                    result = getattr(daemon, req["method"])(**req.get("params", {}))
                body = {"result": result}
            except Exception as exc:  # reported to the driver, which raises it there
                body = {"error": f"{exc.__class__.__name__}: {exc}"}
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rpc-host", required=True)
    ap.add_argument("--rpc-port", type=int, required=True)
    ap.add_argument("--settings", required=True, help="JSON file of settings_pack keys")
    args = ap.parse_args()
    with open(args.settings) as f:
        settings = json.load(f)
    daemon = Daemon(settings)
    server = serve(daemon, args.rpc_host, args.rpc_port)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    daemon.session.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
