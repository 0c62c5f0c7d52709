"""Participation profiles (topologies/participation.yaml) and the files a group's churn
names, resolved while loading, so that the plan reads nothing.

Each group's `participation` becomes a list of complete profile uses: the named profile's
fields, with every field the group wrote on top, and its share of the group.
"""
from __future__ import annotations

import difflib
from pathlib import Path


from testbed.errors import InputError
from testbed.textfile import excerpt
from testbed.model.churn import ArrivalFile, FromFile, Participation, ProfileUse
from testbed.model.files import TOPOLOGY_DIR, read_durations, read_library
from testbed.model.schema import Experiment, PeerGroup

PARTICIPATION_FILE = TOPOLOGY_DIR / "participation.yaml"
SEEDING_ENDS = {"seeding", "seed_time", "ratio"}
DISTRIBUTED = ("seed_time", "session", "abort_after", "online", "offline", "crash_after", "rejoin_after")


def participation_profiles() -> dict[str, Participation]:
    """The named participation profiles of topologies/participation.yaml."""
    return read_library(PARTICIPATION_FILE, Participation, "participation profile")


def _use(use: ProfileUse, library: dict[str, Participation], where: str, source: str) -> ProfileUse:
    base = library.get(use.profile)
    if base is None:
        close = difflib.get_close_matches(use.profile, list(library), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(library)})"
        raise InputError(f"{source}: {where}.profile: unknown participation profile {excerpt(use.profile)}{hint}")
    written = {k: getattr(use, k) for k in use.model_fields_set if k not in ("profile", "share")}
    if written.keys() & SEEDING_ENDS:      # seeding ends one way: what the group wrote replaces the profile's
        written = {k: None for k in SEEDING_ENDS} | written
    fields = {k: getattr(base, k) for k in Participation.model_fields} | written
    return ProfileUse.model_construct(_fields_set=set(fields) | {"profile", "share"} & use.model_fields_set,
                                      profile=use.profile, share=use.share, **fields)


def _read_files(use: ProfileUse, where: str, source: str, base_dir: Path | None) -> ProfileUse:
    update = {}
    for key in DISTRIBUTED:
        d = getattr(use, key)
        if isinstance(d, FromFile):
            path, values = read_durations(d.path, f"{where}.{key}.path", source, base_dir)
            loaded = FromFile(dist="file", path=path)
            loaded._values = values
            update[key] = loaded
    return use.model_copy(update=update) if update else use


def _group(g: PeerGroup, where: str, source: str, base_dir: Path | None,
           library: dict[str, Participation]) -> PeerGroup:
    update = {}
    if isinstance(g.arrivals, ArrivalFile):
        path, times = read_durations(g.arrivals.path, f"{where}.arrivals.path", source, base_dir)
        arrivals = ArrivalFile(kind="file", path=path)
        arrivals._times = times
        update["arrivals"] = arrivals
    if g.participation:
        update["participation"] = [
            _read_files(_use(u, library, f"{where}.participation[{i}]", source),
                        f"{where}.participation[{i}]", source, base_dir)
            for i, u in enumerate(g.participation)]
    return g.model_copy(update=update) if update else g


def resolve_participation(exp: Experiment, source: str, base_dir: Path | None) -> Experiment:
    library = participation_profiles() if any(g.participation for _, g in exp.groups()) else {}
    return exp.model_copy(update={
        key: [_group(g, f"{key}[{i}]", source, base_dir, library) for i, g in enumerate(getattr(exp, key))]
        for key in ("seeders", "peers")})
