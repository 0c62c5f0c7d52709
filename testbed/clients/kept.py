"""A kept-alive HTTP connection to a client's control API, and calls over it in two halves.

The sampler asks every peer's client for its stats each second. Over a new connection per
call (what aria2p's and transmission-rpc's transports do) the connection cost the testbed more
CPU than the call; over one kept connection, a call is a request and an answer. The sampler
sends every peer's request first and reads the answers afterwards, all in its own thread
(`ClientDriver.sample_begin`), so `begin` sends and returns what reads. Written here, over
a socket with httptools parsing the answers: the clients' own libraries have no such split,
http.client parses headers slowly (below), and each driver needs only a POST and its answer.
"""
from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import NamedTuple

import httptools


class Closed(ConnectionResetError):
    """The client closed the connection before its answer began: a kept connection it had
    closed while idle, so the request was not read."""


class ProtocolError(OSError):
    """An answer that is not HTTP, or that ended part-way."""


# a kept connection the client had closed: the request was not read, so it may go again
CLOSED = (Closed, BrokenPipeError, ConnectionResetError)


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]     # names in lower case
    body: bytes


class _Reading:
    """httptools' callbacks, collecting one answer."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.parts: list[bytes] = []
        self.done = self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        # asked here: once the answer is over, the parser is ready for the next and forgets it
        self.done, self.keep_alive = True, self.parser.should_keep_alive()


class Response(NamedTuple):
    """An answer as Connection.getresponse gives it (read() for its body)."""
    status: int
    headers: dict[str, str]
    body: bytes
    keep_alive: bool

    def read(self) -> bytes:
        return self.body


class Connection:
    """One HTTP/1.1 connection to a client's control API: what the kept connection needs of
    http.client's (connect, request, getresponse, close), with the answer parsed by
    httptools (llhttp). In a 100-peer aria2 swarm http.client's getresponse took 0.12 ms of
    the sampler's CPU a call, most of it parsing headers through the email package; with this
    the whole call (request and answer) went from 0.24-0.31 ms to 0.15-0.17 ms.

    Nagle's algorithm is off, and a request goes out in one write: with Nagle on, a request
    written in two parts waits for the client's ACK of the first, which its kernel delays by
    40 ms (measured against aria2: 44 ms and 400 us of the sampler's CPU a call, against 0.15 ms
    and 95 us)."""

    def __init__(self, host: str, port: int, timeout: float):
        self.host, self.port, self.timeout = host, port, timeout
        self.sock: socket.socket | None = None

    def connect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def request(self, method: str, path: str, body: bytes, headers: dict) -> None:
        if self.sock is None:
            raise ProtocolError("the connection is not open")
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                          f"Content-Length: {len(body)}\r\n{head}\r\n".encode("latin-1") + body)

    def getresponse(self) -> Response:
        if self.sock is None:
            raise ProtocolError("no request was sent on this connection")
        got = _Reading()
        parser = got.parser = httptools.HttpResponseParser(got)
        seen = 0
        while not got.done:
            data = self.sock.recv(65536)
            if not data:
                if seen:
                    raise ProtocolError(f"the answer from {self.host}:{self.port} ended after {seen} bytes")
                raise Closed(f"{self.host}:{self.port} closed the connection without answering")
            seen += len(data)
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise ProtocolError(f"{self.host}:{self.port} answered what is not HTTP ({exc})") from None
        return Response(parser.get_status_code(), got.headers, b"".join(got.parts), got.keep_alive)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class KeptConnection:
    """One kept-alive connection, for one call at a time (its user locks if several threads
    share it). A connection idle longer than `idle_s` is not reused (aria2 closes one idle
    for 30 s). A kept connection found closed by the client, when sending or when reading,
    is replaced and the request sent once more if `again` (an idempotent call); any other
    failure, a timeout included, is raised: a hung client is not asked twice."""

    def __init__(self, host: str, port: int, timeout: float = 5.0, idle_s: float | None = None):
        self.host, self.port, self.timeout, self.idle_s = host, port, timeout, idle_s
        self._conn: Connection | None = None
        self._used = 0.0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def call(self, path: str, body: bytes, headers: dict, again: bool = True) -> Answer:
        return self.begin(path, body, headers, again)()

    def begin(self, path: str, body: bytes, headers: dict, again: bool = True) -> Callable[[], Answer]:
        """POSTs `body` to `path` now; what is returned reads the answer."""
        if self._conn is not None and self.idle_s is not None and time.monotonic() - self._used > self.idle_s:
            self.close()
        reused = self._conn is not None
        retry = again and reused
        try:
            if self._conn is None:
                self._conn = Connection(self.host, self.port, self.timeout)
                self._conn.connect()
            self._conn.request("POST", path, body, headers)
        except OSError as exc:
            self.close()
            if retry and isinstance(exc, CLOSED):
                return self.begin(path, body, headers, again=False)
            raise
        conn, sent = self._conn, time.monotonic()

        def read() -> Answer:
            try:
                # the timeout counts from the request: answers read one after another (the
                # sampler's) wait at most `timeout` in all, not `timeout` each
                if conn.sock is not None:
                    conn.sock.settimeout(max(0.05, self.timeout - (time.monotonic() - sent)))
                r = conn.getresponse()
                answer = Answer(r.status, r.headers, r.read())
            except OSError as exc:
                if self._conn is conn:
                    self.close()
                if retry and isinstance(exc, CLOSED):
                    return self.begin(path, body, headers, again=False)()
                raise
            if not r.keep_alive:                        # the client said it closes it
                if self._conn is conn:
                    self.close()
            elif conn.sock is not None:
                conn.sock.settimeout(self.timeout)
            self._used = time.monotonic()
            return answer
        return read
