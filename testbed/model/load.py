"""Reading an experiment: YAML files, topologies, link profiles and trace files, and the
one-sentence error messages for what does not validate. All file I/O of the model is here,
so the plan that follows reads nothing.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from testbed import textfile, traces
from testbed.textfile import excerpt
from testbed.errors import InputError
from testbed.model.check import check_meaning
from testbed.model.files import TOPOLOGY_DIR, _read_yaml, _sentence, read_library, validated
from testbed.model.participation import resolve_participation
from testbed.model.homes import IspTopology
from testbed.model.schema import AccessLink, ClientBuild, Experiment, LinkProfile, Topology


def load_topology(name: str, source: str, base_dir: Path | None) -> Topology:
    """A topology by name (topologies/NAME.yaml) or by path ending in .yaml (relative to the
    experiment file)."""
    if name.endswith((".yaml", ".yml")):
        path = (base_dir or Path.cwd()) / name
        if not textfile.is_file(path):
            raise InputError(f"{source}: topology: no such topology file {excerpt(str(path), 120)}")
    else:
        path = TOPOLOGY_DIR / f"{name}.yaml"
        if "/" in name or not textfile.is_file(path):
            known = ", ".join(sorted(p.stem for p in TOPOLOGY_DIR.glob("*.yaml")))
            raise InputError(f"{source}: topology: unknown topology {excerpt(name)} (known: {known}; or a path "
                             "ending in .yaml)")
    data = _read_yaml(path, "topology")
    try:
        if isinstance(data, dict) and "generator" in data:
            return expand_topology(IspTopology.model_validate(data), str(path))
        return Topology.model_validate(data)
    except ValidationError as exc:
        raise InputError(_sentence(str(path), exc, data=data)) from None


def expand_topology(gen: IspTopology, source: str) -> Topology:
    """The sites and links an ISP generator describes (its parameters checked first)."""
    for i, isp in enumerate(gen.isps):
        where = f"{source}: isps[{i}]"
        for key in ("segments", "homes"):
            if getattr(isp, key) < 1:
                raise InputError(f"{where}.{key}: must be at least 1")
        for key in ("subscribed_up", "subscribed_down"):
            if getattr(isp, key) <= 0:
                raise InputError(f"{where}.{key}: must be a positive rate")
        for key in ("oversubscription", "down_oversubscription"):
            value = getattr(isp, key)
            if value is not None and not value >= 1:
                raise InputError(f"{where}.{key}: must be a ratio of at least 1 (aggregate subscribed rate "
                                 "/ segment link rate)")
    if len({isp.name for isp in gen.isps}) != len(gen.isps):
        raise InputError(f"{source}: isps: ISP names must be unique")
    if gen.transit is not None and len(gen.isps) != 2:
        raise InputError(f"{source}: transit: joins two ISPs; name two under isps")
    return Topology.model_validate(gen.expand())


PROFILES_FILE = TOPOLOGY_DIR / "profiles.yaml"


def link_profiles() -> dict[str, LinkProfile]:
    """The named access-link profiles of topologies/profiles.yaml."""
    return read_library(PROFILES_FILE, LinkProfile, "link profile")


def resolve_access(access: AccessLink, where: str, source: str, base_dir: Path | None,
                   profiles: dict[str, LinkProfile]) -> AccessLink:
    """The access link with its profile's values filled in (fields written here win) and trace
    files resolved to absolute paths, checked to be readable."""
    update: dict[str, Any] = {}
    if access.profile is not None:
        prof = profiles.get(access.profile)
        if prof is None:
            close = difflib.get_close_matches(access.profile, list(profiles), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(profiles)})"
            raise InputError(f"{source}: {where}.profile: unknown link profile {excerpt(access.profile)}{hint}")
        for key in ("up", "down", "delay", "jitter", "loss", "queue"):
            if key not in access.model_fields_set:
                update[key] = getattr(prof, key)
    loaded = {}
    for direction in ("up", "down"):
        key = f"{direction}_trace"
        ref = getattr(access, key)
        try:
            if isinstance(ref, str):
                update[key] = str(traces.resolve(ref, base_dir))
                loaded[direction] = traces.load(update[key])
            elif ref is not None:
                loaded[direction] = traces.from_steps([(s.at, s.rate) for s in ref], f"{where}.{key}")
        except traces.TraceError as exc:
            raise InputError(f"{source}: {where}.{key}: {exc}") from None
    out = access.model_copy(update=update)
    out._traces.update(loaded)
    return out


def resolve_build(build: ClientBuild, client: str, where: str, source: str, base_dir: Path | None) -> ClientBuild:
    """A client build with its file resolved to an absolute path and hashed (read here, so
    that the plan names the build's image by its content without reading anything)."""
    import hashlib

    from testbed.catalog import CLIENTS
    given = [k for k in ("image", "binary", "package") if getattr(build, k)]
    if len(given) != 1:
        raise InputError(f"{source}: {where}: name exactly one of image, binary or package")
    kind = given[0]
    if kind == "image":
        return build
    if kind == "binary" and CLIENTS[client].binary is None:
        raise InputError(f"{source}: {where}.binary: {client} has no single executable to replace; "
                         "give a package instead")
    if kind == "package" and not build.package.endswith(".deb"):
        raise InputError(f"{source}: {where}.package: must be a Debian package file (.deb)")
    path = ((base_dir or Path.cwd()) / getattr(build, kind)).resolve()
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise InputError(f"{source}: {where}.{kind}: cannot read {path} ({exc.strerror})") from None
    if build.sha256 is not None and build.sha256 != digest:
        raise InputError(f"{source}: {where}.sha256: {path} has sha256 {digest[:16]}..., not the one written")
    return build.model_copy(update={kind: str(path), "sha256": digest})


def parse_experiment(data: Any, source: str = "experiment", base_dir: Path | None = None) -> Experiment:
    """Both validation layers; returns an experiment whose topology and link profiles are
    resolved inline."""
    exp = validated(Experiment, data, source, "experiment")
    if isinstance(exp.topology, str):
        exp = exp.model_copy(update={"topology": load_topology(exp.topology, source, base_dir)})
    elif isinstance(exp.topology, IspTopology):
        exp = exp.model_copy(update={"topology": expand_topology(exp.topology, f"{source}: topology")})
    profiles = link_profiles() if any(a and a.profile for a in [*(g.access for _, g in exp.groups()),
                                                          *(h.access for h in exp.households)]) else {}
    exp = exp.model_copy(update={"households": [
        h.model_copy(update={"access": resolve_access(h.access, f"households[{i}].access", source, base_dir, profiles)})
        for i, h in enumerate(exp.households)]})
    resolved = {}
    for key in ("seeders", "peers"):
        groups = getattr(exp, key)
        resolved[key] = [g if g.access is None else
                         g.model_copy(update={"access": resolve_access(g.access, f"{key}[{i}].access", source,
                                                                       base_dir, profiles)})
                         for i, g in enumerate(groups)]
    exp = exp.model_copy(update=resolved)
    exp = exp.model_copy(update={key: [g if g.build is None else g.model_copy(update={"build": resolve_build(
        g.build, g.client, f"{key}[{i}].build", source, base_dir)}) for i, g in enumerate(getattr(exp, key))]
        for key in ("seeders", "peers")})
    exp = resolve_participation(exp, source, base_dir)
    check_meaning(exp, source)
    return exp


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path)
    return parse_experiment(_read_yaml(path, "experiment"), str(path), path.parent)


def resolved_yaml(exp: Experiment) -> str:
    """The fully resolved experiment (defaults filled, topology inline, units written out)."""
    return yaml.safe_dump(exp.model_dump(mode="json", by_alias=True), sort_keys=False)
