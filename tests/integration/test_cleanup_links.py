"""cleanup.remove_links deletes one run's links at once, as an interface group, and nothing
else: not another run's links, not a link of the machine's (here veths and a bridge made for
the test, in the machine's namespace; no address, no packet)."""
from __future__ import annotations

import subprocess

import pytest

from testbed import cleanup

pytestmark = pytest.mark.integration


def links() -> set[str]:
    return set(cleanup._links())


def sh(cmd: str) -> None:
    subprocess.run(["ip", "-batch", "-"], input=cmd, text=True, check=True, capture_output=True)


def test_one_runs_links_go_together_and_no_others():
    ours = [f"tbfff0aas{i}p{j}" for i in range(1, 4) for j in (1, 2)]
    theirs = ["tbfff0bbs1p1", "tbfff0bbs1p2"]
    machines = ["tbtestmach1", "tbtestmach2"]           # not named by any run's tag, in group 0
    try:
        sh("link add tbfff0aas1 type bridge\n"
           + "".join(f"link add {a} type veth peer name {b}\n" for a, b in zip(ours[::2], ours[1::2]))
           + f"link set {ours[0]} master tbfff0aas1\n"
           + "".join(f"link add {a} type veth peer name {b}\n" for a, b in (theirs, machines)))
        assert cleanup.remove_links("fff0aa") == len(ours) + 1
        left = links()
        assert not any(n.startswith("tbfff0aa") for n in left)
        assert set(theirs) | set(machines) <= left      # another run's and the machine's: untouched
    finally:
        subprocess.run(["ip", "-force", "-batch", "-"], capture_output=True, text=True,
                       input="".join(f"link del {n}\n" for n in [*ours, *theirs, *machines, "tbfff0aas1"]))

