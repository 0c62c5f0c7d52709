"""A large swarm with churn, end to end: wall time, peak memory and the testbed's own CPU.

    sudo .venv/bin/python benchmarks/churn.py [EXPERIMENT ...]
    sudo .venv/bin/python benchmarks/churn.py --flash 100     # a 100-leecher flash crowd

Default: experiments/poisson-weibull-60.yaml (60 peers, Poisson arrivals, Weibull
sessions). For each run it prints the outcome, the wall time of the whole run (bring-up
to teardown), the machine's peak memory in use above what it used before the run (from
/proc/meminfo, sampled every 0.5 s: containers, clients and the testbed together), the
testbed process's own peak RSS, and the CPU the testbed used while the swarm ran, as a
share of one core (summary.json's testbed_cpu).
"""
from __future__ import annotations

import argparse
import gc
import resource
import tempfile
import threading
import time
from pathlib import Path

from mininet.log import setLogLevel

from testbed.model import load_experiment, parse_experiment
from testbed.run import run

ROOT = Path(__file__).resolve().parent.parent


def mem_used() -> int:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kib = lambda k: int(info[k].split()[0]) * 1024  # noqa: E731
    return kib("MemTotal") - kib("MemAvailable")


def flash(n: int, clients: list[str]):
    """A flash crowd of n leechers, spread evenly over `clients` (the first ones take the rest)."""
    counts = [n // len(clients) + (i < n % len(clients)) for i in range(len(clients))]
    return parse_experiment({
        "name": f"flash-{n}" + ("" if clients == ["libtorrent"] else "-mix"), "seed": n, "content": {"size": "16MiB"},
        "timeout": "10m",
        "seeders": [{"name": "origin", "client": "transmission", "access": {"up": "20mbit", "down": "20mbit"}}],
        "peers": [{"name": c[:4] + "p", "count": k, "client": c, "access": {"up": "1mbit", "down": "8mbit"}}
                  for c, k in zip(clients, counts) if k]})


class GcClock:
    """The interpreter's garbage collections over a run: how many per generation, and their
    time (CPU-bound, so wall time is CPU time), from gc.callbacks."""

    def __init__(self):
        self.count, self.by_generation, self._t = [0, 0, 0], [0.0, 0.0, 0.0], 0.0

    @property
    def seconds(self) -> float:
        return sum(self.by_generation)

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.by_generation[info["generation"]] += time.perf_counter() - self._t
            self.count[info["generation"]] += 1


def measure(exp) -> dict:
    base, peak, stop = mem_used(), [0], threading.Event()
    clock = GcClock()
    gc.callbacks.append(clock)

    def watch():
        while not stop.wait(0.5):
            peak[0] = max(peak[0], mem_used() - base)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    t0 = time.monotonic()
    try:
        with tempfile.TemporaryDirectory() as d:
            result = run(exp, Path(d))
    finally:
        stop.set()
        t.join()
        gc.callbacks.remove(clock)
    s = result.summary
    peers = [p for p in s["peers"] if p["role"] == "leecher"]
    return {"name": exp.name, "status": s["status"], "ended_by": s["ended_by"], "error": s["error"],
            "peers": len(peers), "arrived": s["leechers_arrived"], "completed": s["leechers_completed"],
            "left": sum(1 for p in peers if p["left_reason"]), "wall_s": time.monotonic() - t0,
            "peak_mem": peak[0], "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "cpu": s["testbed_cpu"], "host": s.get("host") or {}, "gc": clock}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiments", nargs="*", default=[str(ROOT / "experiments" / "poisson-weibull-60.yaml")])
    ap.add_argument("--flash", type=int, action="append", default=[], help="a flash crowd of N leechers")
    ap.add_argument("--clients", default="libtorrent",
                    help="the flash crowd's clients, comma-separated, evenly mixed (e.g. transmission,aria2,rtorrent)")
    args = ap.parse_args()
    setLogLevel("warning")
    clients = args.clients.split(",")
    exps = [flash(n, clients) for n in args.flash] if args.flash else [load_experiment(f) for f in args.experiments]
    print(f"{'experiment':22} {'status':9} {'ended':9} {'peers':>5} {'arrived':>7} {'done':>5} {'left':>5} "
          f"{'wall':>7} {'peak mem':>9} {'own RSS':>8} {'testbed CPU':>12} {'of a core':>9}")
    for exp in exps:
        r = measure(exp)
        print(f"{r['name']:22} {r['status']:9} {str(r['ended_by']):9} {r['peers']:5} {r['arrived']:7} "
              f"{r['completed']:5} {r['left']:5} {r['wall_s']:6.0f}s {r['peak_mem'] / 2**30:7.2f}GiB "
              + (f"{r['rss'] / 2**20:6.0f}MiB {r['cpu']['cpu_s']:10.1f}s {r['cpu']['share_of_core']:9.1%}"
                 if r["cpu"] else f"{r['rss'] / 2**20:6.0f}MiB {'-':>11} {'-':>9}"))   # no swarm ran (interrupted)
        if parts := (r["cpu"] or {}).get("sampler"):
            print("  sampler: " + ", ".join(f"{k} {v['cpu_s']:.1f}s ({v['ms_per_call']:.2f} ms/call)"
                                            for k, v in sorted(parts.items(), key=lambda kv: -kv[1]["cpu_s"])))
        print(f"  garbage collections over the whole run: {r['gc'].seconds:.2f}s, "
              + ", ".join(f"generation {g}: {n} in {s:.2f}s" for g, (n, s) in enumerate(zip(r["gc"].count,
                                                                                            r["gc"].by_generation))))
        if r["host"]:
            print(f"  machine: CPUs {r['host']['cpu_busy_mean']:.0%} busy on average, at least 90 % busy for "
                  f"{r['host']['saturated_s']:.0f} s ({r['host']['saturated_share']:.0%} of the swarm)")
        if r["error"]:
            print(f"  error: {r['error']}")


if __name__ == "__main__":
    main()
