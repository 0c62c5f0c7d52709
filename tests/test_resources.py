"""The resource guard: a plan's memory, disk and CPU needs from measured per-client figures,
and a run refused, with the numbers, when the machine does not have them."""
import pytest

from testbed.catalog import CLIENTS
from testbed.errors import PreflightError
from testbed.model import parse_experiment
from testbed.plan import plan, resources
import importlib

preflight = importlib.import_module("testbed.run.preflight")   # the module: testbed.run re-exports the function
from tests.conftest import experiment_dict


def planned(count: int, client: str = "libtorrent", size: str = "64MiB", up: str = "2mbit"):
    d = experiment_dict(content={"size": size})
    d["peers"][0].update(count=count, client=client)
    d["peers"][0]["access"].update(up=up, down="100mbit")
    return plan(parse_experiment(d), "t-000000")


def test_the_memory_estimate_covers_what_a_150_peer_swarm_was_measured_to_use():
    """benchmarks/churn.py --flash 150 --clients transmission,aria2,rtorrent: the machine's
    memory in use rose by at most 2.30 GiB (page cache included). The guard must not let
    that run through on a machine that lacks it, nor refuse it on one with twice as much."""
    d = experiment_dict(content={"size": "16MiB"})
    d["seeders"][0]["access"] = {"up": "20mbit", "down": "20mbit"}
    d["peers"] = [{"name": c[:4] + "p", "count": 50, "client": c, "access": {"up": "1mbit", "down": "8mbit"}}
                  for c in ("transmission", "aria2", "rtorrent")]
    need = resources.needs(plan(parse_experiment(d), "t-000000")).memory_bytes
    assert 2.30 * 2**30 <= need <= 2 * 2.30 * 2**30, need / 2**30


def test_needs_grow_with_peers_and_content():
    big = resources.needs(planned(100))
    assert big.disk_bytes == (100 + 1 + 1) * 64 * resources.MIB      # leechers, origin, the origin's source
    assert big.cpu_s == pytest.approx(100 * 64 * CLIENTS["libtorrent"].cpu_ms_per_mib / 1000)
    assert big.clients == {"libtorrent": 100, "transmission": 1}


def test_a_run_that_does_not_fit_in_memory_is_refused_with_the_numbers(monkeypatch, tmp_path):
    monkeypatch.setattr(preflight, "mem_available", lambda: 512 * resources.MIB)
    with pytest.raises(PreflightError, match=r"needs about \d+ MiB of memory .* 512 MiB available") as e:
        preflight.machine_fits(planned(100), tmp_path)
    assert e.value.exit_code == 2


def test_a_run_that_does_not_fit_on_disk_is_refused(monkeypatch, tmp_path):
    class Full:
        f_bavail, f_frsize = 1000, 4096
    monkeypatch.setattr(preflight.os, "statvfs", lambda path: Full())
    with pytest.raises(PreflightError, match="MiB of disk under .* 4 MiB is free"):
        preflight.machine_fits(planned(10), tmp_path)


def test_cpu_beyond_the_machine_is_a_warning_not_a_refusal(monkeypatch, tmp_path):
    monkeypatch.setattr(preflight.os, "cpu_count", lambda: 1)
    fast = planned(40, up="50mbit")
    need = resources.needs(fast)
    assert need.cores_at_bound > 1
    assert "cores" in preflight.machine_fits(fast, tmp_path)
