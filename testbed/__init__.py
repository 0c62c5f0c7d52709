"""swarm testbed: real BitTorrent swarms in Docker containers on Mininet topologies."""
__version__ = "0.1.0"
