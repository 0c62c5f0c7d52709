#!/usr/bin/env python3
"""Make the project's own cellular-like traces (Mahimahi format), reproducibly.

    python3 topologies/traces/make_cellular.py      # writes lte-drive.down and lte-drive.up

No third-party trace is copied: the rate is a seeded Markov chain over four radio
conditions (good, fair, poor, outage: the shape of the driving traces Mahimahi's authors
recorded, not their data), with log-normal fluctuation every 100 ms. Each line is one
1500-byte delivery opportunity, its time in ms (Mahimahi's mm-link format).
"""
from __future__ import annotations

import math
import random
from pathlib import Path

SECONDS = 60
SLOT_MS = 100
# state: (mean rate as a share of the peak, mean stay in slots)
STATES = {"good": (1.0, 40), "fair": (0.55, 30), "poor": (0.2, 20), "outage": (0.0, 6)}
NEXT = {"good": ["fair"], "fair": ["good", "poor"], "poor": ["fair", "outage"], "outage": ["poor"]}


def rates(peak_bps: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    state, out = "good", []
    while len(out) < SECONDS * 1000 // SLOT_MS:
        share, stay = STATES[state]
        for _ in range(max(1, round(rng.expovariate(1 / stay)))):
            out.append(peak_bps * share * math.exp(rng.gauss(0, 0.25)) if share else 0.0)
        state = rng.choice(NEXT[state])
    return out[:SECONDS * 1000 // SLOT_MS]


def opportunities(slot_rates: list[float]) -> list[int]:
    credit, stamps = 0.0, []
    for i, rate in enumerate(slot_rates):
        for ms in range(i * SLOT_MS, (i + 1) * SLOT_MS):
            credit += rate / 1000 / (1500 * 8)
            while credit >= 1:
                stamps.append(ms + 1)
                credit -= 1
    stamps.append(SECONDS * 1000)       # the trace lasts exactly SECONDS, then repeats
    return stamps


def main() -> None:
    here = Path(__file__).resolve().parent
    for name, peak, seed in (("lte-drive.down", 12e6, 2026), ("lte-drive.up", 2.5e6, 2027)):
        (here / name).write_text("\n".join(map(str, opportunities(rates(peak, seed)))) + "\n")


if __name__ == "__main__":
    main()
