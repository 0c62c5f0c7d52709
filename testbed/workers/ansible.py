"""Playbooks run through ansible-runner, never a remote-execution layer of our own.

`run_playbook` runs one of the testbed's playbooks (testbed/workers/playbooks/) against an
inventory and turns ansible-runner's events into the testbed's: each task's start and each
host's result go to `progress` as they come, and the outcome is per worker: what it reported
(`set_fact: testbed_report`), and the first task that failed on it or the reason it was
unreachable, with Ansible's own message. A failure always names the worker and the task.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from testbed.errors import PreflightError

PLAYBOOKS = Path(__file__).parent / "playbooks"


@dataclass
class WorkerOutcome:
    name: str
    ok: int = 0
    failed_task: str | None = None
    message: str = ""
    unreachable: bool = False
    report: dict = field(default_factory=dict)

    @property
    def good(self) -> bool:
        return self.failed_task is None and not self.unreachable

    def problem(self) -> str:
        """One sentence: what failed on this worker, in which task."""
        if self.unreachable:
            return f"worker {self.name} is unreachable (task '{self.failed_task}': {self.message})"
        return f"worker {self.name}: task '{self.failed_task}' failed: {self.message}"


@dataclass
class PlaybookResult:
    status: str                 # ansible-runner's: successful, failed, timeout, canceled
    rc: int
    workers: dict[str, WorkerOutcome]

    @property
    def problems(self) -> list[str]:
        return [w.problem() for w in self.workers.values() if not w.good]


def ansible_binary(name: str = "ansible-playbook") -> str:
    """The Ansible beside this interpreter (the testbed's venv), else on PATH; ansible-runner
    finds its other commands (ansible-inventory) on PATH, so the venv's goes first there."""
    venv = str(Path(sys.executable).parent)
    if (Path(venv) / name).exists() and venv not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = venv + os.pathsep + os.environ.get("PATH", "")
    found = shutil.which(name)
    if not found:
        raise PreflightError(f"{name} is missing: install the testbed with its dependencies (setup.sh does)")
    return found


def _message(res: dict) -> str:
    text = res.get("msg") or ""
    if res.get("stderr"):               # a command's own words say more than "non-zero return code"
        text = f"{text}: {res['stderr']}" if text else res["stderr"]
    text = text or res.get("stdout") or ""
    if not text and res.get("results"):         # a loop: the first item that failed
        text = next((_message(r) for r in res["results"] if r.get("failed")), "")
    return " ".join(str(text).split())[:300]


def run_playbook(name: str, inventory: Path, extravars: dict | None = None,
                 progress: Callable[[str], None] | None = None, limit: str | None = None,
                 timeout: int | None = None, workers_named: list[str] | None = None) -> PlaybookResult:
    """Runs playbooks/<name>.yml against `inventory` (on `workers_named`, the workers the
    testbed read from it, else on its group `workers`); returns each worker's outcome."""
    import ansible_runner
    ansible_binary()     # on PATH (ansible-runner's `binary` drops the playbook from the command)
    say = progress or (lambda _line: None)
    workers: dict[str, WorkerOutcome] = {}
    started = [time.monotonic()]

    def on_event(ev: dict) -> bool:
        kind, data = ev.get("event", ""), ev.get("event_data", {})
        host, task = data.get("host"), data.get("task", "")
        if kind == "playbook_on_task_start":
            say(f"task: {data.get('name') or task}")
            started[0] = time.monotonic()
        elif kind == "runner_on_async_poll" and host:
            say(f"{host}: still running ({time.monotonic() - started[0]:.0f} s)")
        elif host and kind in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
            w = workers.setdefault(host, WorkerOutcome(host))
            res = data.get("res", {}) or {}
            if kind == "runner_on_ok":
                w.ok += 1
                report = res.get("ansible_facts", {}).get("testbed_report")
                if report is not None:
                    w.report = report
            elif kind == "runner_on_unreachable":
                w.unreachable, w.failed_task, w.message = True, task, _message(res)
                say(f"{host}: unreachable ({w.message})")
            elif not data.get("ignore_errors") and w.failed_task is None:
                w.failed_task, w.message = task, _message(res)
                say(f"{host}: '{task}' failed: {w.message}")
        return False            # ansible-runner need not keep the event on disk

    private = tempfile.mkdtemp(prefix="testbed-ansible-")
    with cancel_on_signal() as hit:
        try:
            r = ansible_runner.run(
                private_data_dir=private, playbook=str(PLAYBOOKS / f"{name}.yml"),
                inventory=str(inventory.resolve()), quiet=True, limit=limit,
                extravars={**({"testbed_workers": ",".join(workers_named)} if workers_named else {}), **(extravars or {})},
                event_handler=on_event, timeout=timeout, envvars=ansible_env(private),
                cancel_callback=lambda: bool(hit))
        finally:
            close_masters(Path(private) / "cp")
            remove_soon(Path(private))
    if hit:
        raise KeyboardInterrupt
    return PlaybookResult(r.status, r.rc, workers)


def remove_soon(directory: Path, within: float = 10.0) -> None:
    """Removes the playbook's private directory; a canceled playbook's last processes may still
    write into it for a moment (seen: 'Directory not empty'), so it tries again until `within`."""
    end = time.monotonic() + within
    while True:
        try:
            shutil.rmtree(directory)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > end:
                shutil.rmtree(directory, ignore_errors=True)
                return
            time.sleep(0.2)


@contextmanager
def cancel_on_signal():
    """Ctrl-C or SIGTERM while a playbook runs cancels it through ansible-runner (which ends
    ansible-playbook within its poll, about 5 s) and is raised as KeyboardInterrupt once it
    has; raised at once, it would leave ansible-playbook running on its own, writing into a
    directory being removed. Only the main thread can take signals; elsewhere, nothing."""
    hit: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield hit
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda sig, _frame: hit.append(sig))
    try:
        yield hit
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def ansible_env(private: str) -> dict[str, str]:
    """Ansible's settings for the testbed's playbooks. SSH: a worker that stops answering is
    found in about 15 s (ServerAlive), not never: Ansible keeps one SSH connection per worker
    open between tasks (ControlPersist), and a connection whose far end vanished without a
    word otherwise waits forever. Those connections live in the run's own directory, and
    close_masters() ends them, so nothing is left running."""
    return {"ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_GATHERING": "explicit",
            "ANSIBLE_LOCAL_TEMP": f"{private}/tmp", "ANSIBLE_TIMEOUT": "10",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": f"{private}/cp",
            "ANSIBLE_SSH_ARGS": "-C -o ControlMaster=auto -o ControlPersist=60s -o ServerAliveInterval=5 "
                                "-o ServerAliveCountMax=3"}


def close_masters(directory: Path) -> None:
    """Asks each SSH connection Ansible kept open (a control socket in `directory`) to exit."""
    for sock in directory.glob("*") if directory.is_dir() else ():
        try:
            subprocess.run(["ssh", "-O", "exit", "-o", f"ControlPath={sock}", "worker"], capture_output=True,
                           timeout=10, start_new_session=True)
        except subprocess.TimeoutExpired:   # never hide what the playbook raised
            pass


def clock_offsets(inventory: Path, coordinator: str, workers_named: list[str] | None = None,
                  progress: Callable[[str], None] | None = None) -> tuple[dict, list[str]]:
    """({worker: clock.Offset} for each worker that answered, the problems of the others),
    measured against a responder on `coordinator`, this machine's underlay address (checked:
    InputError if it is not one in the underlay block, RunError if it cannot be bound here)."""
    import ipaddress

    from testbed.errors import InputError, RunError
    from testbed.plan.build import WORKER_UNDERLAY
    from testbed.workers import clock
    try:
        inside = ipaddress.IPv4Address(coordinator) in WORKER_UNDERLAY
    except ValueError:
        inside = False
    if not inside:
        raise InputError(f"--clock (or testbed_coordinator in the inventory): {coordinator[:40]!r} is not an "
                         f"address in {WORKER_UNDERLAY}, the workers' underlay")
    try:
        responder = clock.Responder(coordinator)
    except OSError as exc:
        raise RunError(f"clock: cannot answer probes on {coordinator}:{clock.PORT} here ({exc.strerror})") from None
    with responder:
        r = run_playbook("clock", inventory, {"testbed_clock_script": clock.WORKER_SCRIPT,
                                              "testbed_coordinator": coordinator, "testbed_clock_port": clock.PORT},
                         progress, workers_named=workers_named)
    out, problems = {}, list(r.problems)
    for name, w in r.workers.items():
        if w.good and "clock_probes" in w.report:
            try:
                out[name] = clock.parse(w.report["clock_probes"])
            except ValueError:
                problems.append(f"worker {name}: no clock probe was answered")
    return out, problems
