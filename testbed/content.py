"""The swarm's content: a file made deterministically from the experiment's seed, and its
torrent (torf). Same seed and size -> same bytes -> same info-hash, on every machine."""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import torf

CHUNK = 1 << 20


def make_content(path: Path, size: int, seed: int) -> str:
    """Write `size` pseudo-random bytes from `seed`; return their SHA-256."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        left = size
        while left:
            block = rng.randbytes(min(CHUNK, left))
            out.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def make_torrent(content: Path, tracker_url: str, piece_size: int, out: Path) -> str:
    """A private torrent (clients then use neither DHT nor PEX for it); returns the info-hash."""
    t = torf.Torrent(path=content, trackers=[tracker_url], private=True, piece_size=piece_size,
                     created_by=None, creation_date=None, randomize_infohash=False)
    t.generate()
    out.parent.mkdir(parents=True, exist_ok=True)
    t.write(out, overwrite=True)
    return t.infohash


def sha256_file(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
