"""The physical lower bound of a flash crowd's distribution time.

Kumar & Ross, "Peer-assisted file distribution: the minimum distribution time" (2006):
a file of F bits from a seed with upload u_s to N peers with uploads u_i and slowest
download d_min cannot be distributed faster than
    T_min = max( F / u_s, F / d_min, N * F / (u_s + sum(u_i)) ).
With several origin seeders, u_s is their total upload. A measured flash-crowd time
below T_min means the shaping is leaking.

Every binding limit counts: a peer's rate is the smaller of its link and its client's own
cap. A core link that alone joins a part of the network holding no seeder must carry F
into it: F / (its rate into that part) is a term too. A traced link's rate varies, so a
term is not volume / mean rate but the earliest T at which the integrated rate covers the
volume: that stays a lower bound whatever the trace does. Pure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

Steps = tuple[tuple[float, float], ...]   # (from t, rate bit/s), ascending, first at 0


def constant(rate: float) -> Steps:
    return ((0.0, rate),)


def capped(steps: Steps, cap: float | None) -> Steps:
    return steps if cap is None else tuple((t, min(r, cap)) for t, r in steps)


def summed(*many: Steps) -> Steps:
    """The pointwise sum of step functions (each starts at its first step's time), in one sweep
    over all steps in time order: a day of one-second traces on 100 peers is 8.6 million
    steps, which the earlier lookup of every series at every time took minutes over."""
    current, total, out = [0.0] * len(many), 0.0, []
    for t, i, r in sorted((t, i, r) for i, s in enumerate(many) for t, r in s):
        total += r - current[i]
        current[i] = r
        if abs(total) < 1e-6:       # what the running sum's rounding leaves of a true zero
            total = 0.0
        if out and out[-1][0] == t:
            out[-1] = (t, total)
        else:
            out.append((t, total))
    return tuple(out)


def time_to_carry(steps: Steps, bits: float) -> float:
    """The earliest T with the integral of the rate from 0 to T at least `bits`."""
    done = 0.0
    for (t0, r), nxt in zip(steps, [*steps[1:], (math.inf, 0.0)]):
        span = nxt[0] - t0
        if r > 0 and done + r * span >= bits:
            return t0 + (bits - done) / r
        done += r * span
    return math.inf


@dataclass(frozen=True)
class PeerRates:
    up: Steps
    down: Steps


def kumar_ross(file_bytes: int, seeders: list[Steps], leechers: list[PeerRates],
               cuts: list[Steps] = ()) -> tuple[float, dict[str, float]]:
    """T_min and its terms. `cuts`: the rate into each part of the network that holds
    leechers but no seeder, through the one core link that joins it."""
    bits = file_bytes * 8.0
    seed = summed(*seeders)
    terms = {"seed_upload": time_to_carry(seed, bits),
             "slowest_download": max(time_to_carry(p.down, bits) for p in leechers),
             "total_upload": time_to_carry(summed(seed, *(p.up for p in leechers)), len(leechers) * bits)}
    if cuts:
        terms["core_link"] = max(time_to_carry(c, bits) for c in cuts)
    return max(terms.values()), terms


def kumar_ross_t_min(file_bytes: int, seed_up_bps: float, peer_up_bps: list[float],
                     peer_down_bps: list[float]) -> float:
    """The bound with constant rates (the formula as published)."""
    return kumar_ross(file_bytes, [constant(seed_up_bps)],
                      [PeerRates(constant(u), constant(d)) for u, d in zip(peer_up_bps, peer_down_bps)])[0]


def peer_t_min(file_bytes: int, seeders: list[Steps], down: Steps) -> float:
    """No single peer can finish before its own download of F, nor before the seeds sent F once."""
    bits = file_bytes * 8.0
    return max(time_to_carry(summed(*seeders), bits), time_to_carry(down, bits))


def seedless_cuts(sites: list[str], core: list[tuple[str, str, float, float]], seeded: set[str],
                  leeched: set[str]) -> list[Steps]:
    """For each core link (a, b, rate a->b, rate b->a) whose removal splits the sites, the rate
    into a side that has leechers and no seeder."""
    out = []
    for i, (a, b, fwd, rev) in enumerate(core):
        rest = [c for j, c in enumerate(core) if j != i]
        side = {a}
        grew = True
        while grew:
            grew = False
            for x, y, _, _ in rest:
                for u, v in ((x, y), (y, x)):
                    if u in side and v not in side:
                        side.add(v)
                        grew = True
        if b in side:
            continue                       # not the only way between a and b
        other = set(sites) - side
        for part, rate in ((side, rev), (other, fwd)):
            if part & leeched and not part & seeded:
                out.append(constant(rate))
    return out
