"""Statistics of repetitions: means with Student-t 95 % confidence intervals, and differences.

Which interval, stated: a study has few repetitions (5 to 20), each yielding one value of a
metric per arm (a median completion time, a fraction). Over repetitions those values are
close to normal (each is already an aggregate of many peers), so the t interval is the
honest one at small n; a bootstrap over five values underestimates its width. Differences
between arms of a study are paired (repetition r of every arm shares its seed and draws):
the interval is the t interval of the per-repetition differences. Between two unpaired sets
of runs (two studies with other seeds, `compare` of unrelated runs) it is Welch's.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as st

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    estimate: float | None     # the mean (of values, or of paired differences)
    low: float | None          # None when it cannot be computed (n < 2)
    high: float | None
    n: int
    method: str                # "t", "paired t", "welch t", "single" (one value, no interval)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def _clean(xs) -> np.ndarray:
    return np.asarray([float(x) for x in xs if x is not None and not _nan(x)], dtype=float)


def _nan(x) -> bool:
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def mean_ci(xs, level: float = LEVEL) -> Interval:
    """Mean of the values (None and NaN dropped) with its Student-t interval."""
    a = _clean(xs)
    if len(a) == 0:
        return Interval(None, None, None, 0, "t")
    m = float(a.mean())
    if len(a) == 1:
        return Interval(m, None, None, 1, "single")
    sem = float(a.std(ddof=1)) / math.sqrt(len(a))
    h = float(st.t.ppf((1 + level) / 2, len(a) - 1)) * sem
    return Interval(m, m - h, m + h, len(a), "t")


def paired_diff(baseline, variant, level: float = LEVEL) -> Interval:
    """variant - baseline, pair by pair (a pair with a missing side is dropped)."""
    d = [v - b for b, v in zip(baseline, variant) if not _nan(b) and not _nan(v)]
    i = mean_ci(d, level)
    return Interval(i.estimate, i.low, i.high, i.n, "paired t" if i.n > 1 else i.method)


def welch_diff(a, b, level: float = LEVEL) -> Interval:
    """mean(b) - mean(a) with Welch's interval (unequal variances, Satterthwaite df)."""
    x, y = _clean(a), _clean(b)
    if len(x) == 0 or len(y) == 0:
        return Interval(None, None, None, 0, "welch t")
    d = float(y.mean() - x.mean())
    if len(x) < 2 or len(y) < 2:
        return Interval(d, None, None, min(len(x), len(y)), "single")
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return Interval(d, d, d, min(len(x), len(y)), "welch t")
    df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    h = float(st.t.ppf((1 + level) / 2, df)) * se
    return Interval(d, d - h, d + h, min(len(x), len(y)), "welch t")


def quantile(xs, q: float) -> float | None:
    """The q-quantile of the values (numpy's default, linear interpolation: R's type 7)."""
    a = _clean(xs)
    return float(np.quantile(a, q)) if len(a) else None


def ecdf(xs) -> tuple[list[float], list[float]]:
    """The empirical CDF's steps: sorted values and the fraction at or below each."""
    a = np.sort(_clean(xs))
    return a.tolist(), (np.arange(1, len(a) + 1) / len(a)).tolist()
