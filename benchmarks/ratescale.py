"""Where efficiency goes as rates grow: one swarm scaled so its Kumar-Ross minimum stays fixed.

    sudo .venv/bin/python benchmarks/ratescale.py [--client libtorrent] [--reps 1] [K ...]   (default K: 1 4 16)

The swarm of experiments/repro/kumar-ross.yaml (one origin at 4 Mbit/s up, ten leechers at
2 Mbit/s up and 10 Mbit/s down, 8 MiB) with every rate and the file size multiplied by K:
T_min = N F / (u_s + sum u_i) is the same 28 s at every K, so a perfect testbed would show
the same efficiency at every K. Where it does not, this prints where the machine's time
went during the swarm (from /proc/stat, the Docker cgroup's CPU counter and the run's own
summary), so a loss can be put on the clients, the kernel's packet path, the disk or the
testbed:

  eff        T_min / makespan
  busy       share of both cores busy, mean over the swarm; sat = share of seconds >= 90 %
  clients    CPU of every container (cgroup cpuacct of docker/), in cores
  softirq    kernel packet processing (bridges, veths, HTB) in cores
  iowait     cores waiting on the disk
  testbed    the testbed process itself, in cores
  stall      the longest time any leecher went without a new verified byte, before it completed

With --perf, `perf record -a` samples both cores through the swarm (99 Hz) and the samples are
put into the parts a run is made of: the clients' own code, hashing, the kernel's TCP/IP,
copies, veth, bridge, the HTB queues, netfilter and conntrack (the testbed's guard and flow
counters), the page cache and file system, the testbed's processes, and idle.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import secrets
import subprocess
import tempfile
import time
from pathlib import Path

from mininet.log import setLogLevel

from testbed.model import parse_experiment
from testbed.run import run

CPUACCT = Path("/sys/fs/cgroup/cpuacct/docker/cpuacct.usage")
CPU_V2 = Path("/sys/fs/cgroup/system.slice")


def containers_cpu_s() -> float:
    """CPU seconds of every Docker container since boot (a parent cgroup keeps its removed
    children's charge in v1; in v2 the scopes are summed while they exist)."""
    if CPUACCT.exists():
        return int(CPUACCT.read_text()) / 1e9
    total = 0.0
    for scope in CPU_V2.glob("docker-*.scope"):
        for line in (scope / "cpu.stat").read_text().splitlines():
            k, v = line.split()
            if k == "usage_usec":
                total += int(v) / 1e6
    return total


def proc_stat() -> dict:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    return dict(zip(("user", "nice", "system", "idle", "iowait", "irq", "softirq"), v))


# kernel symbol prefixes -> part; first match wins (checked in this order)
KERNEL_PARTS = [
    ("HTB queues", ("htb_", "qdisc_", "__qdisc", "sch_direct", "__dev_queue_xmit", "dev_qdisc", "pfifo", "fq_codel",
                    "tcf_", "qdisc")),
    ("netfilter/conntrack", ("nf_", "nft_", "ipt_", "ip6t_", "xt_", "__nf_", "ipv4_conntrack", "iptable_",
                             "hash_conntrack", "____nf_conntrack", "nfnl", "nfqnl")),
    ("bridge", ("br_", "__br_")),
    ("veth", ("veth_",)),
    ("copies", ("copy_user", "rep_movs", "copy_page", "_copy_to_iter", "_copy_from_iter", "memcpy", "__memcpy",
                "copy_to_user", "copy_from_user", "memset", "__memset", "clear_page")),
    ("TCP/IP", ("tcp_", "__tcp", "ip_", "__ip", "ipv4_", "inet_", "skb_", "__skb", "kfree_skb", "__kfree_skb",
                "netif_", "__netif", "napi_", "net_rx", "__napi", "process_backlog", "dev_", "__dev", "sock_",
                "sk_", "__sk", "lock_sock", "release_sock", "csum", "__alloc_skb", "alloc_skb", "raw_", "udp_",
                "eth_", "neigh_", "fib_", "dst_", "__inet", "validate_xmit", "__sys_sendto", "__sys_recvfrom",
                "consume_skb", "skb_release", "tcp4_", "loopback")),
    ("page cache & fs", ("filemap_", "__filemap", "ext4_", "xfs_", "overlay", "ovl_", "page_cache", "folio",
                         "__folio", "generic_perform_write", "iomap_", "shmem_", "mark_page", "find_get",
                         "pagecache", "do_mpage", "mpage_", "__mark_inode", "jbd2", "blk_", "writeback")),
]


def own_pids() -> set[int]:
    """This process and its descendants (the delay element, node shells, tcpdump): the testbed."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    mine = {os.getpid()}
    grew = True
    while grew:
        new = {pid for pid, pp in parent.items() if pp in mine} - mine
        mine |= new
        grew = bool(new)
    return mine


def part_of(pid: int, comm: str, dso: str, sym: str, testbed: set[int]) -> str:
    if pid == 0 or comm == "swapper" or "idle" in sym or sym == "pv_native_safe_halt":
        return "idle"
    if pid in testbed:
        return "testbed processes"
    if "kernel" in dso:
        for part, prefixes in KERNEL_PARTS:
            if sym.startswith(prefixes):
                return part
        return "kernel, other"
    if "libcrypto" in dso or "sha1" in sym.lower() or "sha_" in sym.lower():
        return "hashing"
    if comm in ("dockerd", "containerd", "containerd-shim", "runc", "perf"):
        return "docker and perf"
    return "clients' own code"


LINE = re.compile(r"^\s*(.*?)\s+(\d+)\s+[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$")


def perf_parts(data: Path, testbed: set[int]) -> dict[str, float]:
    out = subprocess.run(["perf", "script", "-G", "-i", str(data), "-F", "comm,pid,ip,sym,dso"], capture_output=True,
                         text=True, check=True).stdout
    counts: dict[str, int] = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        comm, pid, sym, dso = m.group(1), int(m.group(2)), m.group(3).split("+")[0], m.group(4)
        part = part_of(pid, comm, dso, sym, testbed)
        counts[part] = counts.get(part, 0) + 1
    total = sum(counts.values()) or 1
    return {k: v / total for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


def experiment(client: str, k: int, utp: str | None = None):
    extra = {"behaviour": {"utp": {"true": True, "false": False}.get(utp, utp)}} if utp else {}
    return parse_experiment({
        "name": f"ratescale-{client}-x{k}", "content": {"size": f"{8 * k}MiB"}, "timeout": "4m",
        "seeders": [{"name": "origin", "client": client, **extra,
                     "access": {"up": f"{4 * k}mbit", "down": f"{10 * k}mbit"}}],
        "peers": [{"name": "leecher", "count": 10, "client": client, **extra,
                   "access": {"up": f"{2 * k}mbit", "down": f"{10 * k}mbit"}}]})


def longest_stall(run_dir: Path) -> float:
    """Per leecher, the longest run of samples with no growth in progress, before it completed."""
    last: dict[str, tuple[float, float]] = {}      # peer -> (progress, since when)
    worst = 0.0
    with open(run_dir / "samples.csv") as f:
        for row in csv.DictReader(f):
            if not row["peer"].startswith("leecher"):
                continue
            peer, t, prog = row["peer"], float(row["t"]), float(row["progress"] or 0)
            if prog >= 1.0:
                continue
            prev = last.get(peer)
            if prev is None or prog > prev[0]:
                last[peer] = (prog, t)
            else:
                worst = max(worst, t - prev[1])
    return worst


def measure(client: str, k: int, results: Path, perf: Path | None = None, utp: str | None = None) -> dict:
    marks: dict = {}

    def on_event(e: dict) -> None:
        if e["kind"] == "swarm_start":
            marks["start"] = (time.monotonic(), proc_stat(), containers_cpu_s())
            if perf:
                marks["testbed"] = own_pids()
                marks["perf"] = subprocess.Popen(["perf", "record", "-a", "-g", "-F", "99", "-o", str(perf)],
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elif e["kind"] == "teardown" and "perf" in marks:
            marks["perf"].send_signal(2)
            marks["perf"].wait(60)

    t_end: dict = {}
    res = run(experiment(client, k, utp), results, on_event, run_id=f"ratescale-{k}-{secrets.token_hex(3)}")
    # read after teardown: the shares below average over the swarm and its teardown
    t_end["mono"], t_end["stat"], t_end["cont"] = time.monotonic(), proc_stat(), containers_cpu_s()
    s = res.summary
    wall = t_end["mono"] - marks["start"][0]
    hz = 100.0
    d = {key: (t_end["stat"][key] - marks["start"][1][key]) / hz / wall for key in t_end["stat"]}
    span = s.get("swarm_completion_s") or float("nan")
    return {"k": k, "status": res.status, "eff": (s.get("t_min_s") or 0) / span if span == span else float("nan"),
            "makespan": span, "t_min": s.get("t_min_s"),
            "busy": s["host"]["cpu_busy_mean"], "sat": s["host"]["saturated_share"],
            "clients": (t_end["cont"] - marks["start"][2]) / wall,
            "softirq": d["softirq"] + d["irq"], "system": d["system"], "user": d["user"] + d["nice"],
            "iowait": d["iowait"], "testbed": s["testbed_cpu"]["share_of_core"],
            "stall": longest_stall(res.run_dir), "run_dir": str(res.run_dir),
            "perf": perf_parts(perf, marks["testbed"]) if perf and "testbed" in marks else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("k", nargs="*", type=int, default=[1, 4, 16])
    ap.add_argument("--client", default="libtorrent")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--utp", choices=("true", "false", "only"), help="every peer's utp behaviour (default: the client's)")
    ap.add_argument("--perf", action="store_true", help="sample both cores with perf and print where time went")
    ap.add_argument("--keep", help="keep the results here (default: a temporary directory)")
    args = ap.parse_args()
    setLogLevel("warning")
    print(f"{args.client}{f' (utp: {args.utp})' if args.utp else ''}: the Kumar-Ross swarm with rates and size x K (T_min fixed); CPU in cores of 2")
    print(f"{'K':>3} {'eff':>5} {'makespan':>8} {'busy':>5} {'sat':>5} {'clients':>7} {'softirq':>7} "
          f"{'system':>6} {'user':>5} {'iowait':>6} {'testbed':>7} {'stall':>6}  status")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep) if args.keep else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for k in args.k:
            for _ in range(args.reps):
                m = measure(args.client, k, out, out / f"perf-{k}.data" if args.perf else None, args.utp)
                print(f"{m['k']:>3} {m['eff']:>5.2f} {m['makespan']:>7.1f}s {m['busy']:>5.2f} {m['sat']:>5.2f} "
                      f"{m['clients']:>7.2f} {m['softirq']:>7.2f} {m['system']:>6.2f} {m['user']:>5.2f} "
                      f"{m['iowait']:>6.2f} {m['testbed']:>7.3f} {m['stall']:>5.1f}s  {m['status']}", flush=True)
                if m["perf"]:
                    print("      " + ", ".join(f"{part} {share:.1%}" for part, share in m["perf"].items()), flush=True)


if __name__ == "__main__":
    main()
