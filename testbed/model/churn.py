"""Real-world participation in the experiment schema: arrivals, durations, participation
profiles, faults, and how a run ends.

    peers:
      - name: leecher
        count: 40
        arrivals: {kind: poisson, rate: 2/min}       # flash_crowd | poisson | decaying | file
        participation:                                # a profile, or a mix by share
          - {profile: hit_and_run, share: 30%}
          - {profile: full, share: 70%, session: {dist: weibull, shape: 0.38, scale: 42.4m}}
    faults:
      - {at: 30s, kind: crash, host: leecher03}
      - {at: 50s, kind: rejoin, host: leecher03}
    end: all_done                                     # or {duration: 30m}

A duration that varies between peers is a distribution: a plain duration ('10m') is
fixed; otherwise {dist: exponential, mean}, {dist: weibull, shape, scale},
{dist: lognormal, median, sigma} (median = e^mu) or {dist: file, path} (values drawn
from the file's list, one duration a line).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    PlainSerializer,
    PrivateAttr,
    Tag,
)

from testbed import units
from testbed.model.fields import Duration, Percent, Rate, Ref, Strict


def _frequency(value: Any) -> float:
    try:
        return units.parse_frequency(value)
    except units.UnitError as exc:
        raise ValueError(str(exc)) from None


Frequency = Annotated[float, BeforeValidator(_frequency), PlainSerializer(units.fmt_frequency, return_type=str)]


# ------------------------------------------------------------------ distributions

class Fixed(Strict):
    dist: Literal["fixed"] = "fixed"
    value: Duration


class Exponential(Strict):
    dist: Literal["exponential"]
    mean: Duration


class Weibull(Strict):
    """Weibull with shape k and scale lambda: Stutzbach & Rejaie (IMC 2006) fit BitTorrent
    session lengths with k = 0.34-0.59."""

    dist: Literal["weibull"]
    shape: float
    scale: Duration


class Lognormal(Strict):
    """Lognormal with median e^mu and sigma (of the logarithm)."""

    dist: Literal["lognormal"]
    median: Duration
    sigma: float


class FromFile(Strict):
    """Values drawn (with replacement) from a file: one duration a line, # comments allowed."""

    dist: Literal["file"]
    path: str
    _values: tuple[float, ...] = PrivateAttr(default=())   # read while loading the model

    @property
    def values(self) -> tuple[float, ...]:
        return self._values


def _dist_form(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("dist", "fixed"))
    if isinstance(value, Strict):
        return getattr(value, "dist", "fixed")
    return "plain"


def _plain(value: Any) -> Fixed:
    return value if isinstance(value, Fixed) else Fixed(value=value)


Distribution = Annotated[
    Annotated[Fixed, BeforeValidator(_plain), Tag("plain")] | Annotated[Fixed, Tag("fixed")]
    | Annotated[Exponential, Tag("exponential")] | Annotated[Weibull, Tag("weibull")]
    | Annotated[Lognormal, Tag("lognormal")] | Annotated[FromFile, Tag("file")],
    Discriminator(_dist_form)]


# ------------------------------------------------------------------ arrivals

class FlashCrowd(Strict):
    """Every member arrives at once, at `at` (default: when the swarm starts)."""

    kind: Literal["flash_crowd"] = "flash_crowd"
    at: Duration = 0.0


class Poisson(Strict):
    """Arrivals at a constant rate: exponential gaps with mean 1/rate, from `after`."""

    kind: Literal["poisson"]
    rate: Frequency
    after: Duration = 0.0


class Decaying(Strict):
    """Guo et al. (IMC 2005): arrivals to a torrent fall off as rate * exp(-t / tau). At most
    rate * tau arrivals are expected in all; members beyond what the draw gives never arrive."""

    kind: Literal["decaying"]
    rate: Frequency
    tau: Duration
    after: Duration = 0.0


class ArrivalFile(Strict):
    """Arrival times from a file, one duration a line (swarm time), in any order."""

    kind: Literal["file"]
    path: str
    _times: tuple[float, ...] = PrivateAttr(default=())

    @property
    def times(self) -> tuple[float, ...]:
        return self._times


Arrivals = Annotated[FlashCrowd | Poisson | Decaying | ArrivalFile, Discriminator("kind")]


# ------------------------------------------------------------------ participation

class Participation(Strict):
    """What a user does, mapped onto the client knobs every client takes. A profile in
    topologies/participation.yaml is one of these; a group may override any field."""

    description: str = ""
    source: str = ""
    # how long it seeds after completing: forever, stop (leaves at once), a duration or
    # distribution, or until it uploaded `ratio` times the content
    seeding: Literal["forever", "stop"] | None = None
    seed_time: Distribution | None = None
    ratio: float | None = None
    session: Distribution | None = None         # online this long from arrival, whatever its progress
    abort_after: Distribution | None = None     # gives up if not complete this long after arriving
    abort_at: Percent | None = None             # gives up when its download reaches this share
    upload_limit: Rate | None = None            # its client's own upload cap
    upload_share: Percent | None = None         # upload capped to this share of its link's up rate
    connectable: bool | None = None
    online: Distribution | None = None          # intermittent: online this long, ...
    offline: Distribution | None = None         # ... then offline this long (rejoins with its data)
    crash_after: Distribution | None = None     # its client is killed this long after arriving ...
    rejoin_after: Distribution | None = None    # ... and restarted this long after the crash


class ProfileUse(Participation):
    """A profile by name, with any field overridden, and its share of the group in a mix."""

    profile: Ref = "full"
    share: Percent | None = None


def _use(value: Any) -> Any:
    return {"profile": value} if isinstance(value, str) else value


def _uses(value: Any) -> Any:
    return [_use(v) for v in value] if isinstance(value, list) else [_use(value)]


ParticipationMix = Annotated[list[ProfileUse], BeforeValidator(_uses)]


# ------------------------------------------------------------------ faults and the end

class Fault(Strict):
    """One fault at a stated time: crash (the client is killed), stop (it leaves gracefully),
    pause (frozen, no packets) for `for`, rejoin (restarted with the data it had); the tracker
    fails with tracker_down (for `for`, or until the end)."""

    at: Duration
    kind: Literal["crash", "stop", "pause", "rejoin", "tracker_down"]
    host: Ref | None = None
    for_: Duration | None = Field(None, alias="for")

    model_config = Strict.model_config | {"populate_by_name": True}


class EndAfter(Strict):
    duration: Duration


def _end_form(value: Any) -> str:
    return "after" if isinstance(value, (dict, EndAfter)) else "word"


# all_done: the run ends when every peer that arrived is done (completed or left) and no
# arrival is still to come (a closed swarm); {duration: D}: it ends at D (an open system)
End = Annotated[Annotated[Literal["all_done"], Tag("word")] | Annotated[EndAfter, Tag("after")],
                Discriminator(_end_form)]
