"""Workers on one machine (testbed.workers.harness): network namespaces with their own sshd on
the underlay, reached by Ansible over SSH through ansible-runner. Evidence from the far end:
the addresses the worker itself reports (its facts, gathered there), and what is left running."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


from testbed import cleanup
from testbed.workers import harness
from tests.integration.conftest import cli


def pids_in(ns: str) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def test_check_reaches_each_worker_in_its_namespace_and_names_a_lost_one(two_workers):
    h, inv = two_workers, two_workers.inventory_path()
    r = cli("workers", "check", str(inv), "--json", timeout=180)
    assert r.returncode == 0, r.stderr
    rows = {row["worker"]: row for row in json.loads(r.stdout)}
    for name, address in zip(h.names, h.addresses):
        # the worker's own facts: it sees its underlay address and nothing of this machine's
        assert rows[name]["ok"] and rows[name]["addresses"] == [address]
        assert int(rows[name]["cores"]) == len(os.sched_getaffinity(0))
    assert "task: gather facts" in r.stderr                    # ansible-runner's events, as progress
    # clocks: each worker probed this machine's responder over the underlay; they share one
    # clock, so a sound exchange finds no offset beyond its own error, and the best of 20
    # round trips over the underlay is well under 10 ms (measured: 0.1 ms; a false failure
    # needs all 20 probes delayed 100 times that, not seen in any run here)
    for name in h.names:
        assert abs(rows[name]["clock_offset_s"]) <= rows[name]["clock_error_s"] < 0.005

    h.cut(1)                                                    # w2 loses the underlay
    r = cli("workers", "check", str(inv), "--json", timeout=180)
    assert r.returncode == 1
    assert "worker w2 is unreachable (task 'gather facts'" in r.stderr and "w1" not in r.stderr.split("testbed:")[-1]
    rows = {row["worker"]: row for row in json.loads(r.stdout)}
    assert rows["w1"]["ok"] and rows["w1"]["addresses"] == [h.addresses[0]]      # the other is kept
    assert not rows["w2"]["ok"]
    # Ansible's kept SSH connections were ended: nothing of the check runs on
    ssh = subprocess.run(["pgrep", "-f", str(inv.parent / "id_ed25519")], capture_output=True, text=True)
    assert ssh.stdout.strip() == ""


def test_down_and_clean_leave_nothing(tmp_path):
    h = harness.Harness(2, tmp_path / "a")
    h.up()
    sshd = [p for ns in h.netns for p in pids_in(ns)]
    assert len(sshd) >= 2
    h.down()
    assert not any(cleanup.process_running(p) for p in sshd)        # gone, or a zombie left to its reaper
    assert not any(n.startswith(f"tb{h.tag}") for n in cleanup._links() + cleanup._netns())

    # a harness whose owner died: `testbed clean` finds it by its tag, sshd included
    h = harness.Harness(1, tmp_path / "b")
    h.up()
    try:
        sshd = pids_in(h.netns[0])
        assert cleanup.remove_netns(h.tag) == 1 and cleanup.remove_links(h.tag) >= 1
        assert not any(cleanup.process_running(p) for p in sshd)
    finally:
        h.down()
    assert not any(n.startswith(f"tb{h.tag}") for n in cleanup._links() + cleanup._netns())


def test_inventory_errors_start_nothing(tmp_path):
    bad = tmp_path / "inv.yaml"
    bad.write_text("workers:\n  hosts:\n    a: {ansible_host: 198.19.252.9, testbed_cores: -1}\n")
    r = cli("workers", "check", str(bad))
    assert r.returncode == 2 and "worker a: testbed_cores" in r.stderr


RECEIVER = """
import socket, sys, time
s = socket.create_server(("198.18.127.2", 5001))
print("listening", flush=True)
c, _ = s.accept()
got, t0 = 0, time.monotonic()
while (b := c.recv(65536)):
    got += len(b)
print(got, time.monotonic() - t0, flush=True)
"""
SENDER = """
import socket
c = socket.create_connection(("198.18.127.2", 5001), timeout=10)
c.sendall(b"x" * 4_000_000)
c.close()
"""


def counters(ns: str, dev: str) -> tuple[int, int]:
    base = f"/sys/class/net/{dev}/statistics/"
    out = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", f"cat {base}tx_bytes {base}tx_packets"],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


def test_a_segment_joined_over_vxlan_carries_shaped_traffic_with_its_overhead(two_workers):
    """Ansible joins one segment's bridges on two workers by VXLAN (VNI 4242), capped at
    16 Mbit/s on each sender's side. A host on w1 sends 4 MB to one on w2: the receiver gets
    every byte, no faster than the cap; on w1's underlay each packet is 50 bytes longer."""
    from testbed.workers.ansible import run_playbook
    from testbed.workers.vxlan import ETHERNET, OVERHEAD, Segment, per_worker
    h = two_workers
    seg = Segment(4242, f"tb{h.tag}s1", rate_bits=16_000_000)
    lines = per_worker([seg], dict(zip(h.names, h.addresses)))
    r = run_playbook("segments", h.inventory_path(), {"testbed_segments": lines, "testbed_action": "join"})
    assert r.problems == [] and r.status == "successful"
    for ns, addr in zip(h.netns, ("198.18.127.1/24", "198.18.127.2/24")):
        subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", seg.bridge], check=True)
    recv = subprocess.Popen(["ip", "netns", "exec", h.netns[1], "python3", "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    try:
        assert recv.stdout.readline().strip() == "listening"
        inner0, outer0 = counters(h.netns[0], seg.device()), counters(h.netns[0], "ul0")
        subprocess.run(["ip", "netns", "exec", h.netns[0], "python3", "-c", SENDER], check=True, timeout=60)
        got, seconds = recv.stdout.readline().split()
        recv.wait(timeout=30)
    finally:
        recv.kill()
    inner1, outer1 = counters(h.netns[0], seg.device()), counters(h.netns[0], "ul0")
    assert int(got) == 4_000_000
    # 4 MB of payload at 16 Mbit/s takes 2 s; the bucket's burst (20 kB) cannot shorten it by more than 1 %
    assert float(seconds) >= 4_000_000 * 8 / 16e6 * 0.95
    packets, inner = inner1[1] - inner0[1], inner1[0] - inner0[0]
    outer_bytes, outer_packets = outer1[0] - outer0[0], outer1[1] - outer0[1]
    assert packets > 0 and outer_packets >= packets and inner >= 4_000_000
    # the tunnel device counts inner IP bytes (iptunnel_xmit); the underlay carries each as an
    # Ethernet frame 64 bytes longer: the inner Ethernet header (14) and the tunnel's 50. What
    # else crossed ul0 meanwhile (ARP, a few packets at most) is under 100 bytes a packet.
    assert 0 <= outer_bytes - inner - (ETHERNET + OVERHEAD) * packets <= 100 * (outer_packets - packets)
    r = run_playbook("segments", h.inventory_path(), {"testbed_segments": lines, "testbed_action": "leave"})
    assert r.problems == []
    for ns in h.netns:
        assert seg.bridge not in subprocess.run(["ip", "-n", ns, "-br", "link"], capture_output=True, text=True).stdout


def test_an_experiment_runs_whole_on_a_worker_and_its_results_come_back(tmp_path):
    """`testbed workers run`: Ansible copies the experiment to the worker, the worker's own
    testbed runs it in the worker's namespace, and the run directory comes back here. The
    run's own record says where it ran (its run directory on the worker); the worker keeps
    no copy."""
    import yaml

    from tests.conftest import experiment_dict
    h = harness.Harness(1, tmp_path / "harness")
    h.up()
    try:
        exp = tmp_path / "exp" / "small.yaml"
        exp.parent.mkdir()
        exp.write_text(yaml.safe_dump(experiment_dict(name="remote", content={"size": "2MiB"},
                                                      peers=[{"name": "leecher", "count": 2, "client": "aria2",
                                                              "access": {"up": "4mbit", "down": "16mbit"}}])))
        r = cli("workers", "run", str(exp), "--inventory", str(h.inventory_path()), "--results",
                str(tmp_path / "results"), timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "still running" in r.stderr                 # progress while the worker runs it
        run_dir = next((tmp_path / "results").iterdir())
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "complete" and summary["leechers_completed"] == 2
        assert all(p["sha256_ok"] for p in summary["peers"] if p["role"] == "leecher")
        start = json.loads((run_dir / "events.jsonl").read_text().splitlines()[0])
        assert start["run_dir"].startswith(str(h.dir / "work" / "remote-"))     # the harness's testbed_workdir
        assert not os.path.exists(str(Path(start["run_dir"]).parent.parent))
    finally:
        h.down()


def test_a_bad_experiment_never_reaches_a_worker(tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text("workers:\n  hosts:\n    w1: {ansible_host: 198.19.252.60}\n")     # nobody there
    exp = tmp_path / "bad.yaml"
    exp.write_text("name: x\ncontent: {size: 16}\n")
    r = cli("workers", "run", str(exp), "--inventory", str(inv))
    assert r.returncode == 2 and "size" in r.stderr and "unreachable" not in r.stderr
    r = cli("workers", "run", str(exp.with_name("none.yaml")), "--inventory", str(inv))
    assert r.returncode == 2


def test_prepare_sets_each_worker_up_with_the_testbed_s_own_setup(two_workers):
    """`workers prepare`: on each worker (its own namespace, over SSH), the testbed found
    where the inventory says and its setup.sh run there in worker mode, which ends by running
    the installed testbed. Nothing is missing on this machine, so nothing is installed (and
    nothing reaches a package mirror); the copy of the source for a worker without the
    testbed is tests/test_workers.py's."""
    import sys
    r = cli("workers", "prepare", str(two_workers.inventory_path()), timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    project = Path(sys.executable).parents[2]          # .venv/bin/python: the project beside its .venv
    for w in ("w1", "w2"):
        line = " ".join(r.stdout.split(f"{w}: ", 1)[1].split())
        assert line.startswith(f"set up in {project}") and "ready: testbed " in line, r.stdout
        assert "installing" not in line
