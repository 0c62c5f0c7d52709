"""False alarms and detection of the CI gate: `testbed regress` of the unchanged CI
experiment against the baseline kept in the repository, N times (each a fresh set of real
runs, as N CI pipelines would make), and optionally of the experiment with every leecher's
upload cap halved.

    sudo .venv/bin/python benchmarks/regress.py [--times 20] [--halved 3]

Prints each verdict and the tally: the gate must pass the unchanged tree in at least 19 of
20 (a false-alarm rate of at most 5 %) and fail every halved one.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CI = ROOT / "experiments" / "ci"


def regress(exp: Path, out: Path) -> tuple[int, dict, float]:
    t = time.monotonic()
    r = subprocess.run([str(Path(sys.executable).parent / "testbed"), "regress", str(exp), "--baseline",
                        str(CI / "small.baseline.json"), "--results", str(out), "--json"],
                       capture_output=True, text=True)
    try:
        report = json.loads(r.stdout)
    except ValueError:
        report = {"error": r.stderr.strip()[-300:]}
    return r.returncode, report, time.monotonic() - t


def line(i: int, code: int, report: dict, secs: float) -> str:
    means = {v["metric"]: v["candidate_mean"] for v in report.get("verdicts", [])}
    med = means.get("completion_median_s")
    return (f"{i:3d}  exit {code}  {secs:5.0f}s  median {med:.1f}s  regressed: {report.get('regressed') or '-'}"
            if med is not None else f"{i:3d}  exit {code}  {report}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--times", type=int, default=20, help="regress runs of the unchanged experiment (default 20)")
    ap.add_argument("--halved", type=int, default=0, help="regress runs with the upload caps halved (default 0)")
    ap.add_argument("--results", default=str(ROOT / "results" / "regress-benchmark"))
    args = ap.parse_args()
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    passed = 0
    for i in range(1, args.times + 1):
        code, report, secs = regress(CI / "small.yaml", out / f"same{i:02d}")
        passed += code == 0
        print(line(i, code, report, secs), flush=True)
    if args.times:
        print(f"unchanged: passed {passed} of {args.times} (false alarms {args.times - passed}, "
              f"{100 * (args.times - passed) / args.times:.0f} %)")
    if args.halved:
        exp = yaml.safe_load((CI / "small.yaml").read_text())
        exp["peers"][0]["behaviour"]["upload_limit"] = "512kbit"
        halved = Path(tempfile.mkdtemp()) / "halved.yaml"
        halved.write_text(yaml.safe_dump(exp))
        caught = 0
        for i in range(1, args.halved + 1):
            code, report, secs = regress(halved, out / f"halved{i:02d}")
            caught += code == 1
            print(line(i, code, report, secs), flush=True)
        print(f"halved upload caps: caught {caught} of {args.halved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
