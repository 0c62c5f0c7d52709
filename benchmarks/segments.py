"""Seeding homes on one ISP segment: 0 %, 25 % and 50 % of its homes seed.

Runs experiments/segments/seeding-{0,25,50}.yaml (or reads runs given with --runs), and
prints, for each share, the segment link's upstream utilisation and the neighbour home's
RTT to the internet server (median, p95) and its own upload, all from the results
(meter.csv, probes.csv), then plots them over time side by side (segments.png).

    python benchmarks/segments.py [--runs DIR DIR DIR] [--out segments.png]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testbed.report_homes import rates, rows  # noqa: E402

SHARES = (0, 25, 50)
SEGMENT = "cable1-cable"
WARMUP_S = 15.0          # seeders verify and peers connect first: judge the steady part


def per_second(meter: list[dict], scope: str, name: str, key: str) -> list[tuple[float, float]]:
    return list(zip(*rates([r for r in meter if r["scope"] == scope and r["name"] == name], key)))


def measure(run: Path) -> dict:
    meter = rows(run / "meter.csv")
    plan = json.loads((run / "plan.json").read_text())
    link = next(lk for lk in plan["links"] if lk["kind"] == "core" and f"{lk['node1']}-{lk['node2']}" == SEGMENT)
    cap = link["egress1"]["rate_bps"]
    up = [(t, r / cap) for t, r in per_second(meter, "segment", SEGMENT, "ip_bytes_up")]
    rtt = [(float(r["t"]), float(r["rtt_ms"])) for r in rows(run / "probes.csv") if r["home"] == "neighbour"]
    nb = per_second(meter, "household", "neighbour", "ip_bytes_up")
    steady = [u for t, u in up if t >= WARMUP_S]
    rtts = sorted(v for t, v in rtt if t >= WARMUP_S)
    return {"run": run, "up": up, "rtt": rtt, "neighbour_up": nb,
            "util_mean": statistics.fmean(steady) if steady else float("nan"),
            "rtt_median": statistics.median(rtts) if rtts else float("nan"),
            "rtt_p95": rtts[int(0.95 * (len(rtts) - 1))] if rtts else float("nan"),
            "neighbour_kbit": statistics.fmean(v for t, v in nb if t >= WARMUP_S) / 1e3 if nb else float("nan")}


def run_all() -> list[Path]:
    from testbed.model import load_experiment
    from testbed.run import run
    out = []
    for share in SHARES:
        exp = load_experiment(ROOT / "experiments" / "segments" / f"seeding-{share}.yaml")
        result = run(exp, ROOT / "results")
        print(f"seeding-{share}: {result.status} ({result.run_dir})", flush=True)
        out.append(result.run_dir)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs=3, type=Path, help="results of seeding-0, -25 and -50, in that order")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "segments.png")
    args = ap.parse_args()
    runs = args.runs or run_all()
    found = [measure(r) for r in runs]
    print(f"{'seeding homes':>14} {'segment up (mean)':>18} {'neighbour RTT median':>21} {'p95':>8} "
          f"{'neighbour up':>13}")
    for share, m in zip(SHARES, found):
        print(f"{share:>13}% {m['util_mean'] * 100:>17.1f}% {m['rtt_median']:>18.1f} ms {m['rtt_p95']:>5.0f} ms "
              f"{m['neighbour_kbit']:>8.0f} kbit/s")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_u, ax_r) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    for i, (share, m) in enumerate(zip(SHARES, found)):
        ax_u.plot([t for t, _ in m["up"]], [100 * u for _, u in m["up"]], color=f"C{i}", lw=1.1,
                  label=f"{share} % of homes seeding")
        ax_r.plot([t for t, _ in m["rtt"]], [v for _, v in m["rtt"]], color=f"C{i}", lw=0.8,
                  label=f"{share} %: median {m['rtt_median']:.0f} ms")
    ax_u.set_ylabel("segment upstream utilisation, %")
    ax_u.set_title("one DOCSIS segment (8 homes, 2.16 Mbit/s upstream): seeding homes and a neighbour", fontsize=9)
    ax_r.set_ylabel("neighbour's RTT to the internet, ms")
    ax_r.set_xlabel("seconds since the swarm started")
    for ax in (ax_u, ax_r):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
