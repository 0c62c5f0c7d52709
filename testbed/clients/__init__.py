"""Registry of client drivers: the experiment's `client:` value is a key of DRIVERS.

Adding a client is one module here plus its image in images/.
"""
from __future__ import annotations

from testbed.clients.base import ClientDriver, PeerStats
from testbed.clients.aria2 import Aria2Driver
from testbed.clients.deluge import DelugeDriver
from testbed.clients.libtorrent import LibtorrentDriver
from testbed.clients.qbittorrent import QBittorrentDriver
from testbed.clients.rtorrent import RTorrentDriver
from testbed.clients.transmission import TransmissionDriver

DRIVERS: dict[str, type[ClientDriver]] = {d.name: d for d in (
    TransmissionDriver, QBittorrentDriver, Aria2Driver, LibtorrentDriver, RTorrentDriver, DelugeDriver)}

__all__ = ["DRIVERS", "ClientDriver", "PeerStats"]
