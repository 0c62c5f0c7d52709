"""Randomness of a run: named streams derived from the experiment's seed, and the draws of
arrival times and durations.

Every random choice of a run comes from a stream named by its purpose ("content",
"arrivals/leecher", "durations/leecher", "profiles/leecher", "impairments", ...), derived
from (seed, repetition, purpose) through numpy's SeedSequence. So repetitions are
independent, a change in one group's churn does not shift another group's draws, and the
same experiment, seed and repetition give the same draws on every machine.
"""
from __future__ import annotations

import math
import zlib

import numpy as np

from testbed.model.churn import (ArrivalFile, Decaying, Exponential, Fixed, FlashCrowd, FromFile, Lognormal, Poisson,
                                 Weibull)


def _entropy(seed: int, repetition: int, purpose: str) -> list[int]:
    return [seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, repetition, zlib.crc32(purpose.encode())]


def stream(seed: int, repetition: int, purpose: str) -> np.random.Generator:
    """The generator for one purpose of one repetition."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(_entropy(seed, repetition, purpose))))


def derived_seed(seed: int, repetition: int, purpose: str = "run") -> int:
    """A 63-bit integer seed for one purpose of one repetition (for tools that take an int)."""
    hi, lo = (int(x) for x in np.random.SeedSequence(_entropy(seed, repetition, purpose)).generate_state(2))
    return (hi << 32 | lo) & ((1 << 63) - 1)


def durations(dist, n: int, rng: np.random.Generator) -> list[float]:
    """n draws of a duration distribution (model.churn), in seconds."""
    if isinstance(dist, Fixed):
        return [float(dist.value)] * n
    if isinstance(dist, Exponential):
        return rng.exponential(dist.mean, n).tolist()
    if isinstance(dist, Weibull):
        return (dist.scale * rng.weibull(dist.shape, n)).tolist()
    if isinstance(dist, Lognormal):
        return rng.lognormal(math.log(dist.median), dist.sigma, n).tolist()
    if isinstance(dist, FromFile):
        return rng.choice(np.asarray(dist.values), n).tolist()
    raise TypeError(f"not a distribution: {dist!r}")


def arrival_times(arrivals, n: int, rng: np.random.Generator) -> list[float | None]:
    """When each of n members arrives, in swarm seconds, ascending; None for a member the
    process never brings (a decaying rate's arrivals run out)."""
    if isinstance(arrivals, FlashCrowd):
        return [float(arrivals.at)] * n
    if isinstance(arrivals, Poisson):
        return (arrivals.after + np.cumsum(rng.exponential(1 / arrivals.rate, n))).tolist()
    if isinstance(arrivals, Decaying):
        # Time rescaling: the unit-rate Poisson epochs s_k map to t with Lambda(t) = s_k, where
        # Lambda(t) = rate * tau * (1 - exp(-t / tau)); epochs past rate * tau never happen.
        total = arrivals.rate * arrivals.tau
        epochs = np.cumsum(rng.exponential(1.0, n))
        return [arrivals.after - arrivals.tau * math.log(1 - s / total) if s < total else None for s in epochs]
    if isinstance(arrivals, ArrivalFile):
        times = sorted(arrivals.times)
        return [times[i] if i < len(times) else None for i in range(n)]
    raise TypeError(f"not an arrival process: {arrivals!r}")


def assign_shares(shares: list[float], n: int, rng: np.random.Generator) -> list[int]:
    """Which of the mixed profiles each of n members follows: counts by largest remainder (so a
    30 %/70 % mix of 10 members is exactly 3 and 7), then a seeded shuffle of who is which."""
    exact = [s * n for s in shares]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(shares)), key=lambda i: exact[i] - counts[i], reverse=True)[:n - sum(counts)]:
        counts[i] += 1
    order = [i for i, c in enumerate(counts) for _ in range(c)]
    return [order[k] for k in rng.permutation(n)]
