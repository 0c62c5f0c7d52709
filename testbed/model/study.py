"""Study files: a baseline experiment, its variants, and the repetitions that pair them.

    version: 1
    name: bandwidth-shy
    seed: 7                      # each repetition's seed is derived from it
    repetitions: 5
    baseline: ../quickstart.yaml # an experiment file (relative to the study), or inline
    variants:
      - name: free-riders
        description: a third of the leechers upload nothing
        set:                     # merged into the baseline, then validated as an experiment
          peers:
            - name: leecher      # list entries with a name merge into the entry of that name
              count: 6
            - name: freerider    # a new name is appended
              count: 3
              ...
        remove: [faults]         # keys (dotted, or 'peers.NAME') taken out before merging

Each variant is validated exactly as an experiment is: a study that loads is a study whose
every run can be planned. Nothing here touches the machine.

Paired design: repetition r of every variant (the baseline included) runs with one seed,
derived from (study seed, r): the same content, and the same draws for every purpose the
variants have in common (arrivals of a group of the same name, session lengths, profile
assignment, impairments), so that a difference between variants is measured on the same
draws rather than on two independent ones.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from testbed import textfile
from testbed.errors import InputError
from testbed.textfile import excerpt
from testbed.model.fields import Strict
from testbed.model.files import _read_yaml, validated
from testbed.model.load import parse_experiment
from testbed.model.repro import Reproduces, check as check_claims
from testbed.model.schema import Experiment

BASELINE = "baseline"
NAME = r"^[a-z0-9][a-z0-9_-]{0,23}$"


class Variant(Strict):
    name: str = Field(pattern=NAME)
    description: str = ""
    set: dict[str, Any] = {}
    remove: list[str] = []


class Study(Strict):
    version: Literal[1] = 1
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
    description: str = ""
    seed: int = 1
    repetitions: int = Field(default=5, ge=1, le=1000)
    baseline: str | dict[str, Any]
    baseline_name: str = Field(default=BASELINE, pattern=NAME)   # how reports call the baseline
    variants: list[Variant] = Field(min_length=1)
    reproduces: Reproduces | None = None   # a reproduction: the paper and its claims (see model/repro.py)


@dataclass(frozen=True)
class LoadedStudy:
    study: Study
    source: str
    # the baseline first, then each variant: (name, description, experiment mapping, experiment)
    arms: tuple[tuple[str, str, dict, Experiment], ...]
    digest: str      # of the resolved study: a study directory resumes only the same study

    @property
    def names(self) -> list[str]:
        return [a[0] for a in self.arms]

    def arm(self, name: str) -> tuple[str, str, dict, Experiment]:
        return next(a for a in self.arms if a[0] == name)


def merge(base: Any, over: Any) -> Any:
    """`over` merged into `base`: mappings key by key; lists of named mappings entry by entry
    (by `name`, new names appended); anything else replaced. Written here because the merge by
    name (a group, a household) is what a variant means and no YAML library merges lists so."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(over, list) and _named(base) and _named(over):
        out = [copy.deepcopy(x) for x in base]
        index = {x["name"]: i for i, x in enumerate(out)}
        for entry in over:
            if entry["name"] in index:
                out[index[entry["name"]]] = merge(out[index[entry["name"]]], entry)
            else:
                out.append(copy.deepcopy(entry))
        return out
    return copy.deepcopy(over)


def _named(xs: list) -> bool:
    return all(isinstance(x, dict) and isinstance(x.get("name"), str) for x in xs)


def remove(data: dict, path: str, where: str) -> dict:
    """`data` without the key at the dotted path; 'peers.NAME' removes that named entry."""
    head, _, rest = path.partition(".")
    if head not in data:
        raise InputError(f"{where}: '{path}' names no key of the baseline")
    out = dict(data)
    if not rest:
        del out[head]
        return out
    value = data[head]
    if isinstance(value, list) and _named(value):
        name, _, deeper = rest.partition(".")
        if name not in {x["name"] for x in value}:
            raise InputError(f"{where}: '{path}': the baseline has no {head} entry named '{name}'")
        out[head] = [x if x["name"] != name else remove(x, deeper, where) for x in value if x["name"] != name
                     or deeper]
        return out
    if not isinstance(value, dict):
        raise InputError(f"{where}: '{path}': {head} is not a mapping")
    out[head] = remove(value, rest, where)
    return out


def parse_study(data: Any, source: str, base_dir: Path) -> LoadedStudy:
    study = validated(Study, data, source, "study")
    names = [study.baseline_name, *(v.name for v in study.variants)]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise InputError(f"{source}: variants: the name '{dup}' is used twice (the baseline is "
                         f"'{study.baseline_name}')")
    if isinstance(study.baseline, str):
        path = base_dir / study.baseline
        if not textfile.is_file(path):
            raise InputError(f"{source}: baseline: no such experiment file {excerpt(str(path))}")
        base, exp_dir = _read_yaml(path, "experiment"), path.parent
        if not isinstance(base, dict):
            raise InputError(f"{source}: baseline: {excerpt(study.baseline)} is not an experiment (a mapping of keys)")
    else:
        base, exp_dir = study.baseline, base_dir
    arms = []
    for i, (name, desc, data_) in enumerate([(study.baseline_name, "the controlled baseline", base),
                                             *((v.name, v.description, _variant(base, v, f"{source}: "
                                                f"variants[{i}] ({v.name})")) for i, v in enumerate(study.variants))]):
        where = f"{source}: baseline" if i == 0 else f"{source}: variant '{name}'"
        # the study's seed and repetitions rule: a variant cannot unpair itself
        data_ = {**data_, "seed": study.seed, "repetitions": study.repetitions}
        arms.append((name, desc, data_, parse_experiment(data_, where, exp_dir)))
    if study.reproduces:
        check_claims(study.reproduces, {a[0]: {g.name for _, g in a[3].groups()} for a in arms},
                     f"{source}: reproduces")
    # of the resolved experiments: a changed trace path, topology file or build's sha256 counts;
    # not of the claims, which judge the runs and do not make them
    resolved = [study.model_dump(mode="json", exclude={"reproduces"}), [a[3].model_dump(mode="json") for a in arms]]
    digest = hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return LoadedStudy(study, source, tuple(arms), digest)


def _variant(base: dict, v: Variant, where: str) -> dict:
    data = base
    for path in v.remove:
        data = remove(data, path, f"{where}.remove")
    for key in ("seed", "repetitions"):
        if key in v.set:
            raise InputError(f"{where}.set.{key}: the study sets every variant's {key} (paired design)")
    return merge(data, v.set)


def load_study(path: str | Path) -> LoadedStudy:
    path = Path(path)
    return parse_study(_read_yaml(path, "study"), str(path), path.parent)


def is_study(path: str | Path) -> bool:
    """A YAML file with `baseline:` or `variants:` is a study (one without the other is a study
    missing a key); anything else an experiment."""
    try:
        data = _read_yaml(Path(path), "experiment")
    except InputError:
        return False
    return isinstance(data, dict) and ("baseline" in data or "variants" in data)
