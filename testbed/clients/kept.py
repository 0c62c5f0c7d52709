"""A kept-alive HTTP connection to a client's control API, and calls over it in two halves.

The sampler asks every peer's client for its stats each second. Over a new connection per
call (what aria2p's and transmission-rpc's transports do) the connection cost the testbed more
CPU than the call; over one kept connection, a call is a request and an answer. The sampler
sends every peer's request first and reads the answers afterwards, all in its own thread
(`ClientDriver.sample_begin`), so `begin` sends and returns what reads. Written over
http.client: the clients' own libraries have no such split, and each driver needs only a
POST and its answer.
"""
from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable
from typing import NamedTuple

# a kept connection the client had closed: the request was not read, so it may go again
CLOSED = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class Answer(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def http_connection(host: str, port: int, timeout: float) -> http.client.HTTPConnection:
    """An HTTP connection to a client's control API, connected, with Nagle's algorithm off.
    http.client sends a request's headers and body in two writes; with Nagle on, the body
    waits for the ACK of the headers, which the client's kernel delays by 40 ms. Measured
    against aria2 in its namespace: 44 ms and 400 us of the sampler's CPU per call with Nagle,
    0.15 ms and 95 us without (the waiting costs CPU too: timers and wake-ups)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


class KeptConnection:
    """One kept-alive connection, for one call at a time (its user locks if several threads
    share it). A connection idle longer than `idle_s` is not reused (aria2 closes one idle
    for 30 s). A kept connection found closed by the client, when sending or when reading,
    is replaced and the request sent once more if `again` (an idempotent call); any other
    failure, a timeout included, is raised: a hung client is not asked twice."""

    def __init__(self, host: str, port: int, timeout: float = 5.0, idle_s: float | None = None):
        self.host, self.port, self.timeout, self.idle_s = host, port, timeout, idle_s
        self._conn: http.client.HTTPConnection | None = None
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
                self._conn = http_connection(self.host, self.port, self.timeout)
            self._conn.request("POST", path, body, headers)
        except (OSError, http.client.HTTPException) as exc:
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
            except (OSError, http.client.HTTPException) as exc:
                if self._conn is conn:
                    self.close()
                if retry and isinstance(exc, CLOSED):
                    return self.begin(path, body, headers, again=False)()
                raise
            if conn.sock is not None:
                conn.sock.settimeout(self.timeout)
            self._used = time.monotonic()
            return answer
        return read
