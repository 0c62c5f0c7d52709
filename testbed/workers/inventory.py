"""The workers of a multi-machine run, from an inventory in Ansible's own format (INI or YAML,
a file or a directory with group_vars), read by Ansible itself through ansible-runner's
`get_inventory`, so whatever Ansible accepts is accepted here and means the same.

The workers are the hosts of the group `workers` (all hosts if there is no such group), in
inventory order; the first one is the coordinator's (tracker, origins and the results directory
go there, see testbed.plan.placement). The variables the testbed reads from each:

    ansible_host       where Ansible reaches it over SSH (default: its name)
    testbed_cores      CPU cores it gives the swarm, for placement (default 1)
    testbed_underlay   its address for the VXLAN tunnels, in 198.19.252.0/22 (default:
                       ansible_host, which must then be in that block)

Everything is checked before anything starts: one sentence naming the file, the worker and
the variable (exit 2).
"""
from __future__ import annotations

import ipaddress
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from testbed.errors import InputError
from testbed.plan.build import WORKER_UNDERLAY
from testbed.plan.placement import Worker

GROUP = "workers"


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    address: str        # where Ansible reaches it
    underlay: str       # the tunnels' end on it
    cores: float
    vars: dict          # every variable Ansible resolved for it (connection settings included)

    def worker(self) -> Worker:
        """What placement needs of it."""
        return Worker(self.name, self.cores)


def _excerpt(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_inventory(path: Path) -> dict:
    """Ansible's own reading of the inventory: `ansible-inventory --list` as a dict."""
    import ansible_runner

    from testbed.workers.ansible import ansible_binary
    ansible_binary("ansible-inventory")
    if not path.exists():
        raise InputError(f"{path}: no such inventory file or directory")
    # in a directory of ours, removed after: left to itself, ansible-runner makes one in /tmp
    # (.ansible-runner-*, its artifacts) at every call and never removes it
    with tempfile.TemporaryDirectory(prefix="tb-inventory-") as private:
        out, error = ansible_runner.get_inventory(action="list", inventories=[str(path.resolve())],
                                                  response_format="json", quiet=True, private_data_dir=private)
    if not isinstance(out, dict):
        first = next((line.strip() for line in str(error or out or "").splitlines() if line.strip()), "no answer")
        raise InputError(f"{path}: Ansible could not read it as an inventory ({first[:200]})")
    return out


def group_hosts(listing: dict, group: str) -> list[str]:
    """The hosts of `group` and its children, in inventory order, each once."""
    seen: list[str] = []

    def walk(g: str) -> None:
        entry = listing.get(g, {})
        for h in entry.get("hosts", []):
            if h not in seen:
                seen.append(h)
        for child in entry.get("children", []):
            walk(child)
    walk(group)
    return seen


def workers_of(listing: dict, source: Path) -> list[WorkerSpec]:
    """The workers of an `ansible-inventory --list` answer, checked."""
    hostvars = listing.get("_meta", {}).get("hostvars", {})
    names = group_hosts(listing, GROUP) if GROUP in listing else group_hosts(listing, "all")
    if not names:
        raise InputError(f"{source}: the inventory names no worker (list them in a group `{GROUP}`)")
    out, underlays = [], {}
    for name in names:
        v = hostvars.get(name, {})
        address = str(v.get("ansible_host", name))
        cores = v.get("testbed_cores", 1)
        try:
            cores = float(cores)
        except (TypeError, ValueError):
            cores = math.nan
        if not (math.isfinite(cores) and cores > 0):
            raise InputError(f"{source}: worker {name}: testbed_cores must be a number of cores above 0, "
                             f"not {_excerpt(v.get('testbed_cores'))}")
        key = "testbed_underlay" if "testbed_underlay" in v else "ansible_host"
        raw = str(v.get(key, address))
        try:
            underlay = ipaddress.IPv4Address(raw)
        except ValueError:
            underlay = None
        if underlay is None or underlay not in WORKER_UNDERLAY or underlay in (
                WORKER_UNDERLAY.network_address, WORKER_UNDERLAY.broadcast_address):
            raise InputError(f"{source}: worker {name}: {key} {_excerpt(raw)} is not a host address in "
                             f"{WORKER_UNDERLAY}, the workers' underlay (set testbed_underlay to one)")
        if str(underlay) in underlays:
            raise InputError(f"{source}: worker {name}: {key} {underlay} is also worker {underlays[str(underlay)]}'s")
        underlays[str(underlay)] = name
        out.append(WorkerSpec(name, address, str(underlay), cores, dict(v)))
    return out


def load_inventory(path: str | Path) -> list[WorkerSpec]:
    """The workers named by an inventory file or directory, checked (InputError otherwise)."""
    source = Path(path)
    return workers_of(read_inventory(source), source)

