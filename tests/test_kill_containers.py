"""runtime.kill_containers signals a container's first process only while that pid is still
the container's (its cgroup names the container's id), through a pidfd: a pid that ended,
or that another process now holds, is left alone. Tried on child processes of the test, one
of them moved into a cgroup of its own whose name stands for a container's id."""
from __future__ import annotations

import subprocess
import sys
import types
import uuid
from pathlib import Path

import pytest

from testbed import runtime


def host(pid: int, cid: str):
    return types.SimpleNamespace(pid=pid, container=types.SimpleNamespace(id=cid))


def hierarchy() -> Path:
    """A cgroup hierarchy to make a group in: the pids controller's (v1), or the unified one."""
    for p in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        if (p / "cgroup.procs").exists():
            return p
    pytest.skip("no cgroup hierarchy to make a group in")


def test_only_a_process_whose_cgroup_names_the_container_is_killed():
    cid = "tbtest" + uuid.uuid4().hex          # stands for a container's 64-hex id
    group = hierarchy() / cid
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    group.mkdir()
    try:
        (group / "cgroup.procs").write_text(str(ours.pid))
        assert cid in Path(f"/proc/{ours.pid}/cgroup").read_text()
        gone = subprocess.Popen(["true"])
        gone.wait()
        assert runtime.kill_containers([host(ours.pid, cid), host(other.pid, cid), host(gone.pid, cid),
                                        host(0, cid)]) == 1
        assert ours.wait(timeout=10) == -9
        assert other.poll() is None                 # its cgroup does not name the container
    finally:
        for p in (ours, other):
            p.kill()
            p.wait()
        group.rmdir()
