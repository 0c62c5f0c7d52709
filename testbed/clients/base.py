"""The client driver interface: one implementation per BitTorrent client, side by side.

A driver controls one real client inside one container. It never touches the network
set-up; it reaches the client's control API over the run's control network (ctl_ip)
and starts processes through the host runtime (HostHandle.exec).
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

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


def infohash_of(torrent: Path) -> str:
    """The v1 info-hash (hex, lower case) of a .torrent file."""
    import torf
    return torf.Torrent.read(torrent).infohash


class ClientDriver(ABC):
    name: ClassVar[str]
    image: ClassVar[str]          # name of the image in images/ that carries the client
    rpc_port: ClassVar[int]
    peer_port: ClassVar[int] = 51413
    # behaviour knobs this client cannot honour -> the sentence validation gives (exit 2)
    unsupported: ClassVar[dict[str, str]] = {}

    def __init__(self, host: HostHandle, behaviour: Behaviour | None = None):
        self.host = host
        self.behaviour = behaviour or Behaviour()
        self._api = None          # the connection to the client's control API, made on first use
        self._torrent = None      # the client's handle (id, hash, gid) of the swarm's torrent

    @abstractmethod
    def configure(self) -> dict:
        """Write the client's configuration under host_dir; return the effective settings."""

    @abstractmethod
    def start(self) -> None:
        """Start the client process (returns once launched, not once ready)."""

    @abstractmethod
    def ready(self) -> bool:
        """True once the control API answers."""

    @abstractmethod
    def add_torrent(self, torrent: Path, seed: bool) -> None:
        """Add the torrent; seed=True means the data is already in place and is verified."""

    @abstractmethod
    def stats(self) -> PeerStats:
        ...

    @abstractmethod
    def stop_torrent(self) -> None:
        """Stop the torrent as a user would (the client announces 'stopped' and closes its
        peer connections); stats() keeps answering afterwards."""

    def stop(self) -> None:
        """Ask the client to exit cleanly (SIGTERM to the process spawn() started)."""
        self.host.exec(["sh", "-c", f"kill -TERM $(cat {self._pidfile}) 2>/dev/null || true"])

    def spawn(self, argv: list[str]) -> None:
        """Start the client in its container, recording its pid and logging to log/."""
        log = f"{self.host.container_dir}/log/{self.name}.out"
        script = f"echo $$ > {self._pidfile}; exec \"$@\" >>{log} 2>&1"
        self.host.exec(["sh", "-c", script, "client", *argv], detach=True)

    @property
    def _pidfile(self) -> str:
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
