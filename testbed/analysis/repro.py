"""Published vs measured: each claim of a reproduction judged on the study's runs.

A claim reduces every run (of each arm it is judged in) to one number: a metric, less or
over another metric of the run, or less or over the same number of another arm in the same
repetition (paired). The verdict, in words:

- `op` > >= < <= on the mean: *reproduced* when the whole 95 % interval of the mean is on
  the published side of `value`; *partly* when the mean is but the interval reaches across
  (or there is one run only); *not reproduced* when the mean is on the other side.
- `op` ~ (within `tolerance` x |value|): *reproduced* when the mean is within the band (a
  weaker rule than the one-sided ones: the interval may be wider than the band); *partly*
  when only its interval reaches the band, or one run is in it; *not reproduced* otherwise.
- `every_run`: *reproduced* when every run passes, *partly* when some do, *not* when none.

- An arm's runs that gave no value (a group that never completed) fail an every-run test,
  and keep any other verdict at *partly*: the mean then speaks for the runs that got through.

The study's verdict: reproduced when every row is, not reproduced when no row is reproduced
or partly, partly otherwise. Rows without a measurement are listed and count as not.
"""
from __future__ import annotations

import operator

from testbed.analysis import stats
from testbed.analysis.compare import Side, fmt
from testbed.analysis.names import unit

REPRODUCED, PARTLY, NOT, NO_DATA = "reproduced", "partly", "not reproduced", "no measurement"
_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def _value(metrics: dict, claim: dict) -> float | None:
    a = metrics.get(claim["metric"])
    if a is None:
        return None
    if claim.get("minus"):
        b = metrics.get(claim["minus"])
        return None if b is None else a - b
    if claim.get("over"):
        b = metrics.get(claim["over"])
        return None if not b else a / b
    return a


def values(claim: dict, sides: dict[str, Side], arm: str) -> dict[int, float]:
    """One number per repetition of the arm (repetitions without one are left out)."""
    out = {}
    other = sides.get(claim["versus"]) if claim.get("versus") else None
    for rep, run in sides[arm].runs.items():
        v = _value(run["metrics"], claim)
        if v is None:
            continue
        if other is not None:
            if rep not in other.runs or (w := _value(other.runs[rep]["metrics"], claim)) is None:
                continue
            if claim.get("relative"):
                if not w:
                    continue
                v = v / w
            else:
                v = v - w
        out[rep] = v
    return out


def judge(xs: list[float], test: dict, runs: int | None = None) -> tuple[str, stats.Interval, str]:
    """(verdict, interval of the mean, a few words on why). `runs`: the arm's usable runs,
    when some of them gave no value (a group that never completed): those count against an
    every-run test, and keep any other verdict at partly, since the mean speaks for the
    runs that got through only."""
    ci = stats.mean_ci(xs)
    runs = max(runs or 0, len(xs))
    if ci.n == 0:
        return NO_DATA, ci, f"none of {runs} runs measured it" if runs else "no run measured it"
    value, op = test["value"], test["op"]
    if test.get("every_run"):
        ok = sum(1 for x in xs if _passes(x, op, value, test))
        verdict = REPRODUCED if ok == runs else PARTLY if ok else NOT
        return verdict, ci, f"{ok} of {runs} runs pass"
    verdict, why = _mean_rule(ci, op, value, test)
    if verdict == REPRODUCED and len(xs) < runs:
        return PARTLY, ci, f"{why}, but only {len(xs)} of {runs} runs measured it"
    return verdict, ci, why


def _mean_rule(ci: stats.Interval, op: str, value: float, test: dict) -> tuple[str, str]:
    if op == "~":
        tol = test.get("tolerance", 0.25) * abs(value)
        band = (value - tol, value + tol)
        if band[0] <= ci.estimate <= band[1]:
            return (PARTLY, "mean within the band; one run: no interval") if ci.low is None else \
                (REPRODUCED, "mean within the band")
        if ci.low is not None and ci.low <= band[1] and ci.high >= band[0]:
            return PARTLY, "only the interval reaches the band"
        return NOT, "mean and interval outside the band"
    f = _OPS[op]
    if not f(ci.estimate, value):
        return NOT, "mean on the other side"
    if ci.low is None:
        return PARTLY, "one run: no interval"
    if f(ci.low, value) and f(ci.high, value):
        return REPRODUCED, "whole interval on the published side"
    return PARTLY, "mean on the published side, the interval reaches across"


def _passes(x: float, op: str, value: float, test: dict) -> bool:
    if op == "~":
        return abs(x - value) <= test.get("tolerance", 0.25) * abs(value)
    return _OPS[op](x, value)


def rows(reproduces: dict, sides: dict[str, Side]) -> list[dict]:
    """One row per (claim, arm)."""
    out = []
    for i, claim in enumerate(reproduces["claims"], 1):
        arms = claim.get("arms") or [a for a in sides if a != claim.get("versus")]
        for arm in arms:
            if arm not in sides:
                continue
            xs = list(values(claim, sides, arm).values())
            runs = len(set(sides[arm].runs) & set(sides[claim["versus"]].runs)) if claim.get("versus") \
                else len(sides[arm].runs)
            verdict, ci, why = judge(xs, claim["test"], runs)
            out.append({"claim": i, "text": claim["claim"], "source": claim["source"],
                        "published": claim["published"], "arm": arm, "quantity": quantity(claim),
                        "unit": "ratio" if claim.get("over") or claim.get("relative") else unit(claim["metric"]),
                        "measured": ci.as_dict(), "runs": runs, "values": xs, "verdict": verdict, "why": why,
                        "test": claim["test"]})
    return out


def quantity(claim: dict) -> str:
    q = claim["metric"]
    if claim.get("minus"):
        q = f"{q} - {claim['minus']}"
    if claim.get("over"):
        q = f"{q} / {claim['over']}"
    if claim.get("versus"):
        q = f"{q} {'/' if claim.get('relative') else '-'} same in {claim['versus']}"
    return q


def overall(table: list[dict]) -> str:
    verdicts = [r["verdict"] for r in table]
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if not any(v in (REPRODUCED, PARTLY) for v in verdicts):
        return NOT
    return "partly reproduced"


def measured_cell(r: dict) -> str:
    i, u = r["measured"], r["unit"]
    if i["estimate"] is None:
        return "-"
    ci = f" [{fmt(i['low'], u)}, {fmt(i['high'], u)}]" if i["low"] is not None else ""
    n = f"n={i['n']}" if i["n"] == r.get("runs", i["n"]) else f"n={i['n']} of {r['runs']} runs"
    return f"{fmt(i['estimate'], u)}{ci} ({n})"


def test_text(t: dict) -> str:
    s = f"{t['op']} {t['value']:g}" + (f" ± {t.get('tolerance', 0.25):.0%}" if t["op"] == "~" else "")
    return s + (" in every run" if t.get("every_run") else "")


def markdown(reproduces: dict, table: list[dict], wall_s: float | None, claims_from: str = "") -> list[str]:
    """The report's section: the paper, the scaling, the table and the verdict."""
    md = ["## Published vs measured", "", f"Reproduces: {reproduces['paper']}", ""]
    if reproduces.get("scaled"):
        md += [f"Scaled down: {reproduces['scaled']}", ""]
    md += ["| # | claim | source | published | arm | measured | test | verdict |",
           "|---:|---|---|---|---|---:|---|---|"]
    for r in table:
        md.append(f"| {r['claim']} | {r['text']} | {r['source']} | {r['published']} | {r['arm']} | "
                  f"{measured_cell(r)} | {r['quantity']} {test_text(r['test'])} | {r['verdict']} ({r['why']}) |")
    took = f" The study's runs took {wall_s / 60:.0f} min on this machine." if wall_s else ""
    md += ["", f"**Verdict: {overall(table)}.** Means over repetitions with Student-t 95 % intervals; "
               f"differences between arms are paired by repetition.{took}"
               + (f" Claims as in {claims_from}." if claims_from else ""), ""]
    return md
