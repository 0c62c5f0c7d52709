"""The workers' inventory, read by Ansible itself (ansible-inventory through ansible-runner):
what the testbed takes from it, and each mistake refused in one sentence naming the file,
the worker and the variable."""
from __future__ import annotations

import tempfile
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


def test_reading_an_inventory_leaves_nothing_in_the_temp_dir(tmp_path, monkeypatch):
    # ansible-runner makes a private directory in the temp dir unless given one: 68 of them
    # were found in /tmp after one CI run
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)      # read TMPDIR again
    inv = write(tmp_path, "workers:\n  hosts:\n    a: {ansible_host: 198.19.252.20}\n")
    assert [w.name for w in load_inventory(inv)] == ["a"]
    assert list(scratch.iterdir()) == []


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


def test_vxlan_lines_per_worker():
    from testbed.workers.vxlan import Segment, per_worker
    segs = [Segment(7, "tbabcdefs1", rate_bits=8_000_000), Segment(8, "tbabcdefs2")]
    lines = per_worker(segs, {"w1": "198.19.252.2", "w2": "198.19.252.3", "w3": "198.19.252.4"})
    w1 = lines["w1"]
    assert "link add tbabcdefs1x type vxlan id 7 local 198.19.252.2 dstport 4789 nolearning" in w1["ip"]
    assert "link set tbabcdefs1x mtu 1500" in w1["ip"]          # 1550 underlay less the tunnel's 50
    # one flood entry per other worker and segment, never one to itself
    assert sorted(w1["fdb"]) == sorted(f"fdb append 00:00:00:00:00:00 dev tbabcdefs{k}x dst 198.19.252.{a}"
                                       for k in (1, 2) for a in (3, 4))
    assert w1["tc"] == ["qdisc replace dev tbabcdefs1x root tbf rate 8000000bit burst 10000 latency 50ms"]
    assert w1["leave"] == ["link del tbabcdefs1x", "link del tbabcdefs1", "link del tbabcdefs2x", "link del tbabcdefs2"]
    assert all(not any(line.startswith("link set") and line.endswith(" up") for line in w["ip"]) for w in lines.values())


@pytest.mark.parametrize("seg", [("vni", 0), ("vni", 1 << 24), ("bridge", "tb123456segment")])
def test_vxlan_refuses_what_the_kernel_would(seg):
    from testbed.workers.vxlan import Segment, join_lines
    s = Segment(**{"vni": 5, "bridge": "tbabcdefs1", seg[0]: seg[1]})
    with pytest.raises(ValueError):
        join_lines([s], "198.19.252.2")


def test_clock_offset_from_the_shortest_round_trip():
    from testbed.workers.clock import estimate, parse
    # the worker's clock is 2.5 s ahead; trips of 40, 4 (2 + 2) and 30 ms; the 4 ms one decides
    samples = [(100.000, 97.530, 100.040), (101.000, 98.502, 101.004), (102.000, 99.520, 102.030)]
    o = estimate(samples)
    assert abs(o.seconds - 2.5) < 1e-9 and abs(o.error - 0.002) < 1e-9 and o.probes == 3
    assert abs(o.to_coordinator(101.002) - 98.502) < 1e-9
    # an asymmetric trip is off by at most the error it states
    o = estimate([(10.0, 8.0 + 0.009, 10.010)])           # 9 ms out, 1 ms back, clock 2 s ahead
    assert abs(o.seconds - 2.0) <= o.error
    assert parse("[[1.0, 1.0, 1.002]]").probes == parse([[1.0, 1.0, 1.002]]).probes == 1
    with pytest.raises(ValueError):
        estimate([])


def test_vxlan_names_go_into_commands_only_when_plain():
    from testbed.workers.vxlan import Segment, join_lines
    with pytest.raises(ValueError):
        join_lines([Segment(5, "tb;reboot")], "198.19.252.2")


def test_the_experiment_goes_to_a_worker_without_results_or_hidden_files(tmp_path):
    import tarfile

    from testbed.workers.remote import pack_experiment
    (tmp_path / "exp.yaml").write_text("name: x\n")
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "a.csv").write_text("0,1mbit\n")
    for junk in ("results/run/summary.json", ".git/HEAD", "traces/.swp"):
        (tmp_path / junk).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / junk).write_text("x")
    out = tmp_path.parent / f"{tmp_path.name}.tgz"
    pack_experiment(tmp_path, out)
    with tarfile.open(out) as tar:
        names = {n.lstrip("./") for n in tar.getnames()} - {""}
    assert names == {"exp.yaml", "traces", "traces/a.csv"}


@pytest.mark.parametrize("address", ["10.0.0.1", "198.18.0.1", "nonsense"])
def test_the_clock_responder_address_must_be_on_the_underlay(address):
    from testbed.workers.ansible import clock_offsets
    with pytest.raises(InputError, match="--clock"):
        clock_offsets(Path("inventory.yaml"), address)


def test_a_worker_without_the_testbed_gets_this_machine_s_source(tmp_path):
    """`workers prepare` sends the project to set up there: its source and setup.sh, not its
    virtual environment, results, tests or anything hidden."""
    import tarfile

    from testbed.workers.prepare import pack_source
    top = pack_source(tmp_path / "src.tgz")
    assert {"setup.sh", "pyproject.toml", "testbed", "images", "topologies", "experiments"} <= set(top), top
    assert not {".venv", ".git", "results", "tests", "benchmarks"} & set(top), top
    with tarfile.open(tmp_path / "src.tgz") as tar:
        names = tar.getnames()
    assert "./testbed/workers/playbooks/prepare.yml" in names and "./setup.sh" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") or ".egg-info" in n for n in names)
    assert (tmp_path / "src.tgz").stat().st_size < 8 * 2 ** 20
