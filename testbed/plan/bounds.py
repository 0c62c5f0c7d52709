"""The physical lower bound of a swarm's distribution time.

Kumar & Ross, "Peer-assisted file distribution: the minimum distribution time" (2006):
a file of F bits from a seed with upload u_s to N peers with uploads u_i and slowest
download d_min cannot be distributed faster than
    T_min = max( F / u_s, F / d_min, N * F / (u_s + sum(u_i)) ).
With several origin seeders, u_s is their total upload. A measured flash-crowd time
below T_min means the shaping is leaking.
"""
from __future__ import annotations


def kumar_ross_t_min(file_bytes: int, seed_up_bps: float, peer_up_bps: list[float],
                     peer_down_bps: list[float]) -> float:
    bits = file_bytes * 8.0
    n = len(peer_up_bps)
    return max(bits / seed_up_bps, bits / min(peer_down_bps), n * bits / (seed_up_bps + sum(peer_up_bps)))


def peer_t_min(file_bytes: int, seed_up_bps: float, down_bps: float) -> float:
    """No single peer can finish before its own download of F, nor before the seed sent F once."""
    bits = file_bytes * 8.0
    return max(bits / seed_up_bps, bits / down_bps)
