"""Time-varying link rates as steps: Mahimahi traces, time,rate CSV files, inline schedules.

Mahimahi's format (mahimahi.mit.edu, mm-link): one line per 1500-byte delivery opportunity,
its time in milliseconds; several lines may share a millisecond; the trace repeats after its
last timestamp. A link follows it here by changing the HTB rate once per `step` to the rate
those opportunities give in that bin. Written by hand because no library reads the format.

CSV: `time,rate` per line (time in seconds or with a unit, rate with a unit or in bit/s),
an optional header line; the last rate holds.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from testbed import textfile, units
from testbed.textfile import excerpt

MAHIMAHI_PACKET_BYTES = 1500
MIN_RATE_BPS = 8000.0          # HTB cannot be set to 0: an outage is 8 kbit/s
MAX_LENGTH_S = 30 * 86400.0    # a trace longer than a month is a mistake (and would not fit in memory as steps)
TRACE_DIR = Path(__file__).resolve().parent.parent / "topologies" / "traces"


class TraceError(ValueError):
    """A trace that cannot be read."""


@dataclass(frozen=True)
class Trace:
    source: str
    steps: tuple[tuple[float, float], ...]      # (t seconds, rate bit/s), ascending, first at 0
    period: float | None = None                 # repeats after this many seconds; None: last holds

    def rate_at(self, t: float) -> float:
        if self.period:
            t %= self.period
        rate = self.steps[0][1]
        for at, r in self.steps:
            if at > t:
                break
            rate = r
        return rate

    def starting_at(self, offset: float) -> "Trace":
        """The same trace entered `offset` seconds in (a repeating trace wraps around)."""
        if not offset:
            return self
        if self.period:
            offset %= self.period
            later = [(t - offset, r) for t, r in self.steps if t > offset]
            wrapped = [(t + self.period - offset, r) for t, r in self.steps if t < offset]
            steps = [(0.0, self.rate_at(offset)), *later, *wrapped]
        else:
            steps = [(0.0, self.rate_at(offset)), *[(t - offset, r) for t, r in self.steps if t > offset]]
        return Trace(f"{self.source}@{offset:g}s", tuple(steps), self.period)

    def length(self) -> float:
        """One repetition, or (for a trace that holds its last rate) the time of its last step."""
        return self.period or self.steps[-1][0]

    def mean_rate(self) -> float:
        """Time-weighted mean over one period (or over the schedule's steps, last held 1 step)."""
        end = self.period or (self.steps[-1][0] + (self.steps[-1][0] - self.steps[-2][0] if len(self.steps) > 1 else 1.0))
        total = 0.0
        for (t0, r), nxt in zip(self.steps, [*self.steps[1:], (end, 0.0)]):
            total += r * (nxt[0] - t0)
        return total / end

    def changes(self, until: float) -> list[tuple[float, float]]:
        """Every (t, rate) to apply from 0 to `until`, repetitions expanded, equal rates merged."""
        out: list[tuple[float, float]] = []
        offset = 0.0
        while True:
            for at, rate in self.steps:
                t = offset + at
                if t > until:
                    return out
                if not out or out[-1][1] != rate:
                    out.append((t, rate))
            if not self.period:
                return out
            offset += self.period


def quoted(line: str) -> str:
    """A bad line as an error may quote it: only a short one. The testbed runs as root, and a
    file named as a trace by mistake (or on purpose: /etc/shadow) is not echoed."""
    return f"{line!r} " if len(line) <= 24 else "the line "


def read_mahimahi(text: str, source: str, step: float = 1.0) -> Trace:
    stamps = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            stamps.append(int(line))
        except ValueError:
            raise TraceError(f"{source}: line {n}: {quoted(line)}is not a millisecond timestamp (Mahimahi format)") from None
    if not stamps:
        raise TraceError(f"{source}: empty trace")
    if any(b < a for a, b in zip(stamps, stamps[1:])):
        raise TraceError(f"{source}: timestamps must not decrease (Mahimahi format)")
    period = stamps[-1] / 1000.0
    if stamps[0] < 0:
        raise TraceError(f"{source}: timestamps must not be negative")
    if period <= 0:
        raise TraceError(f"{source}: the trace must last more than 0 ms")
    if period > MAX_LENGTH_S:
        raise TraceError(f"{source}: the trace lasts {period:.0f} s, longer than the {MAX_LENGTH_S:.0f} s a trace may")
    bins = max(1, round(period / step))
    counts = [0] * bins
    for ms in stamps:
        counts[min(bins - 1, int(ms / 1000.0 / step))] += 1
    steps = tuple((i * step, max(MIN_RATE_BPS, c * MAHIMAHI_PACKET_BYTES * 8 / step)) for i, c in enumerate(counts))
    return Trace(source, steps, period=bins * step)


def read_csv(text: str, source: str) -> Trace:
    steps = []
    for n, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 2:
            raise TraceError(f"{source}: line {n}: expected 'time,rate'")
        t_text, r_text = (c.strip() for c in row)
        try:
            t = float(t_text) if _number(t_text) else units.parse_duration(t_text)
            rate = float(r_text) if _number(r_text) else units.parse_rate(r_text)
        except units.UnitError as exc:
            if n == 1 and not steps:      # a header line
                continue
            raise TraceError(f"{source}: line {n}: {exc if len(t_text) + len(r_text) <= 24 else 'expected a time and a rate'}") from None
        steps.append((t, rate))
    return from_steps(steps, source)


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def from_steps(steps: list[tuple[float, float]], source: str) -> Trace:
    if not steps:
        raise TraceError(f"{source}: no steps")
    if not all(math.isfinite(t) and math.isfinite(r) for t, r in steps):
        raise TraceError(f"{source}: times and rates must be finite numbers")
    if steps[-1][0] > MAX_LENGTH_S:
        raise TraceError(f"{source}: the last step is at {steps[-1][0]:.0f} s, later than the {MAX_LENGTH_S:.0f} s "
                         "a trace may last")
    if any(b[0] <= a[0] for a, b in zip(steps, steps[1:])):
        raise TraceError(f"{source}: times must increase")
    if steps[0][0] < 0 or any(r < 0 for _, r in steps):
        raise TraceError(f"{source}: times and rates must not be negative")
    if steps[0][0] > 0:
        raise TraceError(f"{source}: the first step must be at 0s (the rate when the swarm starts)")
    return Trace(source, tuple((t, max(MIN_RATE_BPS, r)) for t, r in steps))


def resolve(ref: str, base_dir: Path | None) -> Path:
    """A trace file: relative to the experiment's directory, else in topologies/traces/."""
    for candidate in ((base_dir or Path.cwd()) / ref, TRACE_DIR / ref):
        if textfile.is_file(candidate):
            return candidate.resolve()
        try:
            special = candidate.exists()
        except (OSError, ValueError):       # a name the system refuses: too long, a NUL byte
            special = False
        if special:
            raise TraceError(f"{excerpt(str(candidate), 120)}: not a regular file")
    raise TraceError(f"no such trace file {excerpt(ref)} (looked next to the experiment and in {TRACE_DIR})")


@lru_cache(maxsize=64)
def load(path: str, step: float = 1.0) -> Trace:
    p = Path(path)
    try:
        text = textfile.read_text(p)
    except textfile.FileProblem as exc:
        raise TraceError(f"{path}: {exc}") from None
    return read_csv(text, path) if p.suffix.lower() == ".csv" else read_mahimahi(text, path, step)
