"""The kept connection's own HTTP over a real socket (a socket pair: no address at all), the
other end answering as a client's control API would: keep-alive answers one after another,
a chunked body, headers in any case, a client that closes a kept connection, and one whose
answer ends part-way or is not HTTP."""
from __future__ import annotations

import socket
import threading

import pytest

from testbed.clients import kept

CONNECTION = kept.Connection


def serve(answers: list[bytes]) -> tuple[kept.Connection, list[bytes]]:
    """A Connection whose other end reads each request and writes the next of `answers` (None:
    closes instead). Returns it and the requests as received."""
    ours, theirs = socket.socketpair()
    got: list[bytes] = []

    def run() -> None:
        with theirs:
            for answer in answers:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += theirs.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(body) < length:
                    body += theirs.recv(65536)
                got.append(head + b"\r\n\r\n" + body)
                if answer is None:
                    return
                theirs.sendall(answer)
    threading.Thread(target=run, daemon=True).start()
    c = CONNECTION("198.19.0.6", 6800, timeout=5)
    c.sock = ours
    ours.settimeout(5)
    return c, got


def test_answers_one_after_another_on_one_connection():
    c, got = serve([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Transmission-Session-Id: abc\r\n\r\n{}",
                    b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"])
    c.request("POST", "/jsonrpc", b'{"a": 1}', {"Content-Type": "application/json"})
    r = c.getresponse()
    assert (r.status, r.read(), r.headers["x-transmission-session-id"], r.keep_alive) == (200, b"{}", "abc", True)
    c.request("POST", "/rpc", b"", {})
    r = c.getresponse()
    assert (r.status, r.read()) == (409, b"abcde")
    first = got[0].split(b"\r\n")
    assert first[0] == b"POST /jsonrpc HTTP/1.1" and b"Host: 198.19.0.6:6800" in first
    assert b"Content-Length: 8" in first and got[0].endswith(b'\r\n\r\n{"a": 1}')


def test_a_closed_connection_an_answer_cut_short_and_one_that_is_not_http():
    c, _ = serve([None])
    c.request("POST", "/", b"", {})
    with pytest.raises(kept.Closed):            # nothing came back: the request may go again
        c.getresponse()
    c, _ = serve([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"])
    c.request("POST", "/", b"", {})
    with pytest.raises(kept.ProtocolError, match="ended after"):
        c.getresponse()
    c, _ = serve([b"SSH-2.0-OpenSSH\r\n\r\n"])
    c.request("POST", "/", b"", {})
    with pytest.raises(kept.ProtocolError, match="not HTTP"):
        c.getresponse()


def test_a_kept_connection_closed_by_the_client_after_its_answer_is_not_reused(monkeypatch):
    made = []

    def fresh(*a, **kw):
        c, _ = serve([b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"])
        c.connect = lambda: None
        made.append(c)
        return c
    monkeypatch.setattr(kept, "Connection", fresh)
    k = kept.KeptConnection("198.19.0.6", 6800)
    assert k.call("/", b"", {}).body == b"x" and k.call("/", b"", {}).body == b"x"
    assert len(made) == 2 and made[0].sock is None
