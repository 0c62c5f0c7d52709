"""The arithmetic of `testbed calibrate`, pure: what each measurement should show, whether it
does, and the table that says so."""
from __future__ import annotations

from testbed.errors import RunError
from testbed.plan import Shaping
from testbed.units import fmt_rate

PING_FRAME = 98          # bytes on the wire: 56 data + 8 ICMP + 20 IP + 14 Ethernet
OVERLOAD = 1.25
RATE_TOLERANCE = 0.05
RTT_TOLERANCE = (0.002, 0.05)    # 2 ms + 5 %
JITTER_TOLERANCE = (0.001, 0.25)  # the round trip's standard deviation: 1 ms + 25 %
FRAME = 1442            # a 1400-byte UDP datagram on the wire: + 8 UDP + 20 IP + 14 Ethernet
MIN_FRAMES = 40         # the rate window holds at least this many frames


def binomial_interval(n: int, p: float, level: float = 0.95) -> tuple[int, int]:
    """The central `level` interval of Binomial(n, p), in counts (scipy: exact, for the tens of
    thousands of datagrams a fast link's loss test sends)."""
    if p <= 0:
        return 0, 0
    from scipy.stats import binom
    tail = (1 - level) / 2
    return int(binom.ppf(tail, n, p)), int(binom.isf(tail, n, p))


def expected_rtt(up: Shaping, down: Shaping, ref_up: Shaping, ref_down: Shaping) -> float:
    """The echo crosses host up and reference down; the reply reference up and host down.

    No serialisation time: an HTB bucket holds two full frames, so a lone echo passes a link
    at once, as it does with Mininet's TCLink; only a queue behind it would delay it."""
    return sum(s.delay_s for s in (up, ref_down, ref_up, down))


def expected_rtt_sd(up: Shaping, down: Shaping, ref_up: Shaping, ref_down: Shaping) -> float:
    """The standard deviation of the round trip: each link direction adds its own uniform
    draw in +/- jitter (netem's default, and the userspace element's), whose variance is
    jitter^2 / 3."""
    return sum(s.jitter_s ** 2 for s in (up, ref_down, ref_up, down)) ** 0.5 / 3 ** 0.5


def expected_loss(up: Shaping, down: Shaping) -> float:
    return 1 - (1 - up.loss) * (1 - down.loss)


def ping_interval(up: Shaping, down: Shaping) -> float:
    """Echoes at no more than a tenth of the slower direction's rate (ping's floor: 2 ms), and
    far enough apart that jitter cannot bring two together: a jittered packet is never
    released before the one sent before it, which would narrow the spread measured."""
    return max(0.002, 10 * PING_FRAME * 8 / min(up.rate_bps, down.rate_bps), 4 * (up.jitter_s + down.jitter_s))


OK_KEYS = ("rate_ok", "rtt_ok", "jitter_ok", "loss_ok")


def passed(row: dict) -> bool:
    return all(row[k] for k in OK_KEYS)


def judge(row: dict) -> dict:
    ok_rate = all(abs(row[f"{d}_measured_bps"] / row[f"{d}_bps"] - 1) <= RATE_TOLERANCE for d in ("up", "down"))
    tol = RTT_TOLERANCE[0] + RTT_TOLERANCE[1] * row["rtt_expected_ms"] / 1000
    ok_rtt = abs(row["rtt_ms"] - row["rtt_expected_ms"]) / 1000 <= tol
    ok_loss = all(row[f"{d}_loss_interval"][0] <= row[f"{d}_lost"] <= row[f"{d}_loss_interval"][1]
                  for d in ("up", "down"))
    # the spread: within 1 ms (the machine's own scheduling noise in an echo's round trip) and
    # a quarter of the expected value: the standard deviation of n echoes has a standard error
    # of about 1/sqrt(2n) of itself (4 % at 300 echoes, 10 % at 50), so 25 % is 2.5-6 of them
    ok_jitter = abs(row["rtt_sd_ms"] - row["rtt_sd_expected_ms"]) <= JITTER_TOLERANCE[0] * 1000 + \
        JITTER_TOLERANCE[1] * row["rtt_sd_expected_ms"]
    return {"rate_ok": ok_rate, "rtt_ok": ok_rtt, "jitter_ok": ok_jitter, "loss_ok": ok_loss}


def rate_window(rate_bps: float, seconds: float) -> tuple[float, float]:
    """(how long to send, how often to sample the counters) for a link of `rate_bps`: long
    enough for MIN_FRAMES frames, and samples far enough apart to hold a few each."""
    frame_s = FRAME * 8 / rate_bps
    return max(seconds, MIN_FRAMES * frame_s), max(0.25, 4 * frame_s)


def active_rate(samples: list[tuple[float, int]], rate_bps: float) -> float:
    """The rate over the time traffic flowed, from (time, byte counter) samples.

    iperf3's set-up takes a few round trips (seconds on a satellite path) before data flows,
    so the window is found in the counters: the intervals carrying more than a fifth of the
    configured rate, less the first and last of them (partly idle)."""
    steps = [(t1 - t0, b1 - b0) for (t0, b0), (t1, b1) in zip(samples, samples[1:]) if t1 > t0]
    active = [i for i, (dt, db) in enumerate(steps) if db * 8 / dt > 0.2 * rate_bps]
    if len(active) < 3:
        raise RunError("the link carried too little to measure its rate")
    body = [steps[i] for i in range(active[0] + 1, active[-1])]
    return sum(db for _, db in body) * 8 / sum(dt for dt, _ in body)


def markdown(rows: list[dict], shaper: str) -> str:
    lines = [f"Shaper: {shaper}. Rates: UDP at 1.25x, counted at the receiver's interface (L2 bytes), over "
             "at least 40 frames. RTT: mean of `ping -U`; expected = the one-way delays of both directions. "
             "Jitter: the round trips' standard deviation (robust: interquartile range / 1.349); expected = that of four uniform +/- jitter draws. "
             "Loss: each direction, UDP at half the rate, with the 99.9 % binomial interval of the expected count.", "",
             "| link | up set | up measured | down set | down measured | RTT set | RTT measured | RTT sd set | "
             "RTT sd measured | loss set up/down | lost up, down (99.9 % intervals) | ok |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = "yes" if passed(r) else "NO: " + ", ".join(k[:-3] for k in OK_KEYS if not r[k])
        lines.append(
            f"| {r['link']} | {fmt_rate(r['up_bps'])} | {fmt_rate(r['up_measured_bps'])} "
            f"({100 * (r['up_measured_bps'] / r['up_bps'] - 1):+.1f} %) | {fmt_rate(r['down_bps'])} | "
            f"{fmt_rate(r['down_measured_bps'])} ({100 * (r['down_measured_bps'] / r['down_bps'] - 1):+.1f} %) | "
            f"{r['rtt_expected_ms']:.1f} ms | {r['rtt_ms']:.1f} ms | {r['rtt_sd_expected_ms']:.1f} ms | "
            f"{r['rtt_sd_ms']:.1f} ms | {100 * r['up_loss_configured']:.2f} % / "
            f"{100 * r['down_loss_configured']:.2f} % | {r['up_lost']}/{r['up_datagrams']} "
            f"({r['up_loss_interval'][0]}-{r['up_loss_interval'][1]}), {r['down_lost']}/{r['down_datagrams']} "
            f"({r['down_loss_interval'][0]}-{r['down_loss_interval'][1]}) | {ok} |")
    return "\n".join(lines) + "\n"
