"""Each worker's clock offset from the coordinator's, measured over the underlay, so that the
time series of several machines can be put on one clock.

The way NTP's on-wire exchange does it, from the worker's side: the worker (a short script
Ansible runs there, playbooks/clock.yml) sends UDP probes to a responder the coordinator
runs meanwhile on its underlay address, noting its own clock when each leaves (t1) and when
the answer arrives (t4); the answer carries the coordinator's clock (t2). For one probe the
worker's clock is ahead by (t1 + t4) / 2 - t2, give or take half the round trip (the
exchange cannot tell how the trip divides between the two ways). Of all probes, the one with
the shortest round trip bounds it best. Written here rather than taken from an NTP library:
what is needed is the offset of one exchange, not a clock discipline, and ntplib asks a
server on port 123, which the workers do not run.
"""
from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass

PROBE = struct.Struct("!d")             # the coordinator's time, seconds since the epoch
PORT = 4790                             # beside VXLAN's 4789, on the underlay only

# Run on a worker by Ansible as `python3 -c`, with the coordinator's address and port after it:
# prints one JSON list of [t1, t2, t4] per probe answered.
WORKER_SCRIPT = """
import json, socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
out = []
for k in range(int(sys.argv[3])):
    t1 = time.time()
    s.sendto(struct.pack("!I", k), (sys.argv[1], int(sys.argv[2])))
    while time.time() < t1 + 0.5:       # a late answer to an earlier probe is read and passed over
        try:
            data = s.recv(64)
        except OSError:
            break
        t4 = time.time()
        if len(data) == 12 and struct.unpack("!I", data[:4])[0] == k:
            out.append([t1, struct.unpack("!d", data[4:])[0], t4])
            break
    time.sleep(0.01)
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Offset:
    seconds: float      # the worker's clock minus the coordinator's
    error: float        # at most this far off: half the best round trip
    probes: int         # answered

    def to_coordinator(self, worker_time: float) -> float:
        """A time read on the worker's clock, on the coordinator's."""
        return worker_time - self.seconds


def estimate(samples: Iterable[tuple[float, float, float]]) -> Offset:
    """From (t1 worker sent, t2 coordinator answered, t4 worker received) samples."""
    samples = [s for s in samples if s[2] >= s[0]]
    if not samples:
        raise ValueError("no probe was answered")
    t1, t2, t4 = min(samples, key=lambda s: s[2] - s[0])
    return Offset((t1 + t4) / 2 - t2, (t4 - t1) / 2, len(samples))


def parse(printed: str | list) -> Offset:
    """What WORKER_SCRIPT printed (Ansible may hand it over already decoded)."""
    rows = json.loads(printed) if isinstance(printed, str) else printed
    return estimate(tuple(float(v) for v in s) for s in rows)


class Responder:
    """The coordinator's side: answers each probe with its clock, in a thread, until closed."""

    def __init__(self, address: str, port: int = PORT) -> None:
        import time
        self._time = time.time
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # two splits (or a split and a check) on one coordinator: each may answer any probe,
        # since both read this machine's one clock
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.sock.bind((address, port))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tb-clock", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(64)
            except OSError:
                continue
            if len(data) == 4:
                try:
                    self.sock.sendto(data + PROBE.pack(self._time()), peer)
                except OSError:
                    pass        # one answer lost (no route just now, a full buffer): not the responder

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def __enter__(self) -> Responder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
