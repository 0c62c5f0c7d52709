"""Reading a text file a user named (an experiment, a topology, a trace, a list of times),
refusing in one sentence what the testbed must not read: a missing or special file (a
device, a FIFO: /dev/zero would never end), one too large for an input file, or one that is
not UTF-8. Also the short excerpt of a value that an error message may print.

Written by hand: the standard library's read_text raises UnicodeDecodeError with the whole
file's bytes in it, and nothing guards against reading a device.
"""
from __future__ import annotations

from pathlib import Path

MAX_BYTES = 64 * 1024 * 1024       # an input file (a trace of a week at 1 s steps is a few MB)


MISSING = "no such file"


class FileProblem(ValueError):
    """A file that cannot be read as input text: the message is one clause, without the path."""


def is_file(path: Path) -> bool:
    """Path.is_file, False also for a name the system refuses (too long, a NUL byte)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def read_text(path: Path, max_bytes: int = MAX_BYTES) -> str:
    try:
        if "\0" in str(path) or not path.exists():
            raise FileProblem(MISSING)
        if not path.is_file():
            raise FileProblem("not a regular file")
        if path.stat().st_size > max_bytes:
            raise FileProblem(f"larger than {max_bytes // (1024 * 1024)} MiB, more than an input file holds")
        data = path.read_bytes()
    except OSError as exc:
        raise FileProblem(f"cannot be read ({exc.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise FileProblem(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, column {column})") from None


def cut(text: str, limit: int = 40) -> str:
    """`text` itself, cut to `limit` characters (for a key or name quoted in an error)."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def excerpt(value: object, limit: int = 40) -> str:
    """repr(value), cut to `limit` characters: what an error message may quote of a value.
    A value built from YAML aliases can be astronomically large: only its start is rendered."""
    text = _render(value, limit + 1)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _render(value: object, budget: int) -> str:
    """At most about `budget` characters of repr(value), rendering no more than that."""
    if not isinstance(value, (list, dict, tuple, set)):
        return repr(value[:budget] if isinstance(value, str) else value)[:budget]
    opening, closing = ("{", "}") if isinstance(value, (dict, set)) else ("[", "]")
    out, left = opening, budget - 1
    for i, item in enumerate(value.items() if isinstance(value, dict) else value):
        if left <= 0:
            break
        piece = (", " if i else "") + (_render(item[0], left) + ": " + _render(item[1], left)
                                       if isinstance(value, dict) else _render(item, left))
        out += piece[:left]
        left -= len(piece)
    return out + closing if left > 0 else out
