"""What the userspace delay element can carry, and what it costs.

    sudo .venv/bin/python benchmarks/delayer.py [MBIT ...]      (default: 10 50 100 200 400)

Two hosts on 1 Gbit/s links; the receiver's download adds 10 ms, so every packet it gets
passes through the element. For each offered rate, iperf3 sends UDP (1400-byte datagrams)
for 4 s. Printed per rate: what arrived (iperf3's receiver), the loss, the element's CPU
time per packet (from /proc), its mean added delay against the 10 ms set, and the packets
the kernel dropped because the element's queue was full (overflow) or because iperf3's
socket buffer was (rcvbuf): where the loss happened. The
ratio that matters is received / offered: below 1 the element, not the link, is the limit.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mininet.log import setLogLevel

from testbed import cleanup, images, network, runtime
from testbed.model import parse_experiment
from testbed.plan import plan
from testbed.shaping import UserspaceShaper

DELAY_MS = 10


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0     # utime + stime, clock ticks


def udp_rcvbuf_errors(pid: int) -> int:
    """Datagrams the host's kernel dropped because a UDP socket's buffer was full."""
    lines = [ln.split() for ln in Path(f"/proc/{pid}/net/snmp").read_text().splitlines() if ln.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


def main(rates_mbit: list[float]) -> None:
    setLogLevel("warning")
    client = runtime.docker_client()
    exp = parse_experiment({
        "name": "bench", "content": {"size": "1MiB"},
        "seeders": [{"name": "src", "access": {"up": "1gbit", "down": "1gbit", "queue": 1000}}],
        "peers": [{"name": "dst", "access": {"up": "1gbit", "down": "1gbit", "delay": f"{DELAY_MS}ms",
                                             "queue": 1000}}]})
    p = plan(exp, "bench-20261124-000000-de1a70")
    imgs = images.require(client, {h.image for h in p.hosts})
    work = Path(tempfile.mkdtemp(prefix="tb-bench-"))
    net = element = None
    try:
        hosts = runtime.start_containers(client, p, imgs, work / "hosts")
        pids = {n: h.pid for n, h in hosts.items()}
        net = network.build(p, pids, UserspaceShaper())
        element = network.DelayElement(p, pids, work, seed=1)
        element.start()
        ns = lambda h: ["nsenter", f"--net=/proc/{pids[h]}/ns/net"]   # noqa: E731
        print(f"{'offered':>10} {'received':>10} {'ratio':>6} {'lost':>7} {'cpu/packet':>11} {'added delay':>12} "
              f"{'late mean':>10} {'>1ms':>6} {'overflow':>9} {'rcvbuf':>7}")
        for mbit in rates_mbit:
            server = subprocess.Popen([*ns("dst"), "iperf3", "-s", "-1", "-J"], stdout=subprocess.PIPE, text=True)
            time.sleep(0.3)
            before = json.loads((work / "delayer-stats.json").read_text())["dst"] \
                if (work / "delayer-stats.json").exists() else {"packets": 0, "held": 0, "overflow": 0,
                                                                "released": 0, "late_mean_ms": 0.0, "late_over_1ms": 0}
            cpu0, rcvbuf0 = cpu_seconds(element.proc.pid), udp_rcvbuf_errors(pids["dst"])
            subprocess.run([*ns("src"), "iperf3", "-c", p.host("dst").data_ip, "-u", "-b", f"{mbit}M", "-l", "1400",
                            "-t", "4"], capture_output=True, timeout=60)
            out, _ = server.communicate(timeout=30)
            time.sleep(1.2)        # the element writes its counters once a second
            cpu, rcvbuf = cpu_seconds(element.proc.pid) - cpu0, udp_rcvbuf_errors(pids["dst"]) - rcvbuf0
            after = json.loads((work / "delayer-stats.json").read_text())["dst"]
            udp = json.loads(out)["end"]["sum_received"]
            packets = after["packets"] - before["packets"]
            # lateness over this rate's packets only: from the running sums before and after
            released = after["released"] - before["released"]
            late = (after["late_mean_ms"] * after["released"] - before["late_mean_ms"] * before["released"]) \
                / max(1, released)
            over = (after["late_over_1ms"] - before["late_over_1ms"]) / max(1, released)
            print(f"{mbit:>8g}M {udp['bits_per_second'] / 1e6:>9.1f}M {udp['bits_per_second'] / 1e6 / mbit:>6.2f} "
                  f"{udp['lost_percent']:>6.2f}% {1e6 * cpu / max(1, packets):>8.1f} us "
                  f"{after['mean_added_delay_ms']:>9.2f} ms {late:>7.3f} ms {over:>6.1%} "
                  f"{after['overflow'] - before['overflow']:>9} {rcvbuf:>7}")
    finally:
        if element is not None:
            element.stop()
        if net is not None:
            net.stop()
        cleanup.clean(client, p.run_id)


if __name__ == "__main__":
    main([float(a) for a in sys.argv[1:]] or [10, 50, 100, 200, 400])
