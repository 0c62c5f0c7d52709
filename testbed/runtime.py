"""Host runtime: emulated hosts as Docker containers (Docker SDK for Python).

Containers start with --network none (the emulated network is the only one a client
may have), no extra capabilities, the run's labels, and the host's work directory
mounted at /tb. PID 1 is Docker's init running `sleep infinity`; clients are started
with `docker exec` by their drivers.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from testbed.errors import PreflightError, RunError
from testbed.images import Image
from testbed.plan import HostPlan, Plan

LABEL_RUN = "testbed.run"
LABEL_HOST = "testbed.host"
MOUNT = "/tb"


def docker_client():
    try:
        client = docker.from_env(timeout=120)
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        raise PreflightError(f"the Docker daemon is not reachable ({exc.__class__.__name__}); "
                             "start it (setup.sh does) and check `docker info`") from None


def wait_for_daemon(client, seconds: float) -> bool:
    """Whether the Docker daemon answers, waiting up to `seconds` for it (one restarting)."""
    import time
    deadline = time.monotonic() + seconds
    while True:
        try:
            client.ping()
            return True
        except Exception:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


@dataclass
class ContainerHost:
    """A running emulated host; implements clients.base.HostHandle."""

    plan: HostPlan
    container: object
    host_dir: Path
    container_dir: str = MOUNT

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def data_ip(self) -> str:
        return self.plan.data_ip

    @property
    def ctl_ip(self) -> str:
        return self.plan.ctl_ip

    @property
    def pid(self) -> int:
        return int(self.container.attrs["State"]["Pid"])

    def exec(self, argv: list[str], detach: bool = False, user: str = "") -> tuple[int, str]:
        res = self.container.exec_run(argv, detach=detach, user=user)
        out = res.output.decode(errors="replace") if isinstance(res.output, bytes) else ""
        return (res.exit_code or 0), out


def limits(host: HostPlan) -> dict:
    """The container's memory (no swap beyond it) and CPU limits, when the experiment sets them."""
    out = {}
    if host.memory_limit is not None:
        out.update(mem_limit=host.memory_limit, memswap_limit=host.memory_limit)
    if host.cpus is not None:
        out["nano_cpus"] = int(host.cpus * 1e9)
    return out


# Every image's root filesystem is read-only: a client writes only its own host directory
# (config, data, logs; HOME points there) and a small /tmp, so a client cannot change its
# image or leave files in it between runs. /tmp allows executing (Docker's tmpfs default is
# noexec): a home router runs a copy of ping from there (see households.py).
READ_ONLY = {"read_only": True, "tmpfs": {"/tmp": "size=64m,mode=1777,exec", "/run": "size=8m"}}


def container_spec(plan: Plan, host: HostPlan, image: Image, host_dir: Path) -> dict:
    """Keyword arguments for docker's containers.run (pure; asserted by tests)."""
    if host.shares_netns is not None:
        # one PC: this client lives in another client's network namespace (Docker's
        # container network mode), so hostname and network sysctls are that host's
        return dict(
            image=image.tag, name=host.container, detach=True, init=True,
            network_mode=f"container:{plan.host(host.shares_netns).container}", cap_drop=["ALL"],
            cap_add=list(image.spec.capabilities), security_opt=["no-new-privileges"],
            labels={LABEL_RUN: plan.run_id, LABEL_HOST: host.name, "testbed.role": host.role},
            volumes={str(host_dir): {"bind": MOUNT, "mode": "rw"}}, environment={"HOME": MOUNT}, **READ_ONLY,
            **limits(host))
    sysctls = {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1}
    if host.role in ("router", "server"):
        sysctls["net.ipv4.ping_group_range"] = "0 2147483647"   # ping without a capability (ICMP sockets)
    return dict(
        image=image.tag, name=host.container, hostname=host.name, detach=True, init=True,
        network_mode="none", cap_drop=["ALL"], cap_add=list(image.spec.capabilities), security_opt=["no-new-privileges"],
        labels={LABEL_RUN: plan.run_id, LABEL_HOST: host.name, "testbed.role": host.role},
        volumes={str(host_dir): {"bind": MOUNT, "mode": "rw"}},
        environment={"HOME": MOUNT},
        **READ_ONLY,
        # IPv4 only: otherwise every host sends IPv6 router solicitations and MLD reports
        # onto the emulated network, and clients try IPv6 peers that cannot exist.
        sysctls=sysctls,
        **limits(host),
    )


def start_containers(client, plan: Plan, images: dict[str, Image], hosts_root: Path,
                     workers: int = 8, then: Callable[[ContainerHost], None] | None = None) -> dict[str, ContainerHost]:
    """Every host's container, `workers` at a time; `then(host)`, if given, runs in the thread
    that started a container as soon as it is up, while the daemon works on the others."""
    def one(h: HostPlan) -> ContainerHost:
        host_dir = hosts_root / h.name
        for sub in ("config", "log", "run", "data"):
            (host_dir / sub).mkdir(parents=True, exist_ok=True)
        try:
            c = client.containers.run(**container_spec(plan, h, images[h.image], host_dir))
            c.reload()
        except docker.errors.APIError as exc:
            raise RunError(f"starting container for {h.name}: {exc.explanation or exc}") from None
        host = ContainerHost(h, c, host_dir)
        if then is not None:
            then(host)
        return host

    with ThreadPoolExecutor(workers) as pool:
        # hosts with their own namespace first: a one-PC client joins another's
        started = list(pool.map(one, [h for h in plan.hosts if h.shares_netns is None]))
        started += list(pool.map(one, [h for h in plan.hosts if h.shares_netns is not None]))
    return {h.name: h for h in started}


def kill_containers(hosts: Iterable[ContainerHost]) -> int:
    """SIGKILL to the first process of each of the run's containers, all at once, before
    Docker removes them: the kernel then ends every container together, where Docker's
    forced removal, 8 at a time, kills and waits for each in turn (a 50-peer teardown: 1.47 s,
    1.20 s with this). Each process is the container's own, by its pidfd and its cgroup (which
    names the container's id): a pid that was reused by another process is never signalled.
    Returns how many were signalled."""
    signalled = 0
    for h in hosts:
        try:
            pid, cid = h.pid, h.container.id
            fd = os.pidfd_open(pid)
        except (OSError, KeyError, TypeError, ValueError, AttributeError):
            continue            # not running, or gone: Docker's removal finds it so
        try:
            # checked after the pidfd is open: if the number is still the container's now, the
            # pidfd is that process (or one already dead, which a signal cannot reach)
            if cid and cid in Path(f"/proc/{pid}/cgroup").read_text():
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                signalled += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return signalled


def remove_run_containers(client, run_id: str | None = None) -> int:
    """Remove every container of one run (or of all runs), found by label."""
    flt = {"label": f"{LABEL_RUN}={run_id}" if run_id else LABEL_RUN}
    # sparse: the list alone; without it the SDK inspects each container, one after another
    # (about 0.3 s of a 100-peer teardown), for nothing removal needs but its id
    found = client.containers.list(all=True, filters=flt, sparse=True)

    def rm(c):
        try:
            c.remove(force=True)
        except Exception:     # gone already, or the daemon slow or busy with it: cleanup reports what is left
            pass

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(rm, found))
    return len(found)


def is_root() -> bool:
    return os.geteuid() == 0


class DeathWatch:
    """Docker's own events for one run's containers: each 'die' (with its exit code) and each
    'oom'. A container killed from outside the run (by a user, by its memory limit, by a
    daemon going down) is then an event with a reason, not a silent stall. Closed before the
    teardown, whose removals are deaths of their own."""

    def __init__(self, client, run_id: str, hosts: dict[str, str]):
        import threading
        self.hosts = hosts                       # container id -> host name
        self.deaths: list[dict] = []             # {host, exit_code, oom}, in order
        self.ooms: list[dict] = []               # {host, time}: a process killed for the memory limit
        self.lock = threading.Lock()
        self._oom: set[str] = set()
        self._closing = False
        self.lost: float | None = None           # when the event stream ended under the run: the daemon went away
        self._stream = client.events(filters={"label": f"{LABEL_RUN}={run_id}", "type": "container"}, decode=True)
        self._thread = threading.Thread(target=self._follow, name=f"deaths-{run_id}", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            for ev in self._stream:
                action, cid = ev.get("Action") or ev.get("status"), ev.get("id") or ev.get("Actor", {}).get("ID")
                host = self.hosts.get(cid)
                if host is None:
                    continue
                if action == "oom":
                    # the kernel killed a process of the container for its memory limit (the
                    # container itself may live on, its client gone or thrashing)
                    with self.lock:
                        self._oom.add(host)
                        self.ooms.append({"host": host, "time": ev.get("time")})
                elif action == "die":
                    code = (ev.get("Actor", {}).get("Attributes") or {}).get("exitCode")
                    with self.lock:
                        self.deaths.append({"host": host, "exit_code": int(code) if code is not None else None,
                                            "oom": host in self._oom, "time": ev.get("time")})
        except Exception:       # the stream closed (teardown) or the daemon went away
            pass
        if not self._closing:   # not closed by the run: dockerd stopped (or restarted), and its containers with it
            import time
            self.lost = time.time()

    def settle(self, seconds: float) -> None:
        """Waits up to `seconds` for the event stream to end: containers that died together
        may be a daemon going down, whose stream ends a moment after their deaths."""
        self._thread.join(timeout=seconds)

    def since(self, n: int) -> list[dict]:
        with self.lock:
            return list(self.deaths[n:])

    def close(self) -> None:
        self._closing = True
        try:
            self._stream.close()
        except Exception:
            pass
        self._thread.join(timeout=1)      # an event being handled as the stream closed is kept
