"""Integration tests start real containers, bridges, veths, tc and clients.

They need root, a Docker daemon and the built images: `sudo ./setup.sh test` provides all
three. A machine without them fails these tests with the reason; it does not skip them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.model import parse_experiment
from tests.conftest import experiment_dict

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def docker_client():
    from mininet.log import setLogLevel
    setLogLevel("warning")
    from testbed import images
    from testbed.runtime import docker_client as connect
    assert os.geteuid() == 0, "integration tests need root: run `sudo ./setup.sh test`"
    client = connect()
    missing = [i.tag for i in images.all_images() if not images.exists(client, i)]
    assert not missing, f"images not built: {missing}; run `testbed images build`"
    return client


def nothing_left(client, run_id: str) -> bool:
    from testbed.cleanup import find
    return not any(find(client, run_id).values())


@pytest.fixture(scope="session", autouse=True)
def machine_left_clean():
    """After the whole session nothing of any run remains on the machine."""
    yield
    import docker
    client = docker.from_env()
    assert client.containers.list(all=True, filters={"label": "testbed.run"}) == []
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout)
    assert [lk["ifname"] for lk in links if lk["ifname"].startswith("tb")] == []


def small_experiment(**over):
    return parse_experiment(experiment_dict(**over))


def cli(*args, timeout=300) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "testbed"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def two_workers(tmp_path):
    """Two workers of the one-machine harness (namespaces with their own sshd)."""
    from testbed.workers import harness
    h = harness.Harness(2, tmp_path / "harness")
    h.up()
    try:
        yield h
    finally:
        h.down()
