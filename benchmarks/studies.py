"""The shipped studies of experiments/studies/: run them (or read finished study
directories), and print each one's wall time and its headline differences from the
controlled baseline with their 95 % intervals.

    sudo .venv/bin/python benchmarks/studies.py [--only NAME ...] [--results results/studies]
    .venv/bin/python benchmarks/studies.py --read results/studies   # report what is there

Each study runs with `testbed study run` into RESULTS/NAME (resumed if it is there and
unfinished), then `testbed report` writes report.html and report.md beside it. On this
project's 2-core machine the five studies take about an hour together.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testbed.analysis import compare  # noqa: E402
from testbed.analysis.metrics import HEADLINE  # noqa: E402

STUDIES = ("conflicting-clients", "bandwidth-shy", "metered-wireless", "congested-segment", "combined")
EXTRA = {"conflicting-clients": ["home_utilisation_up", "rtt_p95_ms[homea]"],
         "bandwidth-shy": ["bytes_up[leecher]"], "metered-wireless": ["bill[lte]", "completion_median_s"],
         "congested-segment": ["segment_utilisation_up[cable1]", "rtt_p95_ms[neighbour]"],
         "combined": ["rtt_p95_ms[neighbour]", "segment_utilisation_up[cable1]"]}


def testbed(*args: str) -> int:
    return subprocess.call([str(Path(sys.executable).parent / "testbed"), *args])


def run(name: str, results: Path) -> float:
    d = results / name
    t = time.monotonic()
    if (d / "study.json").is_file():
        testbed("study", "resume", str(d))
    else:
        testbed("study", "run", str(ROOT / "experiments" / "studies" / f"{name}.yaml"), "--out", str(d))
    return time.monotonic() - t


def wall(d: Path) -> float:
    return sum(r.get("wall_s") or 0 for r in json.loads((d / "study.json").read_text())["runs"])


def show(d: Path) -> list[str]:
    index, sides = compare.study_sides(d)
    arms = list(sides.values())
    lines = [f"## {index['study']}: {index['status']}, {len(index['runs'])} runs, {wall(d) / 60:.1f} min of runs"]
    for v in arms[1:]:
        for name in [*HEADLINE, *EXTRA.get(index["study"], [])]:
            rows = compare.table(arms[0], v, [name])
            if rows:
                r = rows[0]
                diff, ci = compare.diff_cells(r["difference"], r["unit"])
                lines.append(f"  {v.label:14} {name:32} {compare.cell(r['baseline'], r['unit']):>28} -> "
                             f"{compare.cell(r['variant'], r['unit']):>28}  {diff:>10} {ci}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=STUDIES)
    ap.add_argument("--results", default=str(ROOT / "results" / "studies"))
    ap.add_argument("--read", help="only report the finished study directories under this one")
    args = ap.parse_args()
    names = args.only or STUDIES
    results = Path(args.read or args.results)
    total = 0.0
    for name in names:
        if not args.read:
            total += run(name, results)
        if (results / name / "study.json").is_file():
            testbed("report", str(results / name))
    for name in names:
        if (results / name / "study.json").is_file():
            print("\n".join(show(results / name)))
    if not args.read:
        print(f"all studies: {total / 60:.1f} min wall")
    else:
        print(f"all studies: {sum(wall(results / n) for n in names if (results / n / 'study.json').is_file()) / 60:.1f}"
              " min of runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
