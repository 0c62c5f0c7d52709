"""The swarm's availability (pure): 'distributed copies' from per-piece counts, and what a
run's series of them says. Shared by the run loop (its own peers' piece maps) and the merge of
a swarm split over workers (every shard's per-piece counts added up at one tick)."""
from __future__ import annotations


def counts(maps: list[list[int]]) -> list[int]:
    """Per piece, how many of the maps have it."""
    return [sum(col) for col in zip(*maps)]


def copies(per_piece: list[int]) -> float:
    """The number of full copies (the count of the rarest piece) plus the share of pieces held
    more often than that, as clients define 'distributed copies'."""
    rarest = min(per_piece)
    return rarest + sum(1 for c in per_piece if c > rarest) / len(per_piece)


def summarize(series: list[tuple[float, float]]) -> dict:
    """From (t, copies): the least availability seen, and when the swarm lost its last full
    copy (the rarest piece held by no peer online), if it did, and got one back."""
    lost = back = None
    for (_, c0), (t1, c1) in zip(series, series[1:]):
        if lost is None and c0 >= 1 and c1 < 1:
            lost = t1
        elif lost is not None and back is None and c1 >= 1:
            back = t1
    return {"min_copies": round(min((c for _, c in series), default=0.0), 4),
            "last_full_copy_lost_s": None if lost is None else round(lost, 3),
            "full_copy_back_s": None if back is None else round(back, 3)}
