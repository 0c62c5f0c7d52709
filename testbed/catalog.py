"""What the experiment model and the plan need to know about each client, as data.

Validation and planning read this table, not the driver registry: importing a driver
pulls in its control library and the run's machinery, and the model must stay pure. Each
driver in testbed/clients/ takes its image and refusals from its entry here, so the two
can never disagree; a test checks that every entry has a driver and every driver an entry.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClientFacts:
    image: str                                   # the image in images/ that carries the client
    version: str                                 # the Debian 12 package the image installs
    # behaviour knobs (or knob=value) the client cannot honour -> the sentence validation gives
    unsupported: dict[str, str] = field(default_factory=dict)
    utp: bool = True                             # whether the client speaks uTP at all
    binary: str | None = None                    # the executable a client build replaces (build.binary)
    # Measured on the CI machine: 2 leechers of each client in one swarm, 64 MiB over 20/100
    # Mbit/s links (summary.json's peers[].resources, from the cgroups): the resident anonymous
    # memory at the end of the download (page cache and mapped payload excluded), and the CPU
    # time per MiB downloaded, the client's uploading in the swarm included; the larger of two.
    # The defaults are for a client not yet measured: about the heaviest measured.
    rss_mib: float = 50.0
    cpu_ms_per_mib: float = 60.0


PEER_PORT = 51413      # every client listens for peers here (the tracker hands out one port)

CLIENTS: dict[str, ClientFacts] = {
    "transmission": ClientFacts("transmission", "transmission-daemon 3.00", rss_mib=11.2, cpu_ms_per_mib=33.9,
                                binary="/usr/bin/transmission-daemon", unsupported={
        "encryption=disable": "transmission 3.00 always accepts encrypted peers (its modes are tolerated, "
                              "preferred and required), so 'encryption: disable' cannot be set",
        "utp=only": "transmission 3.00 has no setting that turns TCP off, so 'utp: only' cannot be set"}),
    "qbittorrent": ClientFacts("qbittorrent", "qbittorrent-nox 4.5.2", rss_mib=9.5, cpu_ms_per_mib=58.9,
                               binary="/usr/bin/qbittorrent-nox"),
    "aria2": ClientFacts("aria2", "aria2c 1.36", rss_mib=5.7, cpu_ms_per_mib=12.4, binary="/usr/bin/aria2c", unsupported={
        "utp": "aria2 has no uTP (it speaks BitTorrent over TCP only), so 'utp' cannot be set",
        "upload_slots": "aria2 has no setting for upload slots (its choker unchokes a fixed number of peers), "
                        "so 'upload_slots' cannot be set",
        "encryption=disable": "aria2 always tries the encrypted handshake first and accepts it, "
                              "so 'encryption: disable' cannot be set"}, utp=False),
    "libtorrent": ClientFacts("libtorrent", "python3-libtorrent 2.0.8", rss_mib=17.9, cpu_ms_per_mib=55.4),
    "rtorrent": ClientFacts("rtorrent", "rtorrent 0.9.8", rss_mib=3.7, cpu_ms_per_mib=12.8,
                            binary="/usr/bin/rtorrent", unsupported={
        "utp": "rtorrent has no uTP (rakshasa/rtorrent#912), so 'utp' cannot be set"}, utp=False),
    "deluge": ClientFacts("deluge", "deluged 2.0.3", rss_mib=49.7, cpu_ms_per_mib=63.6, unsupported={
        "utp": "deluge 2.0.3 has no setting for uTP (its libtorrent default, on, applies), so 'utp' cannot be set"}),
}


def refusal(client: str, knob: str, value) -> str | None:
    """Why `client` cannot take `knob: value`, or None if it can."""
    refused = CLIENTS[client].unsupported
    return refused.get(knob) or (refused.get(f"{knob}={value}") if isinstance(value, str) else None)
