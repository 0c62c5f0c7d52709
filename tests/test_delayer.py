"""The userspace delay element's arithmetic, without a kernel queue."""
import socket

from testbed.delayer import Delayer, compose, overflow_in


class FakePacket:
    """Stands in for netfilterqueue.Packet: records the verdict."""

    def __init__(self, src: str):
        self.payload = bytes(12) + socket.inet_aton(src) + bytes(4)
        self.verdict = None

    def get_payload(self):
        return self.payload

    def retain(self):
        pass

    def accept(self):
        self.verdict = "accept"

    def drop(self):
        self.verdict = "drop"


def test_a_path_sums_delays_and_combines_losses():
    p = compose({"delay": 0.03, "jitter": 0.005, "loss": 0.01}, {"delay": 0.002, "jitter": 0.0, "loss": 0.02})
    assert p.delay == 0.032 and p.jitters == (0.005,)
    assert abs(p.loss - (1 - 0.99 * 0.98)) < 1e-12


def element(loss=0.0, jitter=0.0, reorder=False, seed=1):
    return Delayer({"seed": seed, "hosts": {"b": {
        "pid": 1, "reorder": reorder, "down": {"delay": 0.05, "jitter": jitter, "loss": loss},
        "from": {"198.18.0.2": {"delay": 0.01, "jitter": 0.0, "loss": 0.0}}}}})


def test_packets_are_held_for_the_path_delay_and_released_in_order():
    d = element(jitter=0.04)
    cb = d.callback(d.hosts[0])
    pkts = [FakePacket("198.18.0.2") for _ in range(200)]
    for pkt in pkts:
        cb(pkt)
    releases = [r for r, _, _, _ in sorted(d.heap, key=lambda e: e[1])]   # in arrival order
    assert releases == sorted(releases), "jitter must not reorder a sender's packets"
    assert all(pkt.verdict is None for pkt in pkts)
    d.heap.sort()
    assert d.hosts[0].held == 200


def test_loss_is_random_per_packet_at_the_configured_rate():
    d = element(loss=0.05)
    cb = d.callback(d.hosts[0])
    pkts = [FakePacket("198.18.0.9") for _ in range(20000)]
    for pkt in pkts:
        cb(pkt)
    dropped = sum(pkt.verdict == "drop" for pkt in pkts)
    # 95 % interval of Binomial(20000, 0.05): 939..1061
    assert 939 <= dropped <= 1061, dropped


def test_kernel_overflow_is_read_from_the_queue_s_line():
    # nfnetlink_queue.c: queue, portid, queued, copy mode, copy range, queue_dropped, user_dropped, id, 1
    text = "    0  29714     3 2    20     5     7   571391  1\n    1  29715     0 2    20     9     9       10  1\n"
    assert overflow_in(text, 0) == 12 and overflow_in(text, 1) == 18 and overflow_in(text, 2) is None


def test_the_report_names_hosts_whose_element_queue_overflowed():
    from testbed.report import element_note
    assert element_note({"delay_element": None}) is None
    assert element_note({"delay_element": {"a": {"overflow": 0}, "b": {"packets": 3}}}) is None
    note = element_note({"delay_element": {"b": {"overflow": 5}, "a": {"overflow": 2}, "c": {"overflow": 0}}})
    assert note.startswith("delay element: the kernel dropped 7 packets for a full queue (a 2, b 5)")


def test_lateness_is_measured_against_each_packet_s_due_time(tmp_path):
    """Released after its due time, a packet's lateness is what the element measured at its
    verdict: here the loop is 30 ms late for one of two packets."""
    import json
    import time
    d = element()
    d.stats_path = str(tmp_path / "stats.json")
    h = d.hosts[0]
    now = time.monotonic()
    on_time, late = FakePacket("198.18.0.2"), FakePacket("198.18.0.2")
    d.heap[:] = [(now, 1, on_time, h), (now - 0.03, 0, late, h)]
    h.holding = 2
    d.release_due()
    assert on_time.verdict == late.verdict == "accept"
    d.write_stats()
    s = json.loads((tmp_path / "stats.json").read_text())["b"]
    assert s["released"] == 2 and s["late_over_10ms"] == 1 and 30 <= s["late_max_ms"] < 40
