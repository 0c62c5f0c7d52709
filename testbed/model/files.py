"""Files the model reads, and the one-sentence messages for what does not validate."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from testbed import units
from testbed.errors import InputError

# ---------------------------------------------------------------- error messages

def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _field_names(model: type[BaseModel] | None) -> set[str]:
    """Every key the schema knows, at any depth (for 'did you mean' when nothing is missing)."""
    names: set[str] = set()
    todo, seen = [model] if model else [], set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        for name, f in m.model_fields.items():
            names.add(f.alias or name)
            stack = [f.annotation]
            while stack:
                t = stack.pop()
                if isinstance(t, type) and issubclass(t, BaseModel):
                    todo.append(t)
                stack.extend(getattr(t, "__args__", ()) or ())      # unions, lists, Annotated
    return names


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
        close = difflib.get_close_matches(str(first["loc"][-1]), [str(m) for m in missing], n=1) or \
            difflib.get_close_matches(str(first["loc"][-1]), sorted(_field_names(model)), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{source}: unknown key '{where}'{hint}"
    if first["type"] == "missing":
        return f"{source}: missing required key '{where}'"
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{source}: {where}: {msg}{more}"


def validated(model: type[BaseModel], data: Any, source: str, what: str):
    """`data` as a `model` (an experiment, a study), or one sentence saying what is wrong."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: the {what} must be a mapping of keys, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputError(_sentence(source, exc, model)) from None


# ---------------------------------------------------------------- loading

TOPOLOGY_DIR = Path(__file__).resolve().parents[2] / "topologies"


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


def read_durations(ref: str, where: str, source: str, base_dir: Path | None) -> tuple[str, tuple[float, ...]]:
    """A file of durations, one a line ('# ...' comments and blank lines skipped): its absolute
    path and its values in seconds."""
    path = (base_dir or Path.cwd()) / ref
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"{source}: {where}: cannot read {path} ({exc.strerror})") from None
    values = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            values.append(units.parse_duration(line))
        except units.UnitError as exc:
            raise InputError(f"{source}: {where}: {path} line {n}: {exc}") from None
    if not values:
        raise InputError(f"{source}: {where}: {path} holds no duration")
    return str(path.resolve()), tuple(values)


def read_library(path: Path, model: type[BaseModel], what: str) -> dict:
    """A file of named entries (link or participation profiles), each validated as `model`."""
    data = _read_yaml(path, what)
    try:
        return {str(k): model.model_validate(v) for k, v in (data or {}).items()}
    except ValidationError as exc:
        raise InputError(_sentence(str(path), exc)) from None
