"""One experiment run whole on one worker of an inventory, through Ansible (playbooks/run.yml):
the experiment's directory goes there, the worker's own `testbed run` carries it out, and
its results directory comes back into the coordinator's results, as if run here.

The experiment is read and checked here first, so bad input is refused (exit 2) before
anything reaches a worker. The worker needs the testbed installed (`testbed_exe` in the
inventory names its command, default `testbed` on PATH), as `testbed workers check` shows.
Files the experiment names outside its own directory are not sent: the worker's testbed
then refuses the experiment, which comes back as a failure of the task that ran it.

The worker's copy is removed when the playbook ends, failed or not. A coordinator that is
interrupted, or a worker lost meanwhile, leaves the worker's run going until its own
timeout ends it (it tears itself down as any run does); `testbed clean` on the worker
removes what a run killed there left.
"""
from __future__ import annotations

import secrets
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from testbed.errors import InputError, RunError

MARGIN_S = 900      # bring-up, teardown and the report on top of the experiment's own timeout
MAX_PACKED = 256 * 1024 * 1024      # an experiment's directory bigger than this is not one


def pack_experiment(directory: Path, out: Path) -> None:
    """The experiment's directory (the files it names are relative to it) in one archive, as
    Ansible's copy module costs a round trip per file; without results directories and hidden
    entries (.git, say). Refused (exit 2) when it is too big to be an experiment's."""
    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        if any(p.startswith(".") for p in parts) or parts[:1] == ("results",):
            return None
        return info
    size = 0
    for p in directory.rglob("*"):
        rel = p.relative_to(directory).parts
        if p.is_file() and not any(x.startswith(".") for x in rel) and rel[0] != "results":
            size += p.stat().st_size
    if size > MAX_PACKED:
        raise InputError(f"{directory}: the experiment's directory holds {size / 2**20:.0f} MiB; an experiment "
                         f"sent to a worker goes with its directory: keep it in one of its own")
    with tarfile.open(out, "w:gz") as tar:
        tar.add(directory, arcname=".", filter=keep)


def run_on_worker(experiment: Path, inventory: Path, worker: str | None, results_root: Path,
                  progress: Callable[[str], None] | None = None) -> tuple[int, Path]:
    """(the worker's exit status for the run, the run directory now under results_root)."""
    from testbed.model import load_experiment
    from testbed.workers.ansible import run_playbook
    from testbed.workers.inventory import load_inventory
    exp = load_experiment(experiment)                   # InputError: nothing has started
    workers = load_inventory(inventory)
    names = [w.name for w in workers]
    chosen = worker or names[0]
    if chosen not in names:
        raise InputError(f"--worker {chosen}: {inventory} has no such worker (it has {', '.join(names)})")
    job = f"{exp.name}-{secrets.token_hex(3)}"
    results_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="testbed-fetch-") as local:
        # the experiment's directory (the files it names are relative to it) in one archive:
        # Ansible's copy module costs a round trip per file
        pack_experiment(experiment.resolve().parent, Path(local) / "experiment.tgz")
        r = run_playbook("run", inventory, {
            "testbed_worker": chosen, "testbed_job": job,
            "testbed_file": experiment.name, "testbed_seconds": int(exp.timeout + MARGIN_S), "testbed_local": local},
            progress, limit=chosen)
        if r.problems:
            raise RunError("; ".join(r.problems))
        outcome = r.workers.get(chosen)
        packed = Path(local) / "results.tgz"
        if outcome is None or not packed.exists():
            raise RunError(f"worker {chosen}: the run brought no results back (Ansible: {r.status})")
        run_dir = extract_run(packed, results_root, chosen)
    return int(outcome.report.get("rc", 1)), run_dir


def extract_run(packed: Path, results_root: Path, worker: str) -> Path:
    """The one run directory in a worker's results archive, extracted under results_root."""
    try:
        tar = tarfile.open(packed)
    except tarfile.TarError as exc:
        raise RunError(f"worker {worker}: its results archive cannot be read ({exc})") from None
    with tar:
        tops = {Path(m.name).parts[0] for m in tar.getmembers() if Path(m.name).parts and m.name != "."}
        tops.discard(".")
        if len(tops) != 1:
            raise RunError(f"worker {worker}: expected one run directory in its results, found {sorted(tops)}")
        members = tar.getmembers()
        # only plain files and directories inside the run directory (what `testbed run`
        # writes): Python 3.11.2's tarfile has no extraction filter to say so
        bad = [m.name for m in members if not (m.isfile() or m.isdir()) or Path(m.name).is_absolute()
               or ".." in Path(m.name).parts]
        if bad:
            raise RunError(f"worker {worker}: its results hold unexpected entries ({bad[0]!r})")
        for m in members:       # ours, and never setuid or writable by others
            m.uid = m.gid = 0
            m.uname = m.gname = "root"
            m.mode &= 0o755
        results_root.mkdir(parents=True, exist_ok=True)
        tar.extractall(results_root, members=members)
    return results_root / tops.pop()
