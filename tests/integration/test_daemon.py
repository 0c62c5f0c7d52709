"""The Docker daemon restarted under a running swarm.

dockerd stops its containers when it stops (no live-restore), so the swarm is gone. The run
must say so and why, keep what it measured, remove everything once the daemon is back, and
the machine must run the next experiment as before. The daemon is restarted the way
setup.sh started it: stopped by the PID in its pid file (never by name), started again
detached, and bridge netfilter turned off again (dockerd turns it on at every start).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from testbed.run import run
from tests.integration.conftest import nothing_left, small_experiment

PID_FILE = Path("/var/run/docker.pid")
LOG = Path("/var/log/testbed/dockerd.log")


def _log_tail() -> str:
    try:
        return "\n".join(LOG.read_text(errors="replace").splitlines()[-15:])
    except OSError as e:
        return f"(no dockerd log: {e})"


def _start_dockerd() -> None:
    """Start dockerd as setup.sh does: detached, in its own session, logging to its file."""
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    exe = shutil.which("dockerd", path=path)
    assert exe, f"no dockerd on {path}"
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(LOG, "ab") as log:
        subprocess.Popen([exe], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True, env={**os.environ, "PATH": path})


def _alive(pid: int) -> bool:
    """dockerd is still shutting down: its process exists and its pid file is not yet removed
    (it removes the file last; a zombie left unreaped by a session leader has no file)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return PID_FILE.exists()


def _systemd_docker() -> bool:
    return Path("/run/systemd/system").is_dir() and subprocess.run(
        ["systemctl", "is-active", "--quiet", "docker"]).returncode == 0


def restart_dockerd(client) -> None:
    from testbed.doctor import set_bridge_sysctls
    from testbed.runtime import wait_for_daemon
    if _systemd_docker():
        subprocess.run(["systemctl", "restart", "docker"], check=True, timeout=180)
    else:
        pid = int(PID_FILE.read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 120
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(pid), "dockerd did not stop within 120 s:\n" + _log_tail()
        _start_dockerd()
    assert wait_for_daemon(client, 120), "dockerd did not come back within 120 s:\n" + _log_tail()
    set_bridge_sysctls()


def ensure_dockerd(client) -> None:
    """Whatever happened above, leave the daemon running for the tests that follow."""
    from testbed.doctor import set_bridge_sysctls
    from testbed.runtime import wait_for_daemon
    if wait_for_daemon(client, 5):
        return
    if not _systemd_docker():
        pid = int(PID_FILE.read_text()) if PID_FILE.exists() else 0
        if not pid or not _alive(pid):
            _start_dockerd()
    assert wait_for_daemon(client, 120), "dockerd is not running after the restart test:\n" + _log_tail()
    set_bridge_sysctls()


@pytest.fixture(scope="module")
def restarted(docker_client, tmp_path_factory):
    exp = small_experiment(content={"size": "8MiB"}, seed=21, timeout="3m", peers=[
        {"name": "leecher", "count": 4, "client": "transmission", "access": {"up": "1mbit", "down": "4mbit"}}])
    done = {}

    def restart_soon():
        time.sleep(5)
        done["t0"] = time.time()
        try:
            restart_dockerd(docker_client)
            done["t1"] = time.time()
        except BaseException as e:          # said by the first test, not lost in a thread
            done["error"] = f"{type(e).__name__}: {e}"

    def on_event(ev: dict) -> None:
        if ev.get("kind") == "swarm_start":
            threading.Thread(target=restart_soon, daemon=True).start()

    try:
        result = run(exp, tmp_path_factory.mktemp("results"), on_event)
        deadline = time.monotonic() + 300  # the restart thread is done before the next test runs
        while not done.keys() & {"t1", "error"} and time.monotonic() < deadline:
            time.sleep(0.5)
        events = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
        yield result, events, done
    finally:
        ensure_dockerd(docker_client)


def test_the_run_fails_naming_the_daemon(restarted):
    result, events, done = restarted
    assert "t1" in done, done.get("error", "dockerd was not restarted")
    assert result.status == "failed"
    assert "Docker daemon went away" in result.summary["error"]
    kinds = [e["kind"] for e in events]
    assert "docker_daemon_lost" in kinds
    # the daemon stopped the clients' containers: each death is an event with its host
    died = {e["host"] for e in events if e["kind"] == "container_died"}
    assert {"leecher1", "leecher2", "leecher3", "leecher4"} <= died


def test_what_was_measured_before_is_kept(restarted):
    result, _, _ = restarted
    rows = (result.run_dir / "samples.csv").read_text().splitlines()
    assert len(rows) > 4                   # a header and rows of the seconds before the restart
    assert result.summary["partial"] is True


def test_nothing_is_left_and_the_next_run_completes(restarted, docker_client, tmp_path):
    result, _, _ = restarted
    assert nothing_left(docker_client, result.summary["run_id"])
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert not any(manifest["teardown"]["left"].values()), manifest["teardown"]
    again = run(small_experiment(seed=22), tmp_path)
    assert again.status == "complete", again.summary["error"]
