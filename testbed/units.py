"""Every unit the testbed accepts, parsed and printed in this one module.

Rates are bits per second (decimal SI prefixes, as tc and ISPs use them: 1mbit = 1e6 bit/s).
Sizes are bytes (binary prefixes KiB/MiB/GiB = 1024^n, decimal kB/MB/GB = 1000^n).
Durations are seconds (float). Ratios are fractions in [0, 1].

Only units that cannot be misread are accepted: 'mbps' is refused (tc reads it as megabytes
a second, most people as megabits), a size must end in a capital B ('5mb': bits or bytes?),
and a size or rate must have a unit (a bare 16 would be 16 bytes). Every number is finite.
"""
from __future__ import annotations

import math
import re

from testbed.textfile import excerpt

# A sign is accepted here so that layer 2 can say "must be positive" about the key.
_NUM = r"(?P<num>-?[0-9]+(?:\.[0-9]+)?)\s*"

_RATE_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
_AMBIGUOUS_RATES = {"bps": "bit", "kbps": "kbit", "mbps": "mbit", "gbps": "gbit"}
# Matched without regard to case, but the text must end in a capital B (checked in _split).
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


class UnitError(ValueError):
    """A value that is not a number with one of the accepted units."""


def _split(text: str, units: dict[str, float], kind: str, example: str) -> float:
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise UnitError(f"expected a {kind} such as {example!r}, got {excerpt(text)}")
    if isinstance(text, (int, float)):
        raise UnitError(f"a {kind} needs a unit, such as {example!r}; got the bare number {excerpt(text)}")
    m = re.fullmatch(_NUM + r"(?P<unit>[a-zA-Z]*)(?P<per>/s)?", text.strip())
    unit = m.group("unit").lower() if m else ""
    if m and kind == "rate" and unit in _AMBIGUOUS_RATES:
        raise UnitError(f"{excerpt(text)} is ambiguous (tc reads '{unit}' as bytes a second, most people as bits): "
                        f"write '{m.group('num')}{_AMBIGUOUS_RATES[unit]}' for bits a second")
    if m and kind == "size" and unit in units and not m.group("unit").endswith("B"):
        raise UnitError(f"{excerpt(text)} is ambiguous (bits or bytes?): a size ends in a capital B, such as "
                        f"'{m.group('num')}{m.group('unit')[:-1].upper().replace('I', 'i')}B'")
    if not m or unit not in units or (m.group("per") and kind != "rate"):
        accepted = ", ".join(sorted(u for u in units if u))
        raise UnitError(f"{excerpt(text)} is not a {kind} (e.g. {example!r}; units: {accepted})")
    value = float(m.group("num")) * units[unit]
    if not math.isfinite(value):
        raise UnitError(f"{excerpt(text)} is too large a {kind}")
    return value


def parse_rate(text: str) -> float:
    """'8mbit' -> 8_000_000.0 bit/s."""
    return _split(text, _RATE_UNITS, "rate", "8mbit")


def parse_size(text: str | int) -> int:
    """'20MiB' -> 20971520 bytes; '1000.001kB' -> 1000001 (not 1000000: 1000.001 * 1000 is
    1000000.9999999999 in floating point)."""
    value = _split(text, _SIZE_UNITS, "size", "20MiB")
    nearest = round(value)
    return int(nearest) if abs(value - nearest) < 1e-6 else int(value)


def parse_duration(text: str) -> float:
    """'40ms' -> 0.04 s; '10m' -> 600 s."""
    return _split(text, _TIME_UNITS, "duration", "40ms")


_PER_UNITS = {"s": 1.0, "sec": 1.0, "min": 1 / 60.0, "m": 1 / 60.0, "h": 1 / 3600.0, "d": 1 / 86400.0}


def parse_frequency(text: str) -> float:
    """How often something happens: '2/min' -> 0.0333 per second ('0.5/s', '30/h', '4/d')."""
    if not isinstance(text, str) or "/" not in text:
        raise UnitError(f"expected a rate of events such as '2/min' (per s, min, h or d), got {excerpt(text)}")
    num, _, per = text.strip().partition("/")
    try:
        value = float(num)
    except ValueError:
        raise UnitError(f"{excerpt(text)} is not a rate of events (e.g. '2/min')") from None
    if not math.isfinite(value):
        raise UnitError(f"{excerpt(text)} is not a finite rate of events")
    if per.strip().lower() not in _PER_UNITS:
        raise UnitError(f"{excerpt(text)}: per what? use /s, /min, /h or /d (e.g. '2/min')")
    return value * _PER_UNITS[per.strip().lower()]


def fmt_frequency(per_second: float) -> str:
    """The inverse of parse_frequency, in the unit that reads best: 0.0333 -> '2/min'."""
    for unit, scale in (("s", 1.0), ("min", 60.0), ("h", 3600.0)):
        if per_second * scale >= 1 or unit == "h":
            return f"{round(per_second * scale, 6):g}/{unit}"
    return f"{per_second:g}/s"


def parse_percent(text: str | float) -> float:
    """'1%' -> 0.01; a bare 0 is accepted as 0 %."""
    if isinstance(text, (int, float)) and not isinstance(text, bool) and text == 0:
        return 0.0
    if isinstance(text, str) and text.strip().endswith("%"):
        try:
            value = float(text.strip()[:-1])
        except ValueError:
            raise UnitError(f"{excerpt(text)} is not a percentage (e.g. '1%')") from None
        if not math.isfinite(value):
            raise UnitError(f"{excerpt(text)} is not a finite percentage")
        return value / 100.0
    raise UnitError(f"{excerpt(text)} is not a percentage (e.g. '1%')")


def fmt_percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _plain(x: float) -> str:
    """A number as the parser reads it back exactly: positional, never an exponent."""
    from decimal import Decimal
    if float(x).is_integer():
        return str(int(x))
    return format(Decimal(repr(float(x))), "f")


def _exact(value: float, scales: tuple[tuple[str, float], ...], base: str) -> str:
    """The largest unit that writes `value` with at most 3 decimals and reads back as exactly
    `value`; else the value in the base unit, written in full (for the resolved configuration,
    which must run the same experiment: a rounded size would be another file)."""
    for unit, scale in scales:
        if abs(value) < scale:
            continue
        text = f"{value / scale:.3f}".rstrip("0").rstrip(".")
        if float(text) * scale == value:
            return f"{text}{unit}"
    return f"{_plain(value)}{base}"


def exact_size(n_bytes: int) -> str:
    """A size written exactly, for the resolved configuration: 1000000000 -> '1GB'."""
    return _exact(n_bytes, (("TiB", 1024**4), ("TB", 1e12), ("GiB", 1024**3), ("GB", 1e9), ("MiB", 1024**2),
                            ("MB", 1e6), ("KiB", 1024), ("kB", 1e3)), "B")


def exact_rate(bits_per_s: float) -> str:
    """A rate written exactly, for the resolved configuration: 1234567 -> '1234567bit'."""
    return _exact(bits_per_s, (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)), "bit")


def exact_duration(seconds: float) -> str:
    """A duration written exactly: 0.04 -> '40ms', 2592000 -> '30d'."""
    return _exact(seconds, (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3), ("us", 1e-6)), "s") \
        if seconds else "0s"


def tc_time(seconds: float) -> str:
    """A time as tc wants it: integer microseconds."""
    return f"{int(round(seconds * 1e6))}us"


def tc_rate(bits_per_s: float) -> str:
    """A rate as tc wants it: integer bit/s ('bit' is tc's bits-per-second unit)."""
    return f"{int(round(bits_per_s))}bit"


def fmt_rate(bits_per_s: float) -> str:
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bits_per_s >= scale:
            return f"{bits_per_s / scale:g}{unit}"
    return f"{bits_per_s:g}bit"


def fmt_size(n_bytes: float) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.3g}{unit}"
    return f"{int(n_bytes)}B"
