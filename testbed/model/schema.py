"""Experiment file, version 1: the typed model and its two layers of validation.

Layer 1 (schema): pydantic models with unknown keys forbidden and units parsed by
testbed.units. Layer 2 (meaning): names unique, references resolve, rates positive.
Neither layer looks at the machine (images, kernel, daemon): that is preflight's job,
so a file that validates here validates everywhere.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, PlainSerializer, Tag,
                      ValidationError)

from testbed import traces, units
from testbed.errors import InputError


def _unit(parser, formatter):
    def parse(value: Any):
        try:
            return parser(value)
        except units.UnitError as exc:
            raise ValueError(str(exc)) from None
    return [BeforeValidator(parse), PlainSerializer(formatter, return_type=str)]


Rate = Annotated[float, *_unit(units.parse_rate, units.fmt_rate)]
Size = Annotated[int, *_unit(units.parse_size, units.exact_size)]
Duration = Annotated[float, *_unit(units.parse_duration, units.exact_duration)]
Percent = Annotated[float, *_unit(units.parse_percent, units.fmt_percent)]


class Directions(NamedTuple):
    """A value for each direction of an access link: up (host to network) and down."""

    up: float
    down: float


def _directional(parser, formatter):
    """One value for both directions ('30ms') or one each ({up: 30ms, down: 10ms})."""
    def one(value: Any) -> float:
        try:
            return parser(value)
        except units.UnitError as exc:
            raise ValueError(str(exc)) from None

    def parse(value: Any) -> Directions:
        if isinstance(value, Directions):
            return value
        if isinstance(value, dict):
            if set(value) != {"up", "down"}:
                raise ValueError(f"give one value, or both 'up' and 'down' (got {', '.join(map(str, value))})")
            return Directions(one(value["up"]), one(value["down"]))
        v = one(value)
        return Directions(v, v)

    def write(d: Directions) -> Any:
        return formatter(d.up) if d.up == d.down else {"up": formatter(d.up), "down": formatter(d.down)}
    return [BeforeValidator(parse), PlainSerializer(write)]


DirDuration = Annotated[Any, *_directional(units.parse_duration, units.exact_duration)]
DirPercent = Annotated[Any, *_directional(units.parse_percent, units.fmt_percent)]
NO_IMPAIRMENT = Directions(0.0, 0.0)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateStep(Strict):
    """One step of a rate schedule: from `at` (seconds after the swarm starts) the rate is `rate`."""

    at: Duration
    rate: Rate


# A time-varying rate: a trace file (Mahimahi: one 1500-byte delivery opportunity per line,
# in ms; or a .csv of time,rate) or an inline schedule of steps.
RateTrace = str | list[RateStep]


class Throttle(Strict):
    throttle: Rate


class DataPlan(Strict):
    """A metered access plan: what the carrier counts, the cap, what happens there, the tariff.

    Bytes are counted at the IP layer (what carriers bill), GB = 10^9 bytes. Prices are in
    `currency` units."""

    cap: Size | None = None             # data included per billing period; None: no cap
    period: Duration = 30 * 86400.0     # billing period
    used: Size = 0                      # already used in this period when the run starts
    counts: Literal["both", "up", "down"] = "both"
    # overage: traffic goes on, billed at overage_per_gb; {throttle: RATE}: the carrier slows
    # the link to RATE both ways; cut: the carrier cuts the link; stop_seeding: the user's
    # client stops seeding once the cap is reached (downloading goes on, billed as overage)
    at_cap: Literal["overage", "cut", "stop_seeding"] | Throttle = "overage"
    fee: float = 0.0                    # per billing period
    per_gb: float = 0.0                 # every GB counted
    per_minute: float = 0.0             # every minute the peer is in the swarm
    overage_per_gb: float = 0.0         # every GB counted above the cap
    currency: str = "EUR"


class AccessLink(Strict):
    """A host's access link. `profile` takes every field from topologies/profiles.yaml; a field
    written here overrides the profile's value."""

    profile: str | None = None
    up: Rate | None = None              # host -> network
    down: Rate | None = None            # network -> host
    # each one value for both directions, or {up: ..., down: ...}
    delay: DirDuration = NO_IMPAIRMENT  # one-way, added in each direction of this link
    jitter: DirDuration = NO_IMPAIRMENT  # +/- uniformly around the delay
    loss: DirPercent = NO_IMPAIRMENT    # random per packet
    reorder: bool = False               # True: jitter may reorder packets (as netem's own default)
    queue: int = Field(100, description="drop-tail queue length, packets, each direction")
    up_trace: RateTrace | None = None   # the upload rate follows this trace instead of `up`
    down_trace: RateTrace | None = None
    # where in its traces the link starts: a duration, or `spread`: the members of a group
    # start evenly spaced over the trace's length, so they do not move in step
    trace_offset: Duration | Literal["spread"] = 0.0
    plan: DataPlan | None = None


class LinkProfile(Strict):
    description: str = ""
    source: str
    up: Rate
    down: Rate
    delay: DirDuration = NO_IMPAIRMENT
    jitter: DirDuration = NO_IMPAIRMENT
    loss: DirPercent = NO_IMPAIRMENT
    queue: int = 100


class CoreLink(Strict):
    """A link between two sites (switches); rate applies to each direction unless reverse_rate."""

    ends: tuple[str, str]
    rate: Rate
    reverse_rate: Rate | None = None
    queue: int = 1000
    delay: Duration = 0.0       # one-way, each direction (e.g. the distance between two ISPs)
    jitter: Duration = 0.0
    loss: Percent = 0.0


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
    # how delay, jitter and loss are made: netem (the kernel's), userspace (an NFQUEUE element
    # at each receiving host), or auto: netem where the kernel has it, else userspace
    shaper: Literal["auto", "netem", "userspace"] = "auto"

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


PROFILES_FILE = TOPOLOGY_DIR / "profiles.yaml"


def link_profiles() -> dict[str, LinkProfile]:
    """The named access-link profiles of topologies/profiles.yaml."""
    data = _read_yaml(PROFILES_FILE, "link profile")
    try:
        return {str(k): LinkProfile.model_validate(v) for k, v in (data or {}).items()}
    except ValidationError as exc:
        raise InputError(_sentence(str(PROFILES_FILE), exc)) from None


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
            raise InputError(f"{source}: {where}.profile: unknown link profile '{access.profile}'{hint}")
        for key in ("up", "down", "delay", "jitter", "loss", "queue"):
            if key not in access.model_fields_set:
                update[key] = getattr(prof, key)
    for key in ("up_trace", "down_trace"):
        ref = getattr(access, key)
        try:
            if isinstance(ref, str):
                update[key] = str(traces.resolve(ref, base_dir))
                traces.load(update[key])
            elif ref is not None:
                traces.from_steps([(s.at, s.rate) for s in ref], f"{where}.{key}")
        except traces.TraceError as exc:
            raise InputError(f"{source}: {where}.{key}: {exc}") from None
    return access.model_copy(update=update) if update else access


def parse_experiment(data: Any, source: str = "experiment", base_dir: Path | None = None) -> Experiment:
    """Both validation layers; returns an experiment whose topology and link profiles are
    resolved inline."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: the experiment must be a mapping of keys, got {type(data).__name__}")
    try:
        exp = Experiment.model_validate(data)
    except ValidationError as exc:
        raise InputError(_sentence(source, exc)) from None
    if isinstance(exp.topology, str):
        exp = exp.model_copy(update={"topology": load_topology(exp.topology, source, base_dir)})
    profiles = link_profiles() if any(g.access.profile for _, g in exp.groups()) else {}
    resolved = {}
    for key in ("seeders", "peers"):
        groups = getattr(exp, key)
        resolved[key] = [g.model_copy(update={"access": resolve_access(g.access, f"{key}[{i}].access", source,
                                                                        base_dir, profiles)})
                         for i, g in enumerate(groups)]
    exp = exp.model_copy(update=resolved)
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
        for key in ("delay", "jitter"):
            if getattr(link, key) < 0:
                fail(f"topology.core[{i}].{key}", "must not be negative")
        if not 0 <= link.loss < 1:
            fail(f"topology.core[{i}].loss", "must be at least 0% and below 100%")
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
            check_access(g.access, f"{where}.access", fail)
            if g.access.plan is not None and g.access.plan.period < exp.timeout:
                fail(f"{where}.access.plan.period", "is shorter than the run's timeout; a run is billed within "
                     "one billing period")
            if g.site is not None and g.site not in sites:
                fail(f"{where}.site", f"unknown site '{g.site}' (sites: {', '.join(topo.sites)})")


def check_access(a: AccessLink, where: str, fail) -> None:
    for d in ("up", "down"):
        rate = getattr(a, d)
        if rate is None and getattr(a, f"{d}_trace") is None:
            fail(f"{where}.{d}", "missing: give a rate, a profile, or a trace")
        if rate is not None and rate <= 0:
            fail(f"{where}.{d}", "must be a positive rate")
    if a.queue < 1:
        fail(f"{where}.queue", "must be at least 1 packet")
    for key in ("delay", "jitter"):
        if min(getattr(a, key)) < 0:
            fail(f"{where}.{key}", "must not be negative")
    if not all(0 <= x < 1 for x in a.loss):
        fail(f"{where}.loss", "must be at least 0% and below 100%")
    p = a.plan
    if p is None:
        return
    if p.cap is not None and p.cap <= 0:
        fail(f"{where}.plan.cap", "must be a positive size")
    if p.period <= 0:
        fail(f"{where}.plan.period", "must be a positive duration")
    if p.used < 0:
        fail(f"{where}.plan.used", "must not be negative")
    if p.at_cap != "overage" and p.cap is None:
        fail(f"{where}.plan.at_cap", "needs a cap")
    if isinstance(p.at_cap, Throttle) and p.at_cap.throttle < 8000:
        fail(f"{where}.plan.at_cap.throttle", "must be at least 8kbit")
    for key in ("fee", "per_gb", "per_minute", "overage_per_gb"):
        if getattr(p, key) < 0:
            fail(f"{where}.plan.{key}", "must not be negative")


def resolved_yaml(exp: Experiment) -> str:
    """The fully resolved experiment (defaults filled, topology inline, units written out)."""
    return yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False)
