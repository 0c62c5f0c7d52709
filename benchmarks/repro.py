"""The reproductions of experiments/repro/: run them (or read finished study directories),
report each one (published vs measured), and print its verdict, its claims and the time
its runs took on this machine: the figures of docs/reproductions.md.

    sudo .venv/bin/python benchmarks/repro.py [--only NAME ...] [--results results/repro]
    .venv/bin/python benchmarks/repro.py --read results/repro    # report what is there

Each reproduction runs with `testbed study run` into RESULTS/NAME (resumed if it is there
and unfinished), then `testbed report` writes report.md and report.html beside it. Together
they take about three hours on this project's 2-core machine, so they are not part of CI.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPRO = ROOT / "experiments" / "repro"
# by their runs' time here, shortest first, so that a short session still yields the first few
ORDER = ("free-riding", "utp-tcp", "legout-clustering", "kumar-ross", "qiu-srikant", "missing-piece")


def testbed(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "testbed"), *args], text=True, **kw)


def run(name: str, results: Path) -> None:
    d = results / name
    if (d / "study.json").is_file():
        testbed("study", "resume", str(d))
    else:
        testbed("study", "run", str(REPRO / f"{name}.yaml"), "--out", str(d))


def show(d: Path) -> list[str]:
    r = testbed("report", str(d), "--json", capture_output=True)
    try:
        data = json.loads(r.stdout)
    except ValueError:
        return [f"## {d.name}: no report ({r.stderr.strip()[-300:]})"]
    rep = data.get("reproduction") or {}
    wall = rep.get("runs_wall_s") or 0
    lines = [f"## {d.name}: {rep.get('verdict', '-')}; study {data['status']}; {wall / 60:.0f} min of runs"]
    for c in rep.get("claims", []):
        m = c["measured"]
        ci = f" [{m['low']:.3g}, {m['high']:.3g}]" if m["low"] is not None else ""
        est = "-" if m["estimate"] is None else f"{m['estimate']:.3g}{ci} (n={m['n']})"
        lines.append(f"  {c['claim']}. {c['text']} [{c['arm']}]: {est} -> {c['verdict']} ({c['why']})")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=ORDER, help="these reproductions only")
    ap.add_argument("--results", default=str(ROOT / "results" / "repro"))
    ap.add_argument("--read", metavar="DIR", help="do not run; report the study directories in DIR")
    args = ap.parse_args()
    results = Path(args.read or args.results)
    results.mkdir(parents=True, exist_ok=True)
    names = args.only or ORDER
    for name in names:
        if not args.read:
            t = time.monotonic()
            run(name, results)
            print(f"{name}: {(time.monotonic() - t) / 60:.1f} min wall", flush=True)
        if (results / name / "study.json").is_file():
            print("\n".join(show(results / name)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
