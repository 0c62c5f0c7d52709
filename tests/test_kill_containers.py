"""runtime.kill_containers signals a container's first process only while that pid is still
the container's (its cgroup names the container's id), through a pidfd: a pid that ended,
or that another process now holds, is left alone. Tried on child processes of the test."""
from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

from testbed import runtime


def host(pid: int, cid: str):
    return types.SimpleNamespace(pid=pid, container=types.SimpleNamespace(id=cid))


def test_only_a_process_whose_cgroup_names_the_container_is_killed():
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # a word of the child's own cgroup file stands for the container's id
        word = Path(f"/proc/{ours.pid}/cgroup").read_text().split(":")[1]
        gone = subprocess.Popen(["true"])
        gone.wait()
        assert runtime.kill_containers([host(ours.pid, word), host(other.pid, "f" * 64), host(gone.pid, word),
                                        host(0, word)]) == 1
        assert ours.wait(timeout=10) == -9
        assert other.poll() is None                 # not the container's: untouched
    finally:
        for p in (ours, other):
            p.kill()
            p.wait()
