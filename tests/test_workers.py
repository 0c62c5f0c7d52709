"""The workers' inventory, read by Ansible itself (ansible-inventory through ansible-runner):
what the testbed takes from it, and each mistake refused in one sentence naming the file,
the worker and the variable."""
from __future__ import annotations

from pathlib import Path

import pytest

from testbed.errors import InputError
from testbed.plan.build import CONTROL_BLOCKS, CONTROL_NET, WORKER_UNDERLAY
from testbed.workers.inventory import load_inventory


def write(tmp_path: Path, text: str, name: str = "inventory.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_yaml_inventory_in_order_with_defaults(tmp_path):
    inv = write(tmp_path, """
workers:
  vars: {ansible_user: root}
  hosts:
    beta: {ansible_host: 198.19.252.20, testbed_cores: 8}
    alpha: {ansible_host: somewhere.example, testbed_underlay: 198.19.252.21}
other:
  hosts:
    gamma: {ansible_host: 198.19.252.22}
""")
    ws = load_inventory(inv)
    assert [w.name for w in ws] == ["beta", "alpha"]          # the group `workers`, inventory order
    assert (ws[0].cores, ws[0].underlay, ws[0].address) == (8.0, "198.19.252.20", "198.19.252.20")
    assert (ws[1].cores, ws[1].underlay, ws[1].address) == (1.0, "198.19.252.21", "somewhere.example")
    assert ws[1].vars["ansible_user"] == "root"               # group vars as Ansible resolves them
    assert ws[0].worker().cores == 8.0


def test_ini_inventory_with_children(tmp_path):
    inv = write(tmp_path, """
[rack1]
a ansible_host=198.19.252.30 testbed_cores=2
[rack2]
b ansible_host=198.19.252.31
[workers:children]
rack1
rack2
""", "hosts.ini")
    assert [(w.name, w.cores) for w in load_inventory(inv)] == [("a", 2.0), ("b", 1.0)]


def test_all_hosts_without_a_workers_group(tmp_path):
    inv = write(tmp_path, "all:\n  hosts:\n    x: {ansible_host: 198.19.252.40}\n")
    assert [w.name for w in load_inventory(inv)] == ["x"]


@pytest.mark.parametrize("text, words", [
    ("workers:\n  hosts:\n    a: {ansible_host: 198.19.252.2, testbed_cores: 0}\n", ["worker a", "testbed_cores", "0"]),
    ("workers:\n  hosts:\n    a: {ansible_host: 198.19.252.2, testbed_cores: many}\n", ["worker a", "testbed_cores"]),
    ("workers:\n  hosts:\n    a: {ansible_host: 198.19.252.2, testbed_cores: .nan}\n", ["worker a", "testbed_cores"]),
    ("workers:\n  hosts:\n    a: {ansible_host: 10.0.0.5}\n", ["worker a", "ansible_host", "198.19.252.0/22"]),
    ("workers:\n  hosts:\n    a: {ansible_host: h, testbed_underlay: 198.18.0.9}\n", ["worker a", "testbed_underlay"]),
    ("workers:\n  hosts:\n    a: {ansible_host: h, testbed_underlay: 198.19.252.0}\n", ["worker a", "testbed_underlay"]),
    ("workers:\n  hosts:\n    a: {ansible_host: 198.19.252.2}\n    b: {ansible_host: 198.19.252.2}\n",
     ["worker b", "198.19.252.2", "worker a"]),
    ("workers:\n  hosts: {}\n", ["names no worker"]),
])
def test_mistakes_refused_in_one_sentence(tmp_path, text, words):
    inv = write(tmp_path, text)
    with pytest.raises(InputError) as e:
        load_inventory(inv)
    msg = str(e.value)
    assert str(inv) in msg and "\n" not in msg and e.value.exit_code == 2
    for w in words:
        assert w in msg


def test_missing_and_unreadable_inventories(tmp_path):
    with pytest.raises(InputError, match="no such inventory"):
        load_inventory(tmp_path / "nope.yaml")
    bad = write(tmp_path, "workers: [unclosed\n")
    with pytest.raises(InputError) as e:
        load_inventory(bad)
    assert str(bad) in str(e.value)


def test_underlay_block_is_never_a_runs_control_block():
    blocks = list(CONTROL_NET.subnets(new_prefix=22))[:CONTROL_BLOCKS]
    assert not any(b.overlaps(WORKER_UNDERLAY) for b in blocks)
    assert WORKER_UNDERLAY.subnet_of(CONTROL_NET)
