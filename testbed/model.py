"""Experiment file, version 1: the typed model and its two layers of validation.

Layer 1 (schema): pydantic models with unknown keys forbidden and units parsed by
testbed.units. Layer 2 (meaning): names unique, references resolve, rates positive.
Neither layer looks at the machine (images, kernel, daemon): that is preflight's job,
so a file that validates here validates everywhere.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, PlainSerializer, Tag,
                      ValidationError)

from testbed import units
from testbed.errors import InputError


def _unit(parser, formatter):
    def parse(value: Any):
        try:
            return parser(value)
        except units.UnitError as exc:
            raise ValueError(str(exc)) from None
    return [BeforeValidator(parse), PlainSerializer(formatter, return_type=str)]


Rate = Annotated[float, *_unit(units.parse_rate, units.fmt_rate)]
Size = Annotated[int, *_unit(units.parse_size, units.fmt_size)]
Duration = Annotated[float, *_unit(units.parse_duration, lambda s: f"{s:g}s")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AccessLink(Strict):
    """A host's access link: upload (host to network) and download rates, drop-tail queue."""

    up: Rate
    down: Rate
    queue: int = Field(100, description="drop-tail queue length, packets, each direction")


class CoreLink(Strict):
    """A link between two sites (switches); rate applies to each direction unless reverse_rate."""

    ends: tuple[str, str]
    rate: Rate
    reverse_rate: Rate | None = None
    queue: int = 1000


class Topology(Strict):
    """Sites are switches (Linux bridges); core links join them. Hosts attach to a site."""

    name: str = "inline"
    description: str = ""
    switch: Literal["linuxbridge", "ovs"] = "linuxbridge"   # ovs: Open vSwitch in standalone mode
    sites: list[str] = Field(min_length=1)
    core: list[CoreLink] = []


class Content(Strict):
    size: Size
    piece_size: Size | None = None


class Tracker(Strict):
    site: str | None = None
    port: int = 6969


class SeedFor(Strict):
    """Seed for this long after completing (a seeder: after the swarm starts), then stop."""

    duration: Duration


class SeedUntilRatio(Strict):
    """Seed until bytes uploaded reach ratio x content size (counted from the start), then stop."""

    ratio: float


def _seeding_form(value: Any) -> str:
    """Which form of `seeding:` was written, so an error speaks about that form only."""
    if isinstance(value, dict):
        return "SeedUntilRatio" if "ratio" in value else "SeedFor"
    return type(value).__name__ if isinstance(value, (SeedFor, SeedUntilRatio)) else "Word"


# forever: never stop; stop: stop the moment the download completes (leave at once);
# {duration: 10m}: seed that long, then stop; {ratio: 1.0}: seed until that share ratio
def _seeding_word(value: Any) -> str:
    if value not in ("forever", "stop"):
        raise ValueError(f"{value!r} is not a seeding policy: use forever, stop, {{duration: 10m}} or {{ratio: 1.0}}")
    return value


Seeding = Annotated[Annotated[Literal["forever", "stop"], BeforeValidator(_seeding_word), Tag("Word")] | Annotated[SeedFor, Tag("SeedFor")]
                    | Annotated[SeedUntilRatio, Tag("SeedUntilRatio")], Discriminator(_seeding_form)]


class Behaviour(Strict):
    """Client behaviour knobs, the same names for every client. None: the client's own default."""

    utp: bool | None = None
    upload_limit: Rate | None = None      # the client's own cap on payload upload
    download_limit: Rate | None = None
    max_connections: int | None = None   # peer connections for the torrent
    upload_slots: int | None = None      # peers unchoked at once (regular slots)
    seeding: Seeding = "forever"         # enforced by the testbed through the client's API
    connectable: bool = True             # False: accepts no incoming connection (as behind a NAT)
    # require: only encrypted connections (MSE/PE handshake and RC4 payload); prefer: try
    # encrypted, accept plaintext (payload cipher as the client chooses); disable: plaintext only
    encryption: Literal["require", "prefer", "disable"] | None = None

    def seeding_policy(self) -> tuple[str, float | None]:
        """('forever'|'stop'|'duration'|'ratio', the number or None)."""
        if isinstance(self.seeding, SeedFor):
            return "duration", self.seeding.duration
        if isinstance(self.seeding, SeedUntilRatio):
            return "ratio", self.seeding.ratio
        return self.seeding, None


class PeerGroup(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9]{0,11}$")
    count: int = 1
    client: str = "transmission"
    access: AccessLink
    site: str | None = None
    behaviour: Behaviour = Behaviour()


class Start(Strict):
    kind: Literal["flash_crowd"] = "flash_crowd"


class Experiment(Strict):
    version: Literal[1] = 1
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
    description: str = ""
    seed: int = 1
    content: Content
    topology: Topology | str = "star"
    tracker: Tracker = Tracker()
    seeders: list[PeerGroup] = Field(min_length=1)
    peers: list[PeerGroup] = Field(min_length=1)
    start: Start = Start()
    timeout: Duration = 600.0
    repetitions: int = 1

    def groups(self) -> list[tuple[str, PeerGroup]]:
        return [("seeder", g) for g in self.seeders] + [("leecher", g) for g in self.peers]


# ---------------------------------------------------------------- error messages

def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _sentence(source: str, err: ValidationError, model: type[BaseModel] | None = None) -> str:
    # A misspelt key shows up twice: as unknown, and as the real key missing. Name the
    # unknown one, which is what the user typed.
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    # pydantic tags union branches in the location (e.g. 'Topology', 'str'): drop them.
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p[:1].isupper() or p == "str"))
    where = _loc(loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        missing = [e["loc"][-1] for e in errors if e["type"] == "missing" and e["loc"][:-1] == first["loc"][:-1]]
        close = difflib.get_close_matches(str(first["loc"][-1]), [str(m) for m in missing], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{source}: unknown key '{where}'{hint}"
    if first["type"] == "missing":
        return f"{source}: missing required key '{where}'"
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{source}: {where}: {msg}{more}"


# ---------------------------------------------------------------- loading

TOPOLOGY_DIR = Path(__file__).resolve().parent.parent / "topologies"


def _read_yaml(path: Path, what: str) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what} file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} file ({exc.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None


def load_topology(name: str, source: str, base_dir: Path | None) -> Topology:
    """A topology by name (topologies/NAME.yaml) or by path ending in .yaml (relative to the
    experiment file)."""
    if name.endswith((".yaml", ".yml")):
        path = (base_dir or Path.cwd()) / name
        if not path.is_file():
            raise InputError(f"{source}: topology: no such topology file {path}")
    else:
        path = TOPOLOGY_DIR / f"{name}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in TOPOLOGY_DIR.glob("*.yaml")))
            raise InputError(f"{source}: topology: unknown topology '{name}' (known: {known})")
    data = _read_yaml(path, "topology")
    try:
        return Topology.model_validate(data)
    except ValidationError as exc:
        raise InputError(_sentence(str(path), exc)) from None


def parse_experiment(data: Any, source: str = "experiment", base_dir: Path | None = None) -> Experiment:
    """Both validation layers; returns an experiment whose topology is resolved inline."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: the experiment must be a mapping of keys, got {type(data).__name__}")
    try:
        exp = Experiment.model_validate(data)
    except ValidationError as exc:
        raise InputError(_sentence(source, exc)) from None
    if isinstance(exp.topology, str):
        exp = exp.model_copy(update={"topology": load_topology(exp.topology, source, base_dir)})
    check_meaning(exp, source)
    return exp


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path)
    return parse_experiment(_read_yaml(path, "experiment"), str(path), path.parent)


def check_meaning(exp: Experiment, source: str) -> None:
    """Layer 2: cross-references and values that the schema alone cannot judge."""
    from testbed.clients import DRIVERS  # registry of client drivers, pure to import

    def fail(key: str, why: str) -> None:
        raise InputError(f"{source}: {key}: {why}")

    topo = exp.topology
    assert isinstance(topo, Topology)
    sites = set(topo.sites)
    if len(sites) != len(topo.sites):
        fail("topology.sites", "site names must be unique")
    for i, link in enumerate(topo.core):
        for end in link.ends:
            if end not in sites:
                fail(f"topology.core[{i}].ends", f"unknown site '{end}' (sites: {', '.join(topo.sites)})")
        if link.ends[0] == link.ends[1]:
            fail(f"topology.core[{i}].ends", "a core link must join two different sites")
        for key in ("rate", "reverse_rate"):
            value = getattr(link, key)
            if value is not None and value <= 0:
                fail(f"topology.core[{i}].{key}", "must be a positive rate")
    if exp.tracker.site is not None and exp.tracker.site not in sites:
        fail("tracker.site", f"unknown site '{exp.tracker.site}' (sites: {', '.join(topo.sites)})")
    if exp.content.size <= 0:
        fail("content.size", "must be a positive size")
    if exp.content.piece_size is not None:
        ps = exp.content.piece_size
        if ps < 16 * 1024 or ps & (ps - 1):
            fail("content.piece_size", "must be a power of two of at least 16KiB")
    if exp.timeout <= 0:
        fail("timeout", "must be a positive duration")
    if exp.repetitions < 1:
        fail("repetitions", "must be at least 1")
    names: set[str] = set()
    for key, groups in (("seeders", exp.seeders), ("peers", exp.peers)):
        for i, g in enumerate(groups):
            where = f"{key}[{i}]"
            if g.name in names or g.name == "tracker":
                fail(f"{where}.name", f"group name '{g.name}' is used twice (or is reserved)")
            names.add(g.name)
            if g.count < 1:
                fail(f"{where}.count", "must be at least 1")
            if g.client not in DRIVERS:
                fail(f"{where}.client", f"unknown client '{g.client}' (known: {', '.join(sorted(DRIVERS))})")
            for knob in ("upload_limit", "download_limit"):
                value = getattr(g.behaviour, knob)
                if value is not None and value < 8 * 1024:
                    fail(f"{where}.behaviour.{knob}", "must be at least 8kbit (clients cap in whole KiB/s)")
            b = g.behaviour
            for knob in ("max_connections", "upload_slots"):
                value = getattr(b, knob)
                if value is not None and value < 1:
                    fail(f"{where}.behaviour.{knob}", "must be at least 1")
            policy, amount = b.seeding_policy()
            if policy == "duration" and amount <= 0:
                fail(f"{where}.behaviour.seeding.duration", "must be a positive duration")
            if policy == "ratio" and amount <= 0:
                fail(f"{where}.behaviour.seeding.ratio", "must be a positive number")
            if key == "seeders" and policy == "stop":
                fail(f"{where}.behaviour.seeding", "a seeder that stops on completion would never upload; "
                     "use forever, {duration: ...} or {ratio: ...}")
            refused = DRIVERS[g.client].unsupported
            for knob, value in b.model_dump(mode="json").items():
                if value is None:
                    continue
                why = refused.get(knob) or (refused.get(f"{knob}={value}") if isinstance(value, str) else None)
                if why:
                    fail(f"{where}.behaviour.{knob}", why)
            for d in ("up", "down"):
                if getattr(g.access, d) <= 0:
                    fail(f"{where}.access.{d}", "must be a positive rate")
            if g.access.queue < 1:
                fail(f"{where}.access.queue", "must be at least 1 packet")
            if g.site is not None and g.site not in sites:
                fail(f"{where}.site", f"unknown site '{g.site}' (sites: {', '.join(topo.sites)})")


def resolved_yaml(exp: Experiment) -> str:
    """The fully resolved experiment (defaults filled, topology inline, units written out)."""
    return yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False)
