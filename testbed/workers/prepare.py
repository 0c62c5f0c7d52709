"""`testbed workers prepare`: each worker of an inventory made ready to run shards, through
Ansible (playbooks/prepare.yml), with the testbed's own set-up (`setup.sh worker`): what it
installs and starts on this machine, it installs and starts there.

A worker that has the testbed already (`testbed_exe`, default `testbed` on PATH) is set up
where it is; one that has none gets a copy of this machine's source, so that coordinator and
workers run the same testbed: the project directory in one archive (Ansible's copy module
costs a round trip per file), without its virtual environment, results, tests, caches and
hidden entries. Installing needs the worker to reach its package mirrors and PyPI; nothing
else of a run needs the outside.
"""
from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
LEFT_OUT = {".venv", "results", "tests", "benchmarks", "__pycache__", "build", "dist"}


def pack_source(out: Path, project: Path = PROJECT) -> list[str]:
    """The project's source in one archive; returns its top-level entries."""
    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts               # "./a/b" -> ("a", "b"); the root: ()
        if any(p.startswith(".") or p in LEFT_OUT or p.endswith(".egg-info") for p in parts):
            return None
        return info
    with tarfile.open(out, "w:gz") as tar:
        tar.add(project, arcname=".", filter=keep)
    with tarfile.open(out) as tar:
        return sorted({Path(n).parts[0] for n in tar.getnames() if Path(n).parts})


def prepare(inventory: Path, progress: Callable[[str], None] | None = None):
    """Runs playbooks/prepare.yml on every worker; its PlaybookResult."""
    from testbed.workers.ansible import run_playbook
    from testbed.workers.inventory import load_inventory
    names = [w.name for w in load_inventory(inventory)]
    with tempfile.TemporaryDirectory(prefix="testbed-prepare-") as local:
        if not (PROJECT / "setup.sh").exists():
            from testbed.errors import RunError
            raise RunError(f"{PROJECT} has no setup.sh: this testbed was not installed from its source, "
                           f"so there is nothing to copy to a worker")
        pack_source(Path(local) / "testbed-src.tgz")
        return run_playbook("prepare", inventory, {"testbed_local": local}, progress, workers_named=names)
