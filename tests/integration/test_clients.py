"""Every client, for real: a swarm of all six, the interoperability matrix, and knobs obeyed."""
import csv
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from testbed.clients import DRIVERS
from testbed.matrix import run_matrix
from tests.conftest import ROOT
from tests.integration.conftest import cli, nothing_left

CAP = 1_000_000   # bit/s


def test_mixed_clients_swarm(docker_client, tmp_path):
    r = cli("run", str(ROOT / "experiments" / "mixed-clients.yaml"), "--results", str(tmp_path))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    (run_dir,) = tmp_path.iterdir()
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "complete"
    assert {p["client"] for p in s["peers"]} == set(DRIVERS)
    assert all(p["sha256_ok"] and p["completed"] for p in s["peers"])
    for p in s["peers"]:
        eff = json.loads((run_dir / "hosts" / p["name"] / "config" / "effective.json").read_text())
        assert eff["client"] == p["client"] and eff["version"] and len(eff["effective"]) >= 10


def test_interoperability_matrix(docker_client, tmp_path):
    result = run_matrix(list(DRIVERS), "2MiB", tmp_path, parallel=3)
    failed = [(e["seeder"], e["leecher"], e["status"]) for e in result["pairs"]
              if not e.get("ok") and not e.get("explained")]
    assert failed == []
    # the only failures allowed are explained ones, each shown to pass once the cause is removed
    for e in result["pairs"]:
        if not e.get("ok"):
            assert "transmission" in (e["seeder"], e["leecher"])
            assert e["without_transmission_utp"]["sha256_ok"]
    assert result["passed"] >= 30
    # a pair that failed once and then worked is marked so; more than one such would say
    # something changed (one in all CI runs so far: rtorrent -> aria2, 2026-11-26)
    assert result["intermittent"] <= 1, [e["first_attempt"] for e in result["pairs"] if e.get("intermittent")]


def _capped_seeder(client: str, out: Path) -> Path:
    exp = {"name": f"cap-{client}", "seed": 5, "content": {"size": "4MiB"}, "timeout": "24s",
           "seeders": [{"name": "seeder", "client": client, "access": {"up": "20mbit", "down": "20mbit"},
                        "behaviour": {"upload_limit": f"{CAP}bit"}}],
           "peers": [{"name": "leecher", "client": "libtorrent", "access": {"up": "20mbit", "down": "20mbit"}}]}
    path = out / f"cap-{client}.yaml"
    path.write_text(yaml.safe_dump(exp))
    subprocess.run([str(Path(sys.executable).parent / "testbed"), "run", str(path), "--results", str(out / client)],
                   capture_output=True, text=True, timeout=200)
    (run_dir,) = (out / client).iterdir()
    return run_dir


def wire_rate(run_dir: Path, peer: str) -> float:
    """Upload rate on the wire (bit/s) over the transfer, from the interface counters."""
    rows = [r for r in csv.DictReader((run_dir / "samples.csv").open()) if r["peer"] == peer]
    moving = [(float(r["t"]), int(r["if_bytes_up"])) for r in rows if int(r["if_bytes_up"]) > 64 * 1024]
    (t0, b0), (t1, b1) = moving[2], moving[-1]      # skip the start-up burst
    return (b1 - b0) * 8 / (t1 - t0)


@pytest.fixture(scope="module")
def capped_runs(docker_client, tmp_path_factory):
    out = tmp_path_factory.mktemp("caps")
    with ThreadPoolExecutor(3) as pool:
        return dict(zip(DRIVERS, pool.map(lambda c: _capped_seeder(c, out), DRIVERS)))


# How far above its cap each client's wire rate may go. rtorrent 0.9.8 overshoots its own
# cap in some runs: with throttle.global_up.max_rate 122 KiB/s (999 kbit/s) it once reported
# 1067 kbit/s of payload and 1125 kbit/s crossed its interface (12.6 % over); in other runs it
# stays within 10 %. Its bound is 20 %: a test that can still fail (an rtorrent that ignored
# its cap would send at the line's 20 Mbit/s), where an xfail that passes either way could not.
OVERSHOOT = {"rtorrent": 0.2}


@pytest.mark.parametrize("client", DRIVERS)
def test_upload_cap_is_obeyed(capped_runs, docker_client, client):
    run_dir = capped_runs[client]
    rate = wire_rate(run_dir, "seeder")
    over = OVERSHOOT.get(client, 0.1)
    assert 0.9 * CAP <= rate <= (1 + over) * CAP, \
        f"{client}: {rate / 1e3:.0f} kbit/s on the wire for a {CAP / 1e3:.0f}kbit cap"
    assert nothing_left(docker_client, json.loads((run_dir / "summary.json").read_text())["run_id"])
