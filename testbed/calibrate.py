"""`testbed calibrate`: configured against measured, for each link profile.

One emulated network: a reference host on an unimpaired 1 Gbit/s link, and one host per
profile (and per rate of the sweep) with that access link, built exactly as a run builds it
(containers, Mininet, the run's shaper, the userspace delay element where it is used).
One host at a time, it measures:

- rate, each direction: iperf3 sends UDP at 1.25 x the configured rate, and the rate the link
  let through is read from the RECEIVER's interface counters, inside its namespace (the far
  end), over the time traffic flowed. The window is at least `seconds` and long enough for
  40 full frames (15 s on a 30 kbit/s dial-up line), sampled at least every 4 frames' time:
  a slow link is measured, not declared out of range. UDP, because a TCP measurement on a
  lossy, long-delay link measures TCP (Mathis) and not the link; iperf3's own receiver
  figure is recorded too.
- loss, each direction: UDP paced at half the rate (no queue builds; at most 1000 datagrams
  a second) in 200-byte datagrams;
  iperf3's receiver counts the datagrams lost, judged by the two-sided 99.9 % binomial interval
  of the direction's configured loss.
- RTT: `ping -U` to the reference host, paced to stay under a tenth of the link rate. The
  expected RTT is the sum of both directions' one-way delays; the round trip's loss is kept
  as a second figure.
- with --trace: a host whose download follows the trace gets UDP at 1.25 x the trace's peak,
  and the throughput measured each second is plotted against the trace (trace.png).

iperf3 and ping are the machine's own, run in the host's network namespace (nsenter --net);
only that namespace's addresses exist there, so nothing leaves the emulated network.
"""
from __future__ import annotations

import csv
import json
import re
import statistics
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from testbed import cleanup, facts, runtime, shaping
from testbed.errors import InputError, PreflightError, RunError
from testbed.model import link_profiles, parse_experiment
from testbed.plan import Plan, plan
from testbed.results import write_json
from testbed.units import parse_rate
from testbed.calibrate_judge import (OVERLOAD, active_rate, binomial_interval, expected_loss,  # noqa: F401
                                     expected_rtt, expected_rtt_sd, judge, markdown, passed, ping_interval,
                                     rate_window)

RTT_LINE = re.compile(r"icmp_seq=\d+ .*time=([\d.]+) ms")
DEFAULT_SWEEP = ("256kbit", "1mbit", "10mbit", "100mbit")
REFERENCE_RATE = "1gbit"
IPERF_PORT = 5201
LOSS_DATAGRAM = 200     # bytes of payload in the loss test (242 on the wire)
LOSS_SAMPLES = 1000     # datagrams the loss test aims at (fewer on a slow link: at most LOSS_SECONDS)
LOSS_SECONDS = 15.0
LOSS_LEVEL = 0.999      # each direction's loss interval
LOSS_PPS = 1000         # at most this many datagrams a second: what is lost must be the link's emulated
                        # loss, not the 2-core machine failing to receive 30 000 a second (seen: 55 of
                        # 62 483 at 50 Mbit/s in CI, with no loss configured)


@dataclass(frozen=True)
class Target:
    label: str       # profile name, or 'rate 256kbit'
    group: str       # host group name in the plan
    access: dict


def targets(profiles: list[str] | None, sweep: list[str]) -> list[Target]:
    known = link_profiles()
    names = profiles if profiles else list(known)
    for name in names:
        if name not in known:
            raise InputError(f"calibrate: unknown link profile '{name}' (known: {', '.join(known)})")
    out = [Target(name, f"p{i}", {"profile": name}) for i, name in enumerate(names, 1)]
    for i, rate in enumerate(sweep, 1):
        try:
            parse_rate(rate)
        except ValueError as exc:
            raise InputError(f"calibrate --sweep: {exc}") from None
        out.append(Target(f"rate {rate}", f"r{i}", {"up": rate, "down": rate, "queue": 100}))
    return out


def experiment(ts: list[Target], trace: str | None, shaper: str):
    peers = [{"name": t.group, "access": t.access} for t in ts]
    if trace:
        peers.append({"name": "trace", "access": {"up": "10mbit", "down_trace": trace, "queue": 100}})
    return parse_experiment({
        "name": "calibrate", "content": {"size": "1MiB"}, "shaper": shaper, "timeout": "30d",
        "seeders": [{"name": "ref", "access": {"up": REFERENCE_RATE, "down": REFERENCE_RATE, "queue": 1000}}],
        "peers": peers}, "calibrate", Path.cwd())


# ------------------------------------------------------------------ measuring

def _ns(pid: int, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", *argv], capture_output=True, text=True,
                          timeout=timeout)


def rx_bytes(pid: int, dev: str = "eth0") -> int:
    """Bytes received on `dev` inside process `pid`'s network namespace (its /proc/net/dev)."""
    for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]:
        name, _, rest = line.partition(":")
        if name.strip() == dev:
            return int(rest.split()[0])
    raise RunError(f"no interface {dev} in the namespace of process {pid}")


def _iperf3(src_pid: int, dst_pid: int, dst_ip: str, args: list[str], timeout: float,
            during: Callable[[], None] | None = None) -> dict:
    """One iperf3 UDP test from `src` to a one-off server at `dst`; its JSON."""
    server = subprocess.Popen(["nsenter", f"--net=/proc/{dst_pid}/ns/net", "iperf3", "-s", "-1", "-p",
                               str(IPERF_PORT), "-B", dst_ip, "-J"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(0.3)
        client = subprocess.Popen(["nsenter", f"--net=/proc/{src_pid}/ns/net", "iperf3", "-c", dst_ip, "-p",
                                   str(IPERF_PORT), "-u", *args, "-J"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        if during:
            during()
        out, err = client.communicate(timeout=timeout)
        if client.returncode != 0:
            raise RunError(f"iperf3 failed: {(err or out).strip()[:200]}")
        try:
            return json.loads(out)
        except ValueError:
            raise RunError("iperf3 printed no result") from None
    finally:
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def udp_rate(src_pid: int, dst_pid: int, dst_ip: str, rate_bps: float, seconds: float) -> tuple[float, float | None]:
    """(the rate the receiver's interface got, in bit/s of frames; iperf3's receiver goodput or None)."""
    duration, every = rate_window(rate_bps, seconds)
    samples: list[tuple[float, int]] = [(time.monotonic(), rx_bytes(dst_pid))]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(every):
            samples.append((time.monotonic(), rx_bytes(dst_pid)))
    w = threading.Thread(target=watch, daemon=True)
    try:
        out = _iperf3(src_pid, dst_pid, dst_ip, ["-b", str(int(rate_bps * OVERLOAD)), "-l", "1400",
                                                 "-t", f"{duration:.0f}"], timeout=duration + 60, during=w.start)
    finally:
        stop.set()
        if w.is_alive():
            w.join()
    measured = active_rate(samples, rate_bps)
    goodput = out.get("end", {}).get("sum_received", {}).get("bits_per_second")
    return measured, goodput


def udp_loss(src_pid: int, dst_pid: int, dst_ip: str, rate_bps: float) -> tuple[int, int]:
    """(datagrams sent, datagrams lost) at half the rate (at most LOSS_PPS datagrams a second):
    what the direction's emulated loss takes, with no queue to overflow."""
    pace = min(rate_bps / 2, LOSS_PPS * (LOSS_DATAGRAM + 42) * 8)
    per_s = pace / ((LOSS_DATAGRAM + 42) * 8)
    duration = max(2.0, min(LOSS_SECONDS, LOSS_SAMPLES / per_s))
    out = _iperf3(src_pid, dst_pid, dst_ip, ["-b", str(int(pace)), "-l", str(LOSS_DATAGRAM), "-t", f"{duration:.0f}"],
                  timeout=duration + 60)
    end = out.get("end", {}).get("sum", {}) or out.get("end", {}).get("sum_received", {})
    if not end.get("packets"):
        # what iperf3 said, so that a rare failure (seen once in CI, three attempts running,
        # on the 4.77 % lossy-wired profile) can be told apart from a dead link
        said = out.get("error") or json.dumps(out.get("end", {}))[:160]
        raise RunError(f"the loss test carried no datagram (iperf3: {said})")
    return int(end["packets"]), int(end.get("lost_packets", 0))


def spread(rtts: list[float]) -> float:
    """The round trips' standard deviation, estimated robustly: interquartile range / 1.349
    (exact for a normal spread; 3-7 % above it for the sum of two to four uniform jitter
    draws). A plain standard deviation let a few packets the delay element released late
    decide the verdict: on a jitter-free 800 ms satellite link, 47 of 13 637 packets more
    than 1 ms late and one 16 ms late made it 1.7 ms (CI); the lateness is reported in
    delayer-stats.json, and is not the link's jitter."""
    q1, _, q3 = statistics.quantiles(rtts, n=4, method="inclusive")
    return (q3 - q1) / 1.349


def ping(pid: int, dst_ip: str, count: int, interval: float, deadline: float) -> tuple[int, int, float]:
    """(sent, received, mean RTT in ms)."""
    sent, recv, rtts = ping_rtts(pid, dst_ip, count, interval, deadline)
    return sent, recv, (sum(rtts) / len(rtts) if rtts else float("nan"))


def ping_rtts(pid: int, dst_ip: str, count: int, interval: float, deadline: float) -> tuple[int, int, list[float]]:
    """(sent, received, each reply's RTT in ms)."""
    # -U: the time the reply reached ping, not the kernel's receive timestamp, which is taken
    # before netfilter (and so before the userspace element holds the packet)
    r = _ns(pid, ["ping", "-U", "-n", "-c", str(count), "-i", f"{interval:.3f}", "-W", "3", dst_ip],
            timeout=deadline)
    sent = recv = 0
    rtts = []
    for line in r.stdout.splitlines():
        if "packets transmitted" in line:
            parts = line.split(",")
            sent, recv = int(parts[0].split()[0]), int(parts[1].split()[0])
        elif (m := RTT_LINE.search(line)) and "DUP!" not in line:
            rtts.append(float(m[1]))
    if sent == 0:
        raise RunError(f"ping failed: {(r.stderr or r.stdout).strip()[:200]}")
    return sent, recv, rtts


def retried(measure: Callable[[], tuple], attempts: int = 3) -> tuple:
    """iperf3's set-up datagrams cross the lossy link too; a lost one ends a test early."""
    for k in range(attempts):
        try:
            return measure()
        except RunError:
            if k == attempts - 1:
                raise
    raise AssertionError("unreachable")


def measure_target(p: Plan, t: Target, pids: dict[str, int], seconds: float, pings: int) -> dict:
    h = p.host(t.group)
    ref = p.host("ref")
    up_bps, up_good = retried(lambda: udp_rate(pids[h.name], pids["ref"], ref.data_ip, h.up.rate_bps, seconds))
    down_bps, down_good = retried(lambda: udp_rate(pids["ref"], pids[h.name], h.data_ip, h.down.rate_bps, seconds))
    up_sent, up_lost = retried(lambda: udp_loss(pids[h.name], pids["ref"], ref.data_ip, h.up.rate_bps))
    down_sent, down_lost = retried(lambda: udp_loss(pids["ref"], pids[h.name], h.data_ip, h.down.rate_bps))
    interval = ping_interval(h.up, h.down)
    n = pings if h.up.rate_bps >= 200e3 else max(50, pings // 5)
    sent, recv, rtts = ping_rtts(pids[h.name], ref.data_ip, n, interval, deadline=n * interval + 60)
    rtt = statistics.fmean(rtts) if rtts else float("nan")
    p_loss = expected_loss(h.up, h.down)
    row = {
        "link": t.label, "up_bps": h.up.rate_bps, "down_bps": h.down.rate_bps,
        "up_measured_bps": round(up_bps), "down_measured_bps": round(down_bps),
        "up_iperf3_goodput_bps": round(up_good) if up_good else None,
        "down_iperf3_goodput_bps": round(down_good) if down_good else None,
        "delay_ms": h.up.delay_s * 1000, "jitter_ms": h.up.jitter_s * 1000,
        "rtt_expected_ms": round(1000 * expected_rtt(h.up, h.down, ref.up, ref.down), 3), "rtt_ms": rtt,
        # jitter: the spread of the round trips, against what four independent uniform
        # +/- jitter draws give (each direction of both links)
        "rtt_sd_expected_ms": round(1000 * expected_rtt_sd(h.up, h.down, ref.up, ref.down), 3),
        "rtt_sd_ms": round(spread(rtts), 3) if len(rtts) > 3 else float("nan"),
        "up_loss_configured": h.up.loss, "up_datagrams": up_sent, "up_lost": up_lost,
        # 99.9 %: a calibration judges several directions at once; at 95 % each, a sound link
        # would fail one of four lossy directions about one time in five
        "up_loss_interval": list(binomial_interval(up_sent, h.up.loss, LOSS_LEVEL)),
        "down_loss_configured": h.down.loss, "down_datagrams": down_sent, "down_lost": down_lost,
        "down_loss_interval": list(binomial_interval(down_sent, h.down.loss, LOSS_LEVEL)),
        "loss_expected_rt": p_loss, "pings": sent, "lost": sent - recv, "loss_measured_rt": (sent - recv) / sent,
    }
    row.update(judge(row))
    return row


def trace_check(p: Plan, pids: dict[str, int], control, out_dir: Path, seconds: float) -> dict:
    """Drive the traced host's download with UDP above its peak; per-second throughput, as the
    traced host's own interface received it, against the trace."""
    from testbed import network
    h = p.host("trace")
    trace = h.down.trace
    seconds = min(seconds, trace.period or seconds)
    stop = threading.Event()
    changes = [(t, h.name, "down", r) for t, r in trace.changes(seconds) if t > 0]
    peak = max(r for _, r in trace.steps)
    server = subprocess.Popen(["nsenter", f"--net=/proc/{pids[h.name]}/ns/net", "iperf3", "-s", "-1", "-p",
                               str(IPERF_PORT), "-B", h.data_ip], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    control.set_rate(h.name, "down", trace.rate_at(0))
    client = subprocess.Popen(["nsenter", f"--net=/proc/{pids['ref']}/ns/net", "iperf3", "-c", h.data_ip, "-p",
                               str(IPERF_PORT), "-u", "-b", str(int(peak * OVERLOAD)), "-l", "1400",
                               "-t", str(int(seconds) + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    follower = network.follow_rates(changes, lambda host, d, r, _t: control.set_rate(host, d, r), t0, stop)
    points = []
    last = (t0, rx_bytes(pids[h.name]))
    try:
        for k in range(1, int(seconds) + 1):
            time.sleep(max(0.0, t0 + k - time.monotonic()))
            now = (time.monotonic(), rx_bytes(pids[h.name]))
            points.append({"t": round(now[0] - t0, 3), "set_bps": trace.rate_at(k - 0.5),
                           "measured_bps": round((now[1] - last[1]) * 8 / (now[0] - last[0]))})
            last = now
    finally:
        stop.set()
        follower.join(5)
        for proc in (client, server):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    errors = sorted(abs(pt["measured_bps"] / pt["set_bps"] - 1) for pt in points)
    result = {"trace": trace.source, "seconds": len(points), "mean_set_bps": round(trace.mean_rate()),
              "median_abs_error": round(errors[len(errors) // 2], 4) if errors else None,
              "within_10pct": sum(e <= 0.10 for e in errors), "points": points}
    plot_trace(result, out_dir / "trace.png")
    return result


def plot_trace(result: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pts = result["points"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.step([pt["t"] for pt in pts], [pt["set_bps"] / 1e6 for pt in pts], where="pre", color="k", lw=1.2,
            label="trace (rate set each second)")
    ax.plot([pt["t"] for pt in pts], [pt["measured_bps"] / 1e6 for pt in pts], ".-", color="tab:blue", lw=1,
            label="measured at the shaped egress")
    ax.set_xlabel("seconds")
    ax.set_ylabel("Mbit/s")
    ax.set_title(f"{Path(result['trace']).name}: median error {100 * (result['median_abs_error'] or 0):.1f} %",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ the command

def run(profiles: list[str] | None, sweep: list[str], trace: str | None, results_root: Path, shaper: str = "auto",
        seconds: float = 5.0, pings: int = 500, trace_seconds: float = 40.0,
        on_row: Callable[[dict], None] | None = None) -> tuple[Path, dict]:
    from testbed import network
    ts = targets(profiles, sweep)
    exp = experiment(ts, trace, shaper)
    run_id = f"calibrate-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    from testbed.run.preflight import BringupLock, free_control_block, preflight
    from testbed.plan import run_tag
    lock = BringupLock()
    client = runtime.docker_client()
    try:
        p = plan(exp, run_id, block=free_control_block(run_tag(run_id)))
        imgs = preflight(p, client)
        for tool in ("iperf3", "ping", "nsenter"):
            if not shutil.which(tool):
                raise PreflightError(f"'{tool}' is not installed; run ./setup.sh (calibrate measures with it)")
        out = results_root.resolve() / run_id
        out.mkdir(parents=True)
        tc = facts.traffic_control()
        shaper_obj = shaping.choose(shaper, tc["netem"])()
        hosts = element = net = None
        try:
            hosts = runtime.start_containers(client, p, imgs, out / "hosts")
            pids = {n: h.pid for n, h in hosts.items()}
            net = network.build(p, pids, shaper_obj)
        finally:
            lock.release()
        summary: dict = {"run_id": run_id, "shaper": shaper_obj.name, "host": facts.host_facts(),
                         "testbed": facts.testbed_version(), "traffic_control": tc, "status": "failed", "rows": []}
        try:
            if shaper_obj.userspace_element:
                element = network.DelayElement(p, pids, out, seed=1)
                element.start()
            for t in ts:
                row = measure_target(p, t, pids, seconds, pings)
                summary["rows"].append(row)
                write_json(out / "calibration.json", summary)
                if on_row:
                    on_row(row)
            if trace:
                control = network.LinkControl(p, pids, shaper_obj)
                summary["trace"] = trace_check(p, pids, control, out, trace_seconds)
            summary["status"] = "complete"
        finally:
            if element is not None:
                summary["delay_element"] = element.stop()
            if net is not None:
                net.stop()
            cleanup.clean(client, run_id)
            summary["left_behind"] = cleanup.find(client, run_id)
            write_json(out / "calibration.json", summary)
            with (out / "calibration.csv").open("w", newline="") as f:
                fields = [k for k in (summary["rows"][0] if summary["rows"] else {}) if not k.endswith("_interval")]
                w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(summary["rows"])
            (out / "calibration.md").write_text(markdown(summary["rows"], shaper_obj.name))
        return out, summary
    finally:
        lock.release()
