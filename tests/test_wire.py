"""The per-host packet filter's rules and how its counters are read, without running them."""
from testbed import wire


def test_connectable_peers_are_only_counted():
    rules = wire.rules("eth0", connectable=True)
    assert not any("DROP" in r for r in rules)
    assert sum("--hex-string" in r for r in rules) == 2


def test_non_connectable_peers_drop_new_inbound_flows_on_the_data_interface_only():
    rules = wire.rules("eth0", connectable=False)
    drop = next(r for r in rules if "DROP" in r)
    assert drop[:2] == ["-A", "TB_IN"] and "NEW" in drop
    assert ["-A", "INPUT", "-i", "eth0", "-j", "TB_IN"] in rules     # ctl0 (control API) untouched
    # the drop comes before the handshake counter, so refused packets are not counted as handshakes
    assert rules.index(drop) < next(i for i, r in enumerate(rules) if "plain_handshakes_in" in r)


LISTING = """Chain TB_IN (1 references)
    pkts      bytes target     prot opt in     out     source               destination
      12      720 DROP       0    --  *      *       0.0.0.0/0            0.0.0.0/0            ctstate NEW /* inbound_refused */
       3      204            0    --  *      *       0.0.0.0/0            0.0.0.0/0            STRING match  "|13426974546f7272656e742070726f746f636f6c|" ALGO name bm TO 65535 /* plain_handshakes_in */
"""


def test_counters_are_read_by_comment():
    assert wire.parse_counters(LISTING) == {"inbound_refused": 12, "plain_handshakes_in": 3}


SS = """0 3000 198.18.0.5:40000 198.18.0.6:6666 ino:101 sk:1 cgroup:/ <->
\t ts sack wscale:9,9 bytes_sent:90000 bytes_acked:80000 bytes_received:20 segs_out:9
0 0 198.18.0.5:6666 198.18.0.7:50000 ino:102 sk:2 cgroup:/ <->
\t ts sack bytes_acked:1 bytes_received:200000 segs_out:4
0 0 198.18.0.5:6666 198.18.0.8:50001 ino:0 sk:3 cgroup:/ <->
\t ts sack bytes_acked:1
0 0 198.18.0.5:41000 198.18.0.1:6969 ino:103 sk:4 cgroup:/ <->
\t ts sack bytes_acked:300 bytes_received:100
"""


def test_tcp_table_splits_by_who_dialed_and_skips_unaccepted_and_tracker(monkeypatch):
    import subprocess
    monkeypatch.setattr(wire.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, SS, ""))
    table = wire.tcp_table(7, 6666)
    assert table == {(40000, "198.18.0.6", 6666): (False, 80000, 20, 3000),
                     (6666, "198.18.0.7", 50000): (True, 1, 200000, 0)}
    before = {(40000, "198.18.0.6", 6666): (False, 70000, 0, 0), (6666, "198.18.0.7", 50000): (True, 1, 0, 0)}
    assert wire.tcp_activity(before, table) == {"tcp_in": 1, "tcp_out": 1, "tcp_uploading": 0, "tcp_downloading": 1,
                                                "tcp_send_queue_bytes": 3000}
