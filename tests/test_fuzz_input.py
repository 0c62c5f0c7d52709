"""Fuzzing the input boundary: a bad experiment or study file is refused, and nothing starts.

Each case is one mutation of a valid experiment or study: a wrong type, an unknown or missing
key, an out-of-range value, a bad unit, a broken reference, a broken file (YAML errors,
non-UTF-8, duplicate keys, deep nesting, an alias bomb, a list or scalar), or a broken file
that the experiment names (topology, trace, arrival times). For every case, `testbed validate
FILE`, `testbed run FILE` and, for a study, `testbed study run FILE`:
  - exit with status 2, printing exactly one line on stderr: "testbed: ...", at most 300
    characters, naming the file and the offending key path (a problem of the file itself: the
    file), and no traceback;
  - take at most 10 s (a hang, not speed: cases take milliseconds, and 10 s leaves room for a loaded machine) (under a 1 GiB memory cap, so that a regression cannot exhaust the machine);
  - start nothing: the executor, the study runner, Docker and subprocesses are patched to raise
    Started, so a bad file that gets through fails its case.
The CLI runs in process (testbed.cli.main), so its 550 cases (3 x 130 + 41 + 120) take well under a minute.
"""
from __future__ import annotations

import copy
import math
import re
import resource
import signal
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed import cli

INF, NAN, LONG = math.inf, math.nan, "x" * 400
RAW = "RAW_TOKEN"          # replaced by raw YAML text after dumping

# The valid files every mutation starts from (test_the_unmutated_files_... checks that they are).
BASES = yaml.safe_load("""
simple: {version: 1, name: simple, description: quickstart-like, seed: 42, content: {size: 4MiB}, topology: star,
  seeders: [{name: origin, client: transmission, access: {up: 20mbit, down: 20mbit, queue: 100}}],
  peers: [{name: leecher, count: 8, access: {up: 2mbit, down: 10mbit}}], timeout: 5m}
rich: {name: rich, seed: 3, content: {size: 4MiB, piece_size: 256KiB}, tracker: {site: s1, port: 6969},
  topology: {sites: [s1, s2], core: [{ends: [s1, s2], rate: 100mbit, delay: 5ms}]},
  seeders: [{name: origin, site: s1, access: {up: 20mbit, down: 20mbit, loss: 1%}}],
  peers: [{name: leecher, count: 4, client: libtorrent, site: s2,
           access: {up: 2mbit, down: 10mbit, delay: {up: 5ms, down: 10ms}, plan: {cap: 1GB, period: 30d, fee: 10}},
           behaviour: {upload_limit: 1mbit, max_connections: 20, seeding: {duration: 1m}},
           arrivals: {kind: poisson, rate: 12/min, after: 2s},
           participation: [{profile: hit_and_run, share: 50%}, {profile: full, share: 50%}]}],
  faults: [{at: 10s, kind: crash, host: leecher1}, {at: 20s, kind: rejoin, host: leecher1}],
  end: {duration: 2m}, timeout: 3m, repetitions: 2}
homes: {name: homes, content: {size: 4MiB}, timeout: 5m,
  households: [{name: home, count: 2, access: {up: 1mbit, down: 8mbit, queue: 50}, background: {up: 200kbit}}],
  seeders: [{name: origin, access: {up: 8mbit, down: 8mbit}}],
  peers: [{name: inhome, count: 2, household: home, forward: true},
          {name: far, count: 2, access: {up: 1mbit, down: 8mbit}}]}
traced: {name: traced, content: {size: 4MiB}, topology: topo.yaml, timeout: 5m,
  seeders: [{name: origin, site: a, access: {up: 20mbit, down: 20mbit}}],
  peers: [{name: mobile, count: 3, site: b, arrivals: {kind: file, path: arrivals.txt},
           access: {up_trace: up.mahi, down_trace: down.csv, trace_offset: spread}}]}
topo: {sites: [a, b], core: [{ends: [a, b], rate: 50mbit}]}
study: {version: 1, name: study, seed: 3, repetitions: 2, variants: [
  {name: capped, description: capped, set: {peers: [{name: leecher, participation: bandwidth_shy}]}},
  {name: short, set: {timeout: 4m}, remove: [description]}]}
""")
SIMPLE, TRACED, TOPO = BASES["simple"], BASES["traced"], BASES["topo"]
TRACED_FILES = {"topo.yaml": yaml.safe_dump(TOPO).encode(), "down.csv": b"time,rate\n0,10mbit\n30s,2mbit\n",
                "up.mahi": "\n".join(str(10 * i) for i in range(1, 201)).encode(),
                "arrivals.txt": b"0s\n5s\n# x\n10s\n"}
EXPERIMENTS = [(SIMPLE, {}), (BASES["rich"], {}), (BASES["homes"], {}), (TRACED, TRACED_FILES)]
STUDIES = [({**BASES["study"], "baseline": SIMPLE}, {}),
           ({**BASES["study"], "baseline": "base.yaml"}, {"base.yaml": yaml.safe_dump(SIMPLE).encode()})]


class Case(NamedTuple):
    what: str
    main: str                   # the file on the command line; `files` are written next to it
    files: dict
    key: tuple | None           # the offending key path (None: the file itself)
    doc: dict | None = None     # what `key` is a path of
    refs: tuple = ()            # the named files whose content is bad (naming one of them names the file)

    def __repr__(self) -> str:   # what hypothesis prints for a failing case
        return short(f"Case({self.what!r}, key={loc(self.key) if self.key else None!r})")


# ------------------------------------------------------------------ key paths

MISSING = object()


def short(text: str) -> str:
    """`text` with a run of one character (a 400-character name, 400 digits) written as c*n."""
    return re.sub(r"(.)\1{29,}", lambda m: f"{m.group(1)}*{len(m.group())}", text)


def loc(path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def parse_loc(text: str) -> tuple:
    return tuple(int(i) if i else k for k, i in re.findall(r"(?:^|\.)([^.\[]+)|\[(\d+)\]", text))


def paths(doc, prefix=()):
    """Every key path of `doc`, parents first (not into a variant's free-form `set`)."""
    for k, v in doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ():
        yield prefix + (k,)
        yield from paths(v, prefix + (k,)) if k != "set" else ()


def walk(doc, path):
    """The value at `path`, or MISSING. A single value is its own [0] (`participation: x` is read
    as `[x]`), and a name stands for `{profile: name}`."""
    for p in path:
        if p == 0 and not isinstance(doc, list) or p == "profile" and isinstance(doc, str):
            continue
        if not (isinstance(doc, dict) and p in doc or isinstance(doc, list) and isinstance(p, int) and p < len(doc)):
            return MISSING
        doc = doc[p]
    return doc


def put(doc, path, value, make=("tracker", "behaviour")):
    """A copy of `doc` with `value` at `path` (a missing mapping named in `make` is made)."""
    doc = node = copy.deepcopy(doc)
    for p in path[:-1]:
        node = node.setdefault(p, {}) if make is True or p in make else node[p]
    node[path[-1]] = value
    return doc


def applicable(doc, path) -> bool:
    """`put` can write `path`: its mapping is there, or is a tracker or behaviour it makes."""
    return walk(doc, path[:-1]) is not MISSING or (walk(doc, path[:-2]) is not MISSING
                                                   and path[-2] in ("tracker", "behaviour"))


# ------------------------------------------------------------------ mutations of a document

def kind(v) -> str:
    return {dict: "map", list: "list", bool: "bool", int: "num", float: "num"}.get(type(v), "str")


WRONG = {"map": {"zz": 1}, "list": ["zz"], "num": 12345, "str": "zz?", "bool": True}
ALSO = {"topology": "str map", "seeding": "str map", "participation": "str list map", "end": "str map",  # other forms
        "delay": "str map", "jitter": "str map", "loss": "str map", "up_trace": "str list", "down_trace": "str list",
        "baseline": "str map"}
REQUIRED = re.compile(r"name|content|content\.size|seeders|peers|baseline|variants|variants\[\d+\]\.name"
                      r"|(seeders|peers|households)\[\d+\]\.(name|access)|.*access\.(up|down)|households\[\d+\]"
                      r"\.background\.up|topology\.(sites|core\[\d+\]\.(ends|rate))|faults\[\d+\]\.(at|kind|host)"
                      r"|.*arrivals\.(kind|rate|path)|.*seeding\.duration|end\.duration|.*participation\[\d+\]\.share")
UNITS = {"rate": "up down rate reverse_rate upload_limit download_limit", "size": "size piece_size cap used",
         "duration": "timeout delay jitter at after duration period tau trace_offset", "percent": "loss share"}
UNIT_OF = {"rate": "mbit", "size": "MiB", "duration": "s", "percent": "%", "freq": "/min"}
NON_FINITE = [INF, -INF, NAN, "RAW:1.0e+999", "9" * 400]     # YAML's .inf, .nan and an overflowing float; 400 digits
BAD_UNITS = yaml.safe_load("""
rate: [10, 20mbps, 2MBps, 0.5bit, fast, １０mbit]
size: [16, 16.5, 5mb, 5Mb, lots, 4 MiB MiB]
duration: [300, soon, 5 mins, 1e3s]
percent: [0.5, nan%, inf%, 1e999%, half]
freq: [2, inf/min, nan/min, 1e999/min, 2/fortnight, 2mbit]
""")
# out of range, and broken references (LONG: a name of 400 characters)
VALUES = yaml.safe_load("""{
  "peers[0].count": [0, -3, 1000000], "seeders[0].count": [0, 1000000], "households[0].count": [0, 1000000],
  "tracker.port": [0, -1, 70000], "peers[0].access.queue": [0, -5], "timeout": [-5m, 0s], "repetitions": [0, -1],
  "peers[0].access.up": [0.5bit, -1mbit], "peers[0].access.delay": [-5ms], "peers[0].access.loss": [100%, -1%],
  "content.piece_size": [1GiB, 1000KiB, 8KiB], "content.size": [0B, -5MiB], "version": [0, 2], "shaper": [tc],
  "peers[0].behaviour.upload_limit": [1kbit], "peers[0].behaviour.max_connections": [0],
  "peers[0].behaviour.listen_port": [80, 70000], "households[0].probe": [0.1s],
  "peers[0].behaviour.seeding": [{duration: -1m}, {ratio: 0}, {ratio: .nan}, {ratio: .inf}, sometimes],
  "peers[0].arrivals": [{kind: poisson, rate: 0/min}, {kind: flash_crowd, at: -5s}, {kind: warp},
                        {kind: decaying, rate: 2/min, tau: 0s}, {kind: file, path: missing.txt},
                        {kind: file, path: ../../../../etc/passwd}, {kind: file, path: /etc}],
  "end": [{duration: -1m}, {duration: 10h}, whenever],
  "faults": [[{at: -1s, kind: crash, host: origin}], [{at: 10h, kind: crash, host: origin}],
             [{at: 5s, kind: pause, host: origin}], [{at: 5s, kind: explode, host: origin}],
             [{at: 5s, kind: crash, host: nobody}]],
  "peers[0].access.plan": [{cap: 1GB, period: 1s}, {cap: -1GB}, {at_cap: cut}, {cap: 1GB, fee: -1},
                           {cap: 1GB, fee: .nan}, {cap: 1GB, per_gb: .inf}],
  "peers[0].participation": [{session: {dist: weibull, shape: .nan, scale: 1m}}, {profile: full, share: 30%},
                             {abort_at: 100%}, nosuch, LONG],
  "peers[0].client": [bittorrent9000, Transmission, LONG, клиент], "tracker.site": [nowhere, LONG],
  "peers[0].site": [nowhere], "peers[0].household": [nohome], "peers[0].access.profile": [nosuch, LONG],
  "topology": [nosuch, no.yaml, ../../../../etc/passwd, /etc/shadow, ../../../../etc/passwd.yaml, LONG],
  "peers[0].access.down_trace": [missing.csv, ../../../../etc/passwd, /etc, /nonexistent/trace],
  "policies": [[{segment: nowhere, protocol: {action: block}}]],
  "peers[0].build": [{binary: missing-binary}, {package: /etc/passwd}, {image: x, binary: y}]}""")
VALUES = [(parse_loc(p), LONG if v == "LONG" else v) for p, vs in VALUES.items() for v in vs]


def bad_units(path) -> list:
    """The bad values of the unit the key at `path` takes (none if it takes no unit)."""
    last, parent = path[-1], (path[-2] if len(path) > 1 else None)
    unit = ("percent" if parent == "loss" else "duration") if parent in ("delay", "jitter", "loss") else \
        "freq" if (parent, last) == ("arrivals", "rate") else \
        next((k for k, keys in UNITS.items() if last in keys.split()), None)
    return [] if unit is None or not isinstance(last, str) else \
        BAD_UNITS[unit] + [v + UNIT_OF[unit] if str(v)[0] == "9" else v for v in NON_FINITE]


@st.composite
def doc_mutation(draw, doc: dict, kinds=("type", "unknown", "missing", "value", "unit"), paired=False):
    """(what, mutated doc, offending key path). A study's seed and repetitions override its
    baseline's (`paired`: `doc` is a baseline file), so a baseline's are not mutated."""
    skip = {("seed",), ("repetitions",)} if paired else {("baseline", "seed"), ("baseline", "repetitions")}
    every = [p for p in paths(doc) if not skip & {p[:1], p[:2]}]
    roots = [()] if "baseline" not in doc else [("baseline",)] if isinstance(doc["baseline"], dict) else []

    def wrong(p, r):    # a type the key takes in no form (pydantic reads True as 1: not for a number)
        was, name = kind(walk(doc, p)), str(p[-2] if isinstance(p[-1], int) else p[-1])
        return r != was and r not in ALSO.get(name, "").split() and not (r == "bool" and was == "num")
    options = {
        "type": [(p, r) for p in every for r in WRONG if wrong(p, r)],
        "unknown": [(p + (k,), {"zz": 1}) for p in [(), *every] if isinstance(walk(doc, p), dict) and p[-1:] != ("set",)
                    for k in [*(str(x).capitalize() for x in walk(doc, p)), "Timeout", "zz", LONG, "ключ"]],
        "missing": [(p, None) for p in every if REQUIRED.fullmatch(loc(p).removeprefix("baseline."))],
        "value": [(r + p, v) for r in roots for p, v in VALUES if applicable(walk(doc, r), p)
                  and not skip & {(r + p)[:1], (r + p)[:2]}],
        "unit": [(p, v) for p in every for v in bad_units(p)]}
    how = draw(st.sampled_from([k for k in kinds if options[k]]))
    path, value = draw(st.sampled_from(options[how]))
    value = WRONG[value] if how == "type" else value
    out = put(doc, path, value)
    if how == "missing":
        del walk(out, path[:-1])[path[-1]]
    return f"{how} {loc(path)}: {value!r}", out, path


def dump(doc, raw: str | bytes | None = None) -> bytes:
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode()
    return text if raw is None else text.replace(RAW.encode(), raw if isinstance(raw, bytes) else raw.encode())


def finish(what, doc, path, files, main="exp.yaml") -> Case:
    """Written as `main` (a value 'RAW:...' as raw YAML); for an inline baseline the key is the baseline's."""
    raw = None
    if str(walk(doc, path)).startswith("RAW:"):
        raw, doc = walk(doc, path)[4:], put(doc, path, RAW)
    key, kdoc = (path[1:], doc["baseline"]) if path[:1] == ("baseline",) and len(path) > 1 else (path, doc)
    return Case(what, main, {**files, main: dump(doc, raw)}, key, kdoc)


# ------------------------------------------------------------------ mutations of files

BOMB = "[" + ", ".join(f"&a{i} [" + ", ".join([f"*a{i - 1}" if i else "lol"] * 10) + "]" for i in range(10)) + "]"
IN_VALUE = {"deep nesting": "[" * 3000 + "]" * 3000, "alias bomb": BOMB, "duplicate key inside": "{a: 1, a: 1}",
            "unclosed": "[a, b", "NUL": '"\0"', "bad escape": '"\\q"', "non-UTF-8": b"\xff\xfe"}
WHOLE = {"empty": b"", "only a comment": b"# nothing\n", "a list": b"- 1\n- 2\n", "a scalar": b"just words\n",
         "null": b"null\n", "a number": b"42\n", "non-UTF-8": b"\xff\xfe\x00n\x00a",
         "UTF-16": "name: x\n".encode("utf-16")}
TRACE_KEYS = {"down.csv": ("peers", 0, "access", "down_trace"), "up.mahi": ("peers", 0, "access", "up_trace"),
              "arrivals.txt": ("peers", 0, "arrivals", "path")}
# a named file's bad content and the offending key: the topology's own, or (a file of rows) the key naming the file
NAMED = {"topo.yaml": [(b"\xff\xfe sites: [a]", None), (b"sites: [a, b\n", None), (b"- a\n", None), (b"", None),
                       (b"sites: []\n", ("sites",)), (b"Sites: [a, b]\n", ("Sites",)), (b"sites: a\n", ("sites",)),
                       (b"generator: isp\nisps: []\n", ("isps",))]
         + [(dump(put(TOPO, ("core", 0, k), v)), ("core", 0, k)) for k, v in [
             ("ends", ["a", "zz"]), ("rate", "0.5bit"), ("rate", "20mbps"), ("rate", 12345), ("queue", 0),
             ("rate", "9" * 400 + "mbit"), ("delay", "-5ms")]],
         "down.csv": [b"0,10mbit\n\xff\n", b"0,10mbit\ninf,2mbit\n", b"0,10mbit\nnan,2mbit\n", b"0,nan\n",
                      b"0,1e999\n", b"0,1mbit\n" + b"9" * 400 + b",2mbit\n", b"-5,1mbit\n0,2mbit\n", b"0,-1mbit\n",
                      b"", b"0,1mbit,9\n"],
         "up.mahi": [b"\xff\xfe\n", b"-5\n10\n", b"inf\n", b"10\n5\n", b"0\n", b"", b"9" * 40 + b"\n", b"1.5\n"],
         "arrivals.txt": [b"0s\n\xff\n", b"-5s\n", b"9" * 400 + b"s\n", b"soon\n", b"", b"\0\n", b"1e999s\n", b"5\n"]}
NAMED = [(n, c if isinstance(c, tuple) else (c, TRACE_KEYS[n])) for n, cs in NAMED.items() for c in cs]


@st.composite
def file_mutation(draw, doc: dict):
    """(what, bytes): the file broken as YAML or as a whole, or a value in it."""
    text = dump(doc)
    whole = {**WHOLE, "duplicate top key": text + text.splitlines(keepends=True)[0], "tab indent":
             text.replace(b"\n  ", b"\n\t", 1), "unclosed flow": text + b"peers: [unclosed\n"}
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(whole)))
        return name, whole[name]
    path = draw(st.sampled_from([p for p in paths(doc) if p[-1] in ("size", "description", "client", "name")]))
    name = draw(st.sampled_from(sorted(IN_VALUE)))
    return f"{name} at {loc(path)}", dump(put(doc, path, RAW), IN_VALUE[name])


@st.composite
def experiment_cases(draw, kinds):
    if kinds == "named":
        name, (content, key) = draw(st.sampled_from(NAMED))
        return Case(f"traced, {name}: {content[:60]!r}", "exp.yaml",
                    {**TRACED_FILES, name: content, "exp.yaml": dump(TRACED)}, key,
                    TOPO if name == "topo.yaml" else TRACED, refs=(name,))
    base, files = draw(st.sampled_from(EXPERIMENTS))
    if kinds == "files":
        what, text = draw(file_mutation(base))
        return Case(f"{base['name']}, {what}", "exp.yaml", {**files, "exp.yaml": text}, None)
    what, doc, path = draw(doc_mutation(base, kinds))
    return finish(f"{base['name']}, {what}", doc, path, files)


STUDY_VALUES = ([(("repetitions",), v) for v in (0, -1, 10**6)] + [(("variants",), []), (("version",), 2)]
                + [(("variants", 1, "name"), v) for v in ("capped", "baseline", "Bad Name!", LONG)]
                + [(("baseline_name",), "Base Line"), (("variants", 0, "set", "seed"), 5)]
                + [(("variants", 1, "remove"), [v]) for v in ("nosuch", "peers.nosuch", "content.size.deeper")]
                + [(("baseline",), v) for v in ("no.yaml", "../../../../etc/passwd", "/etc/shadow", "/etc", LONG)])
SET_VALUES = [(p, v) for p, v in VALUES if p[0] in ("peers", "seeders", "timeout", "content", "end", "faults",
                                                   "tracker")]


@st.composite
def study_cases(draw):
    """A study with a bad key or value of its own, a bad baseline (inline or its file), a variant
    that sets a bad value, or a broken file."""
    study, files = draw(st.sampled_from(STUDIES))
    label = "study of base.yaml" if files else "study"
    how = draw(st.sampled_from(["study", "baseline", "set", "file", "value"]))
    if how == "file":
        what, text = draw(file_mutation(study))
        return Case(f"{label}, {what}", "study.yaml", {**files, "study.yaml": text}, None)
    if how == "baseline" and files:
        what, doc, path = draw(doc_mutation(SIMPLE, paired=True))
        case = finish(f"{label}, base.yaml: {what}", doc, path, {}, "base.yaml")
        return case._replace(main="study.yaml", files={**case.files, "study.yaml": dump(study)})
    if how == "set":       # list entries merge by name: the variant's peers[0] is the baseline's
        path, value = draw(st.sampled_from(SET_VALUES))
        entry = put({"name": SIMPLE[path[0]][0]["name"]}, path[2:], value, True) if path[0] in ("peers", "seeders") \
            else put({}, path[1:], value, True) if len(path) > 1 else value
        study = put(study, ("variants", 0, "set", path[0]), [entry] if path[0] in ("peers", "seeders") else entry)
        return Case(f"{label}, set {loc(path)}: {value!r}", "study.yaml", {**files, "study.yaml": dump(study)},
                    path, put(SIMPLE, path, value))
    if how == "value":
        path, value = draw(st.sampled_from(STUDY_VALUES))
        key = ("variants",) if value in ("capped", "baseline") else path      # a name used twice: the list
        return Case(f"{label}, {loc(path)}: {value!r}", "study.yaml",
                    {**files, "study.yaml": dump(put(study, path, value))}, key, study)
    what, doc, path = draw(doc_mutation(study))
    return finish(f"{label}, {what}", doc, path, files, "study.yaml")


# ------------------------------------------------------------------ running the CLI, sealed

class Started(BaseException):
    """Something was started: a bad file got through. (Not an Exception: main() cannot swallow it.)"""


@pytest.fixture
def sealed(monkeypatch, tmp_path):
    def starter(name):
        def start(*args, **kwargs):
            raise Started(name)
        return start
    for target in ("docker.from_env", "docker.DockerClient", "docker.APIClient", "subprocess.Popen",
                   "testbed.run.run", "testbed.run.study.open_study", "testbed.run.study.run_study"):
        monkeypatch.setattr(target, starter(target))
    monkeypatch.setattr(cli, "tempfile", SimpleNamespace(gettempdir=lambda: str(tmp_path)))     # crash logs
    handler = signal.getsignal(signal.SIGTERM)     # `run` sets its own once the file got through
    yield
    signal.signal(signal.SIGTERM, handler)


def call(argv, capsys):
    """(exit code or 'started: ...', stdout, stderr, seconds) of `testbed ARGV`, under a memory cap."""
    capsys.readouterr()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    vm = int(re.search(r"VmSize:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, hard))
    t = time.monotonic()
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    except Started as exc:
        code = f"started: {exc}"
    finally:
        took = time.monotonic() - t
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    return (code, *capsys.readouterr(), took)


def names_key(line: str, key: tuple, doc) -> bool:
    """The line names `key` (or a key below it that the file has or that is missing from a mapping
    it has), or a mapping above it and then the key's name. A long key is named by its start:
    a message quotes at most 40 characters of any key or value."""
    if isinstance(key[-1], str) and len(key[-1]) > 40:
        return (loc(key[:-1]) + "." if len(key) > 1 else "") + key[-1][:30] in line
    for m in re.finditer(re.escape(loc(key)) + r"((?:\.\w+|\[\d+\])*)(?!\w)", line):
        below = key + parse_loc(m.group(1).lstrip("."))
        if walk(doc, below) is not MISSING or isinstance(walk(doc, below[:-1]), dict):
            return True
    return isinstance(key[-1], str) and any(
        re.search(re.escape(loc(key[:n])) + r"(?![\w.\[]).*(?<!\w)" + re.escape(key[-1]) + r"(?!\w)", line)
        for n in range(1, len(key)))


def refused(case: Case, capsys, study: bool = False) -> None:
    with tempfile.TemporaryDirectory(prefix="fz") as d:
        for name, content in case.files.items():
            (Path(d) / name).write_bytes(content)
        path = str(Path(d) / case.main)
        commands = [["validate", path], ["run", path, "--results", f"{d}/results"]]
        for argv in commands + ([["study", "run", path, "--out", f"{d}/out"]] if study else []):
            code, out, err, took = call(argv, capsys)
            command = " ".join(argv[:1 + (argv[0] == "study")])
            said = short(f"`testbed {command}` on {case.what}: exit {code}, stderr {err[:600]!r}")
            lines = err.splitlines()
            assert "Traceback" not in out + err, said
            assert code == 2, said
            assert len(lines) == 1 and lines[0].startswith("testbed: "), said
            assert len(lines[0]) <= 300, f"too long: {said}"
            assert path in lines[0] or any(r in lines[0] for r in case.refs), f"names no file: {said}"
            if case.key is not None and not (study and argv[0] == "run"):     # `run` on a study: not an experiment
                assert names_key(lines[0], case.key, case.doc), f"does not name {loc(case.key)}: {said}"
            assert took <= 10.0, f"took {took:.1f}s: {said}"


def fuzz(n: int) -> settings:
    """n cases; a case's three commands at 2 s each fit the deadline; no example database is written."""
    return settings(max_examples=n, deadline=timedelta(seconds=8), database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ------------------------------------------------------------------ the properties

@pytest.mark.parametrize("base,files", EXPERIMENTS + STUDIES)
def test_the_unmutated_files_are_valid_and_would_start(base, files, sealed, capsys):
    """The control: each file the mutations start from validates, and `run` reaches the (patched) executor."""
    with tempfile.TemporaryDirectory(prefix="fz") as d:
        for name, content in {**files, "f.yaml": dump(base)}.items():
            (Path(d) / name).write_bytes(content)
        assert call(["validate", f"{d}/f.yaml"], capsys)[0] == 0
        run = ["study", "run", f"{d}/f.yaml", "--out", f"{d}/out"] if "baseline" in base else \
            ["run", f"{d}/f.yaml", "--results", d]
        assert str(call(run, capsys)[0]).startswith("started: ")


@pytest.mark.parametrize("kinds", [("type", "unknown", "missing"), ("value", "unit"), "files", "named"])
@fuzz(130)      # "named" has 41 cases, which hypothesis exhausts: 3 x 130 + 41
@given(data=st.data())
def test_experiments(kinds, data, sealed, capsys):
    refused(data.draw(experiment_cases(kinds), label="case"), capsys)


@fuzz(120)
@given(case=study_cases())
def test_studies(case, sealed, capsys):
    refused(case, capsys, study=True)
