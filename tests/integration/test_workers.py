"""Workers on one machine (testbed.workers.harness): network namespaces with their own sshd on
the underlay, reached by Ansible over SSH through ansible-runner. Evidence from the far end:
the addresses the worker itself reports (its facts, gathered there), and what is left running."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from testbed import cleanup
from testbed.workers import harness
from tests.integration.conftest import cli


def pids_in(ns: str) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


@pytest.fixture
def two_workers(tmp_path):
    h = harness.Harness(2, tmp_path / "harness")
    h.up()
    try:
        yield h
    finally:
        h.down()


def test_check_reaches_each_worker_in_its_namespace_and_names_a_lost_one(two_workers):
    h, inv = two_workers, two_workers.inventory_path()
    r = cli("workers", "check", str(inv), "--json", timeout=180)
    assert r.returncode == 0, r.stderr
    rows = {row["worker"]: row for row in json.loads(r.stdout)}
    for name, address in zip(h.names, h.addresses):
        # the worker's own facts: it sees its underlay address and nothing of this machine's
        assert rows[name]["ok"] and rows[name]["addresses"] == [address]
        assert int(rows[name]["cores"]) == os.cpu_count()
    assert "task: gather facts" in r.stderr                    # ansible-runner's events, as progress

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
    assert all(not os.path.exists(f"/proc/{p}") for p in sshd)
    assert not any(n.startswith(f"tb{h.tag}") for n in cleanup._links() + cleanup._netns())

    # a harness whose owner died: `testbed clean` finds it by its tag, sshd included
    h = harness.Harness(1, tmp_path / "b")
    h.up()
    sshd = pids_in(h.netns[0])
    assert cleanup.remove_netns(h.tag) == 1 and cleanup.remove_links(h.tag) >= 1
    end = time.monotonic() + 5      # remove_netns signals them; they end on their own
    while time.monotonic() < end and any(os.path.exists(f"/proc/{p}") for p in sshd):
        time.sleep(0.05)
    assert all(not os.path.exists(f"/proc/{p}") for p in sshd)
    assert not any(n.startswith(f"tb{h.tag}") for n in cleanup._links() + cleanup._netns())


def test_inventory_errors_start_nothing(tmp_path):
    bad = tmp_path / "inv.yaml"
    bad.write_text("workers:\n  hosts:\n    a: {ansible_host: 198.19.252.9, testbed_cores: -1}\n")
    r = cli("workers", "check", str(bad))
    assert r.returncode == 2 and "worker a: testbed_cores" in r.stderr
