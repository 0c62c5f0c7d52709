"""The client driver interface: one implementation per BitTorrent client, side by side.

A driver controls one real client inside one container. It never touches the network
set-up; it reaches the client's control API over the run's control network (ctl_ip)
and starts processes through the host runtime (HostHandle.exec).
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

from testbed import catalog
from testbed.errors import RunError
from testbed.model import Behaviour


class HostHandle(Protocol):
    """What a driver may use of the host it runs on (implemented by the host runtime)."""

    name: str
    data_ip: str          # address on the emulated network: peers talk here
    ctl_ip: str           # address on the control network: the orchestrator talks here
    host_dir: Path        # directory on the machine, mounted in the container at /tb
    container_dir: str    # "/tb"

    def exec(self, argv: list[str], detach: bool = False) -> tuple[int, str]: ...


@dataclass(frozen=True)
class PeerStats:
    """What a client reports of one torrent."""

    progress: float        # 0..1 of wanted bytes verified
    rate_up: float         # bytes/s, as the client reports
    rate_down: float
    bytes_up: int          # payload bytes uploaded since added
    bytes_down: int
    peers: int             # connected peers


def bitfield_pieces(field: bytes | str, num_pieces: int, encoding: str = "bytes") -> list[bool]:
    """A BitTorrent bitfield as the list of its first num_pieces bits (True: the piece is had).

    The wire protocol's layout, which every client's API keeps: piece 0 is the most
    significant bit of the first byte; the spare bits after the last piece are ignored.
    encoding: "bytes" (field is the raw bytes), "hex" (either case) or "base64". A field
    of any other length than ceil(num_pieces / 8) bytes is refused (ValueError): it is not
    this torrent's bitfield, or it was decoded the wrong way."""
    import base64
    import binascii
    if num_pieces < 0:
        raise ValueError(f"a negative piece count ({num_pieces})")
    try:
        raw = {"bytes": lambda f: bytes(f), "hex": lambda f: bytes.fromhex(f),
               "base64": lambda f: base64.b64decode(f, validate=True)}[encoding](field)
    except KeyError:
        raise ValueError(f"unknown bitfield encoding {encoding!r} (bytes, hex or base64)") from None
    except (binascii.Error, TypeError) as exc:
        raise ValueError(f"not a {encoding} bitfield: {exc}") from None
    if len(raw) != (num_pieces + 7) // 8:
        raise ValueError(f"a bitfield of {len(raw)} bytes for {num_pieces} pieces "
                         f"({(num_pieces + 7) // 8} bytes expected)")
    if not raw:
        return []
    bits = format(int.from_bytes(raw, "big"), f"0{len(raw) * 8}b")
    return [b == "1" for b in bits[:num_pieces]]


def infohash_of(torrent: Path) -> str:
    """The v1 info-hash (hex, lower case) of a .torrent file."""
    import torf
    return torf.Torrent.read(torrent).infohash


TORRENT_LISTED_TIMEOUT = 30.0   # s from "add torrent" until the client must list it


class ClientDriver(ABC):
    name: ClassVar[str]
    image: ClassVar[str]          # name of the image in images/ that carries the client
    rpc_port: ClassVar[int]
    # behaviour knobs this client cannot honour -> the sentence validation gives (exit 2)
    unsupported: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kw):
        # the image and the refusals are data in testbed/catalog.py, which validation reads
        super().__init_subclass__(**kw)
        facts = catalog.CLIENTS[cls.name]
        cls.image, cls.unsupported = facts.image, facts.unsupported

    def __init__(self, host: HostHandle, behaviour: Behaviour | None = None, rpc_port: int | None = None):
        self.host = host
        self.behaviour = behaviour or Behaviour()
        # control port: the client's usual one, unless clients sharing one PC would clash on it
        self.rpc_port = rpc_port or type(self).rpc_port
        # peer port: the testbed's common port, the one asked for, or None: the client's own
        # default (the driver then writes no port setting at all)
        lp = self.behaviour.listen_port
        self.peer_port = catalog.PEER_PORT if lp is None else (None if lp == "default" else lp)
        self._api = None          # the connection to the client's control API, made on first use
        self._torrent = None      # the client's handle (id, hash, gid) of the swarm's torrent
        self.infohash = ""        # v1 info-hash (hex, lower case) of the torrent added, set by add_torrent

    @abstractmethod
    def configure(self) -> dict:
        """Write the client's configuration under host_dir; return the effective settings."""

    @abstractmethod
    def start(self) -> None:
        """Start the client process (returns once launched, not once ready)."""

    @abstractmethod
    def ready(self) -> bool:
        """True once the control API answers."""

    def add_torrent(self, torrent: Path, seed: bool, timeout: float = TORRENT_LISTED_TIMEOUT) -> None:
        """Add the torrent; seed=True means the data is already in place and is verified.

        Returns once the client itself lists the torrent: several clients accept "add" and
        register the torrent a moment later (rtorrent's load.raw_start_verbose, qBittorrent's
        torrents/add), and a stats() or recheck sent in between fails or is lost."""
        self.infohash = infohash_of(torrent)
        self.submit_torrent(torrent, seed)
        self.wait_torrent_listed(timeout)
        self.torrent_listed(seed)

    @abstractmethod
    def submit_torrent(self, torrent: Path, seed: bool) -> None:
        """Hand the torrent to the client (its "add" call) and keep its handle in _torrent;
        the client may register it asynchronously."""

    @abstractmethod
    def has_torrent(self) -> bool:
        """True once the client's own API lists the submitted torrent (self.infohash)."""

    def torrent_listed(self, seed: bool) -> None:
        """What to tell the client once it lists the torrent (e.g. a recheck); nothing by default."""

    def wait_torrent_listed(self, timeout: float = TORRENT_LISTED_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.has_torrent():
                    return
                last = "it answered without the torrent"
            except Exception as exc:   # not listed yet, or the client went away: said if it never lists it
                last = f"its last answer was {exc.__class__.__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise RunError(f"{self.host.name}: {self.name} did not list the torrent {self.infohash} within "
                               f"{timeout:g}s of adding it ({last}; see {self.host.host_dir}/log)")
            time.sleep(0.1)

    @abstractmethod
    def stats(self) -> PeerStats:
        ...

    @abstractmethod
    def pieces(self) -> list[bool] | None:
        """Which pieces the client has verified (True) for the swarm's torrent, from its own API, or None if this client cannot say.

        One entry per piece of the torrent, in piece order; bitfields are decoded with
        bitfield_pieces(). None is an answer of the client, not a failure: a driver whose
        client cannot tell (at all, or at that moment) says why where it returns None.
        A client that cannot be reached raises, as stats() does."""

    def sample(self, want_pieces: bool) -> tuple[PeerStats, list[bool] | None]:
        """stats(), and pieces() when asked (else None): what the sampler reads each second.

        The sampler's hot path: a driver whose client answers both in one request overrides
        this (each request costs the testbed about a millisecond of CPU, and a 100-peer
        swarm is sampled 100 times a second)."""
        return self.stats(), (self.pieces() if want_pieces else None)

    def sample_begin(self, want_pieces: bool) -> Callable[[], tuple[PeerStats, list[bool] | None]] | None:
        """sample() in two halves, for a client whose API allows it: the request is sent now,
        and what is returned reads the answer. The sampler sends every such peer's request,
        then reads the answers, all in its own thread: no thread of a pool handed each call
        and the interpreter's lock back and forth. None (the default): the sampler calls
        sample() from its pool."""
        return None

    @abstractmethod
    def stop_torrent(self) -> None:
        """Stop the torrent as a user would (the client announces 'stopped' and closes its
        peer connections); stats() keeps answering afterwards."""

    def stop(self) -> None:
        """Ask the client to exit cleanly (SIGTERM to the process spawn() started)."""
        self.host.exec(["sh", "-c", f"kill -TERM $(cat {self.pidfile}) 2>/dev/null || true"])

    def spawn(self, argv: list[str]) -> None:
        """Start the client in its container, recording its pid and logging to log/."""
        log = f"{self.host.container_dir}/log/{self.name}.out"
        script = f"echo $$ > {self.pidfile}; exec \"$@\" >>{log} 2>&1"
        self.host.exec(["sh", "-c", script, "client", *argv], detach=True)

    def reset_session(self) -> None:
        """Forget the client's session state (everything it keeps under config/ but the
        testbed's own record), as after a crash without fast-resume; the data stays."""
        import shutil
        for entry in (self.host.host_dir / "config").iterdir():
            if entry.name != "effective.json":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        self._api = None
        self._torrent = None

    @property
    def pidfile(self) -> str:
        return f"{self.host.container_dir}/run/{self.name}.pid"

    def version(self) -> str:
        return ""

    @abstractmethod
    def effective_settings(self) -> dict:
        """Every setting as the running client reports it, defaults included."""

    # paths the client sees inside the container
    @property
    def data_dir(self) -> str:
        return f"{self.host.container_dir}/data"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return
            time.sleep(0.2)
        raise RunError(f"{self.host.name}: {self.name} did not answer on its control port within {timeout:g}s "
                       f"(see {self.host.host_dir}/log)")
