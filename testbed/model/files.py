"""Files the model reads, and the one-sentence messages for what does not validate."""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from testbed import textfile, units
from testbed.textfile import cut
from testbed.errors import InputError
from testbed.model.fields import Strict

# ---------------------------------------------------------------- error messages

def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


# How pydantic names the branch of a union or the step of a validator chain in an error's
# location ('list[PeerGroup]', 'function-after[...]', 'str'): not keys the user wrote.
_INTERNAL = re.compile(r"(str|int|float|bool|none|[a-z-]+\[.*\])")
_MISSING = object()


def _model_names() -> set[str]:
    names, todo = set(), [Strict]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


def _user_loc(loc: tuple, data: Any = _MISSING, keep_last: bool = False) -> tuple:
    """The key path as the user wrote it. pydantic puts in the names of union branches
    ('plain', 'poisson', 'Topology', 'function-after[...]'): with the user's data at hand, a part
    that is not a key or index of it is one of those; without, they are recognised by name.
    The last part of an unknown or missing key is the user's, whatever it looks like."""
    if data is _MISSING:
        models = _model_names()
        last = len(loc) - 1 if keep_last else len(loc)
        return tuple(p for i, p in enumerate(loc)
                     if i >= last or not (isinstance(p, str) and (p in models or _INTERNAL.fullmatch(p))))
    out, node = [], data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            out.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        elif keep_last and i == len(loc) - 1:
            out.append(part)
    return tuple(out)


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


def _sentence(source: str, err: ValidationError, model: type[BaseModel] | None = None, data: Any = _MISSING) -> str:
    # A misspelt key shows up twice: as unknown, and as the real key missing. Name the
    # unknown one, which is what the user typed.
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    loc = _user_loc(first["loc"], data, keep_last=first["type"] in ("extra_forbidden", "missing"))
    msg = first["msg"].removeprefix("Value error, ")
    side = re.match(r"\[(up|down)\] ", msg)          # a per-direction value names its direction
    if side:
        loc, msg = (*loc, side.group(1)), msg[side.end():]
    where = _loc(tuple(cut(p) if isinstance(p, str) else p for p in loc)) or "(top level)"
    if first["type"] == "extra_forbidden":
        missing = [e["loc"][-1] for e in errors if e["type"] == "missing" and e["loc"][:-1] == first["loc"][:-1]]
        close = difflib.get_close_matches(str(first["loc"][-1]), [str(m) for m in missing], n=1) or \
            difflib.get_close_matches(str(first["loc"][-1]), sorted(_field_names(model)), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{source}: unknown key '{where}'{hint}"
    if first["type"] == "missing":
        return f"{source}: missing required key '{where}'"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{source}: {where}: {msg}{more}"


def validated(model: type[BaseModel], data: Any, source: str, what: str):
    """`data` as a `model` (an experiment, a study), or one sentence saying what is wrong."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: the {what} must be a mapping of keys, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputError(_sentence(source, exc, model, data)) from None


# ---------------------------------------------------------------- loading

TOPOLOGY_DIR = Path(__file__).resolve().parents[2] / "topologies"


MAX_DEPTH = 64               # nesting levels: an experiment uses about 6
MAX_VALUES = 100_000         # values once aliases are expanded: a 150-peer experiment has ~2000


class _Refused(yaml.YAMLError):
    """YAML the testbed does not read: the message and where."""

    def __init__(self, message: str, mark) -> None:
        super().__init__(message)
        self.problem, self.problem_mark = message, mark


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, refusing what it would accept silently or choke on: a key written
    twice (the last would win), nesting deeper than MAX_DEPTH (the composer recurses), and
    aliases that expand to more than MAX_VALUES values (a 'billion laughs' costs nothing to
    load, but everything that walks the result would expand it). PyYAML offers no option for
    any of these, hence a subclass."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set())
        _duplicate_keys(node, set())
        return self.construct_document(node)



def _duplicate_keys(node, seen: set[int]) -> None:
    """A key written twice in one mapping, as the user wrote it: checked on the composed nodes,
    before the constructor rewrites merge keys ('<<') in place. Keys compare by tag and value,
    so `1:` and `"1":` differ, as they do once constructed."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], Any] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                k = (key.tag, key.value)
                if k in first:
                    raise _Refused(f"key '{cut(key.value)}' is written twice (first at line {first[k].line + 1}); "
                                   "the second would silently win", key.start_mark)
                first[k] = key.start_mark
            _duplicate_keys(value, seen)
    elif isinstance(node, yaml.SequenceNode):
        for child in node.value:
            _duplicate_keys(child, seen)


def _expanded_size(node, memo: dict[int, int], open_: set[int]) -> int:
    """How many values `node` stands for once every alias is expanded (raises past MAX_VALUES
    or on an alias to an enclosing node)."""
    if id(node) in memo:
        return memo[id(node)]
    if id(node) in open_:
        raise _Refused("an alias refers to a value that contains it", node.start_mark)
    open_.add(id(node))
    n = 1
    if isinstance(node, yaml.SequenceNode):
        n += sum(_expanded_size(child, memo, open_) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        n += sum(_expanded_size(k, memo, open_) + _expanded_size(v, memo, open_) for k, v in node.value)
    open_.discard(id(node))
    if n > MAX_VALUES:
        raise _Refused(f"aliases expand this to more than {MAX_VALUES} values", node.start_mark)
    memo[id(node)] = n
    return n


def read_input(path: Path, what: str) -> str:
    """The text of a file a user named, or one sentence saying why it cannot be read."""
    try:
        return textfile.read_text(path)
    except textfile.FileProblem as exc:
        if str(exc) == textfile.MISSING:
            raise InputError(f"{path}: no such {what} file") from None
        raise InputError(f"{path}: {what} file: {exc}") from None


def _read_yaml(path: Path, what: str) -> Any:
    text = read_input(path, what)
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None


def read_durations(ref: str, where: str, source: str, base_dir: Path | None) -> tuple[str, tuple[float, ...]]:
    """A file of durations, one a line ('# ...' comments and blank lines skipped): its absolute
    path and its values in seconds."""
    path = (base_dir or Path.cwd()) / ref
    try:
        text = textfile.read_text(path)
    except textfile.FileProblem as exc:
        raise InputError(f"{source}: {where}: {path}: {exc}") from None
    values = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            values.append(units.parse_duration(line))
        except units.UnitError as exc:
            # a long line is not quoted: the file may not be one of durations at all (/etc/shadow)
            why = exc if len(line) <= 24 else "not a duration (e.g. '40ms')"
            raise InputError(f"{source}: {where}: {path} line {n}: {why}") from None
        if values[-1] < 0:
            raise InputError(f"{source}: {where}: {path} line {n}: must not be negative")
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
