"""Registry of client drivers: the experiment's `client:` value is a key of DRIVERS.

Adding a client is one module here plus its image in images/.
"""
from __future__ import annotations

from testbed.clients.base import ClientDriver, PeerStats
from testbed.clients.transmission import TransmissionDriver

DRIVERS: dict[str, type[ClientDriver]] = {
    TransmissionDriver.name: TransmissionDriver,
}

__all__ = ["DRIVERS", "ClientDriver", "PeerStats"]
