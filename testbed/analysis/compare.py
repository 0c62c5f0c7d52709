"""Runs and studies side by side: metrics aggregated over repetitions, and differences.

A *side* is a set of runs keyed by repetition: one run directory, one arm of a study
(`STUDY_DIR:arm`; a study directory alone means its baseline), or a plain directory of run
directories. Two arms of one study, or of two studies with the same seed, are paired by
repetition; anything else is compared unpaired (Welch).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from testbed.analysis import stats
from testbed.analysis.metrics import HEADLINE, METRICS, run_metrics, stem, unit
from testbed.errors import InputError

USABLE = ("complete", "timeout")   # runs whose measurements stand (a timeout measured what it saw)


@dataclass
class Side:
    label: str
    runs: dict[int, dict] = field(default_factory=dict)     # repetition -> run_metrics
    seed: int | None = None          # the study's seed, when the runs are an arm of a study
    study: str | None = None
    skipped: list[dict] = field(default_factory=list)       # runs left out, with why

    def values(self, metric: str) -> dict[int, float | None]:
        return {r: m["metrics"].get(metric) for r, m in self.runs.items()}

    def metric_names(self) -> set[str]:
        return {k for m in self.runs.values() for k in m["metrics"]}


def is_study_dir(path: Path) -> bool:
    return (path / "study.json").is_file()


def study_sides(study_dir: Path) -> tuple[dict, dict[str, Side]]:
    """The index of a study directory and one side per arm (baseline first)."""
    index = json.loads((study_dir / "study.json").read_text())
    sides = {a["name"]: Side(a["name"], seed=index["seed"], study=index["study"]) for a in index["arms"]}
    for r in index["runs"]:
        side = sides[r["arm"]]
        if r["status"] not in USABLE or not r.get("run_dir"):
            side.skipped.append({"repetition": r["repetition"], "status": r["status"], "error": r.get("error")})
            continue
        m = run_metrics(study_dir / r["run_dir"])
        m["arm"] = r["arm"]
        side.runs[r["repetition"]] = m
    return index, sides


def side(spec: str) -> Side:
    """A side from the command line: RUN_DIR, STUDY_DIR, STUDY_DIR:ARM or a directory of runs."""
    path, _, arm = spec.rpartition(":") if ":" in spec and not Path(spec).exists() else (spec, "", "")
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{spec}: no such run or study directory")
    if is_study_dir(path):
        index, sides = study_sides(path)
        arm = arm or index["baseline"]
        if arm not in sides:
            raise InputError(f"{spec}: the study has no arm '{arm}' (arms: {', '.join(sides)})")
        s = sides[arm]
        s.label = f"{index['study']}:{arm}"
        return s
    if arm:
        raise InputError(f"{spec}: ':{arm}' selects an arm of a study, and {path} is not a study directory")
    if (path / "plan.json").is_file():
        m = run_metrics(path)
        return Side(m["run_id"], {m.get("repetition") or 1: m})
    runs = sorted(p for p in path.iterdir() if (p / "plan.json").is_file())
    if not runs:
        raise InputError(f"{spec}: neither a run nor a study directory, and holds no run directory")
    out = Side(path.name)
    for i, p in enumerate(runs, 1):
        out.runs[i] = run_metrics(p)
    return out


def aggregate(s: Side, metric: str) -> stats.Interval:
    return stats.mean_ci(list(s.values(metric).values()))


def difference(a: Side, b: Side, metric: str) -> stats.Interval:
    """b - a for one metric: paired by repetition when the two sides share their seeds."""
    va, vb = a.values(metric), b.values(metric)
    if paired(a, b):
        reps = sorted(set(va) & set(vb))
        return stats.paired_diff([va[r] for r in reps], [vb[r] for r in reps])
    return stats.welch_diff(list(va.values()), list(vb.values()))


def paired(a: Side, b: Side) -> bool:
    return a.seed is not None and a.seed == b.seed and len(set(a.runs) & set(b.runs)) > 0


def order(names: set[str]) -> list[str]:
    """Headline metrics first, then the others by the order of METRICS, then by group."""
    rank = {k: i for i, k in enumerate([*HEADLINE, *[k for k in METRICS if k not in HEADLINE]])}
    return sorted(names, key=lambda n: (rank.get(stem(n), len(rank)), n))


def table(a: Side, b: Side, metrics: list[str] | None = None) -> list[dict]:
    """One row per metric: each side's mean and interval, the difference and its interval."""
    names = metrics or order(a.metric_names() | b.metric_names())
    rows = []
    for name in names:
        ia, ib = aggregate(a, name), aggregate(b, name)
        if ia.n == 0 and ib.n == 0:
            continue
        rows.append({"metric": name, "unit": unit(name), "baseline": ia.as_dict(), "variant": ib.as_dict(),
                     "difference": difference(a, b, name).as_dict() if ia.n and ib.n else None})
    return rows


def fmt(v: float | None, u: str) -> str:
    if v is None:
        return "-"
    if u == "bytes":
        return f"{v / 1e6:,.2f} MB"
    if u == "ratio":
        return f"{v:.3f}"
    if u == "s":
        return f"{v:.1f} s"
    if u == "ms":
        return f"{v:.0f} ms"
    return f"{v:.4g}"


def cell(i: dict | None, u: str) -> str:
    if not i or i["estimate"] is None:
        return "-"
    ci = f" [{fmt(i['low'], u)}, {fmt(i['high'], u)}]" if i["low"] is not None else ""
    return f"{fmt(i['estimate'], u)}{ci}"


def diff_cells(d: dict | None, u: str) -> tuple[str, str]:
    if not d or d["estimate"] is None:
        return "-", "-"
    sign = "+" if d["estimate"] > 0 else ""
    est = f"{sign}{fmt(d['estimate'], u)}"
    if d["low"] is None:
        return est, "n/a (one pair)"
    lo, hi = fmt(d["low"], u), fmt(d["high"], u)
    return est, f"[{lo}, {hi}]" + (" *" if d["low"] > 0 or d["high"] < 0 else "")


def markdown_table(rows: list[dict], a: str, b: str) -> str:
    """Metric, baseline, variant, difference, confidence interval (95 %, * excludes zero)."""
    out = [f"| metric | {a} | {b} | difference | 95 % CI of the difference |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        d, ci = diff_cells(r["difference"], r["unit"])
        out.append(f"| {r['metric']} | {cell(r['baseline'], r['unit'])} | {cell(r['variant'], r['unit'])} "
                   f"| {d} | {ci} |")
    return "\n".join(out)


def pairing(a: Side, b: Side) -> str:
    """How b - a is computed: paired over the repetitions both completed, or Welch's."""
    if paired(a, b):
        return (f"paired by repetition (same seeds): the t interval of the per-repetition differences, "
                f"n = {len(set(a.runs) & set(b.runs))} pairs")
    return f"unpaired: Welch's t interval, n = {min(len(a.runs), len(b.runs))}"


def method_note(a: Side, *variants: Side) -> str:
    """The sentence under a comparison table: intervals, pairing per variant, resolution."""
    how = "; ".join(f"{v.label}: {pairing(a, v)}" for v in variants) if len(variants) > 1 else pairing(a, variants[0])
    return (f"Means over repetitions with Student-t 95 % intervals; differences {how}. "
            f"* marks an interval that excludes zero. Completion times are from each peer's arrival, "
            f"at 1 s sampling resolution.")
