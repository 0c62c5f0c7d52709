"""Typed fields with units, shared by every part of the experiment schema.

Units are parsed by testbed.units (one place); a field serialises back to the unit
written out, so the resolved experiment round-trips.
"""
from __future__ import annotations

from typing import Annotated, Any, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, StringConstraints

from testbed import units
from testbed.textfile import excerpt


def _unit(parser, formatter):
    def parse(value: Any):
        try:
            return parser(value)
        except units.UnitError as exc:
            raise ValueError(str(exc)) from None
    return [BeforeValidator(parse), PlainSerializer(formatter, return_type=str)]


# A reference to something named elsewhere (a site, client, household, profile, host): long
# enough for any real name, short enough that an error quoting it stays one readable line.
Ref = Annotated[str, StringConstraints(max_length=64)]

Rate = Annotated[float, *_unit(units.parse_rate, units.exact_rate)]
Size = Annotated[int, *_unit(units.parse_size, units.exact_size)]
Duration = Annotated[float, *_unit(units.parse_duration, units.exact_duration)]
Percent = Annotated[float, *_unit(units.parse_percent, units.fmt_percent)]


class Directions(NamedTuple):
    """A value for each direction of an access link: up (host to network) and down."""

    up: float
    down: float


def _directional(parser, formatter):
    """One value for both directions ('30ms') or one each ({up: 30ms, down: 10ms})."""
    def one(value: Any, side: str = "") -> float:
        try:
            return parser(value)
        except units.UnitError as exc:
            # '[up] ': the message's key path gains the direction (files._sentence)
            raise ValueError(f"[{side}] {exc}" if side else str(exc)) from None

    def parse(value: Any) -> Directions:
        if isinstance(value, Directions):
            return value
        if isinstance(value, dict):
            if set(value) != {"up", "down"}:
                raise ValueError(f"give one value, or both 'up' and 'down' (got {excerpt(', '.join(map(str, value)))})")
            return Directions(one(value["up"], "up"), one(value["down"], "down"))
        v = one(value)
        return Directions(v, v)

    def write(d: Directions) -> Any:
        return formatter(d.up) if d.up == d.down else {"up": formatter(d.up), "down": formatter(d.down)}
    return [BeforeValidator(parse), PlainSerializer(write)]


DirDuration = Annotated[Any, *_directional(units.parse_duration, units.exact_duration)]
DirPercent = Annotated[Any, *_directional(units.parse_percent, units.fmt_percent)]
NO_IMPAIRMENT = Directions(0.0, 0.0)


class Strict(BaseModel):
    # allow_inf_nan: YAML reads .inf and .nan as numbers, and a fee, ratio or weight of NaN would
    # pass every range check (NaN compares false)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

