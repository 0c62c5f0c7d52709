"""Remove what a run made, found by its identity, never by process name.

Containers carry the label testbed.run=<run_id>; bridges and root-namespace veth ends
are named tb<tag>... where tag is the run id's 6 hex digits. Named network namespaces
made by probes and test workers (testbed.workers.harness) are tb<tag>-.... Mininet's node shells die with their pty when the
orchestrator dies; a container's namespaces die with the container.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from testbed.plan import run_tag
from testbed.runtime import remove_run_containers

LINK_ANY = re.compile(r"^tb[0-9a-f]{6}")
GROUP_BASE = 0x7F000000     # interface groups the teardown puts links in to delete them at once


def _links() -> list[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True,
                         start_new_session=True).stdout
    return [entry["ifname"] for entry in json.loads(out or "[]")]


def _netns() -> list[str]:
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True,
                         start_new_session=True).stdout
    return [entry["name"] for entry in json.loads(out or "[]")] if out.strip() else []


def remove_links(tag: str | None) -> int:
    """Delete root-namespace links of one run (tag) or of every run; bridges last. One `ip
    -batch` process for all of them: a process per link made the teardown of a 50-peer run
    take as long as its bring-up."""
    match = (lambda n: n.startswith(f"tb{tag}")) if tag else LINK_ANY.match
    names = [n for n in _links() if match(n)]
    if not names:
        return 0
    # Put into one interface group of their own, then deleted as a group: the kernel removes
    # them together, with one wait for its grace periods, where deleting them one by one waits
    # for each (22 veth pairs: 0.38 s one by one, 0.03 s as a group). The group's number
    # comes from the run's tag (from this process for every run's), far from the 0 of links
    # nobody grouped.
    group = GROUP_BASE + (int(tag, 16) if tag else os.getpid() & 0xFFFFFF)
    # its own session: a Ctrl-C typed at the terminal reaches the whole foreground group, and
    # the teardown defers it (run/interrupts.py) but a child would die of it
    subprocess.run(["ip", "-force", "-batch", "-"],
                   input="".join(f"link set dev {n} group {group}\n" for n in names) + f"link delete group {group}\n",
                   capture_output=True, text=True, start_new_session=True)
    left = set(_links())
    if stuck := [n for n in names if n in left]:
        # the kernel deletes a group all or nothing: one link it cannot delete that way (an
        # Open vSwitch device that OVSDB still held) kept them all. One by one, then.
        subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"link del {n}\n" for n in stuck),
                       capture_output=True, text=True, start_new_session=True)
        left = set(_links())
    return sum(1 for n in names if n not in left)


def remove_ovs_bridges(tag: str | None) -> int:
    """Open vSwitch bridges live in OVSDB too: delete them there (only where OVS exists)."""
    if not shutil.which("ovs-vsctl"):
        return 0
    r = subprocess.run(["ovs-vsctl", "--timeout=5", "list-br"], capture_output=True, text=True)
    match = (lambda n: n.startswith(f"tb{tag}")) if tag else LINK_ANY.match
    names = [n for n in r.stdout.split() if match(n)] if r.returncode == 0 else []
    for name in names:
        subprocess.run(["ovs-vsctl", "--timeout=5", "--if-exists", "del-br", name], capture_output=True)
    return len(names)


def remove_netns(tag: str | None) -> int:
    """Named namespaces of one run or of all: the processes in each (a test worker's sshd)
    are ended first, found by the namespace they run in, never by name."""
    match = (lambda n: n.startswith(f"tb{tag}-")) if tag else LINK_ANY.match
    names = [n for n in _netns() if match(n)]
    for name in names:
        stop_namespace(name)
    return len(names)


def process_running(pid: int) -> bool:
    """Alive and not a zombie waiting for its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_namespace(ns: str, grace: float = 5.0) -> None:
    """Ends the processes running in the named namespace this testbed made (found by the
    namespace, never by name): SIGTERM, SIGKILL for any left after `grace`; then deletes it."""
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, start_new_session=True)
    pids = [int(p) for p in r.stdout.split() if p.isdigit()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + grace
        while time.monotonic() < end and any(process_running(p) for p in pids):
            time.sleep(0.02)
        if not any(process_running(p) for p in pids):
            break
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, start_new_session=True)


def find(client, run_id: str) -> dict[str, list[str]]:
    """What of one run exists on this machine (looks only)."""
    tag = run_tag(run_id)
    from testbed.runtime import LABEL_RUN
    try:
        containers = [c.name for c in client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})]
    except Exception:       # the daemon does not answer: what it holds is not known
        containers = ["(unknown: the Docker daemon does not answer; run `testbed clean` once it does)"]
    return {
        "containers": containers,
        "links": [n for n in _links() if n.startswith(f"tb{tag}")],
        "namespaces": [n for n in _netns() if n.startswith(f"tb{tag}-")],
    }


def clean(client, run_id: str | None = None) -> dict[str, int]:
    """Everything of one run (run_id) or of all runs; safe to call repeatedly."""
    tag = run_tag(run_id) if run_id else None
    out = {"containers": 0, "links": 0, "namespaces": 0}

    def do(key: str, step) -> None:
        # each step whatever the others did: a container the daemon failed to remove must not
        # leave the bridges and veths behind too (what is left is found by find(), and reported)
        try:
            out[key] = step()
        except Exception:
            pass
    # the links go while Docker removes the containers: their deletion waits for the kernel's
    # grace periods, which need not wait for Docker (10 peers, medians of 3: teardown 1.27 x
    # bare with the steps one after another, 0.94 x this way). A veth whose container ends
    # meanwhile goes with its namespace; `ip -force` goes past it.
    links = threading.Thread(target=do, args=("links", lambda: remove_ovs_bridges(tag) + remove_links(tag)),
                             name="tb-clean-links")
    links.start()
    do("containers", lambda: remove_run_containers(client, run_id))
    links.join()
    do("namespaces", lambda: remove_netns(tag))
    return out
