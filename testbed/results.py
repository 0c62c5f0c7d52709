"""The results directory: the contract that report, comparison and CI read.

results/<run_id>/
  experiment.yaml   the fully resolved experiment
  manifest.json     testbed version and commit, images, kernel, tc/netem, seed, host facts
  events.jsonl      one JSON object per line, appended as things happen (time: unix seconds;
                    t: seconds since the swarm started, negative during the bring-up)
  samples.csv       per second, per peer: client-reported and interface-counted bytes
                    (t: when the client answered, t_if: when the counters were read),
                    established TCP connections accepted (tcp_in) and dialed (tcp_out), and
                    how many carried a 16 KiB block up / down in the interval, and the
                    bytes in their send queues
  meter.csv         per second: IP bytes and packets up and down since the swarm started, of
                    each peer (scope 'peer', from its access link) and each core link
                    (scope 'segment', name 'a-b': up is a -> b), and each home's access link
                    (scope 'household', name: its router), what a carrier would count
  policy.csv        each mark and unmark of a segment's congestion management (RFC 6057)
  probes.csv        each home router's pings to the internet server: RTT under load
  households.json   each home: its link, bill, clients, ports each client listens on and
                    which are forwarded, RTT percentiles, protocol-policy counters
  plan.json         the plan of the run: hosts, links, what each peer's user does, the bound
  timeline.csv      every planned event (arrive, leave, crash, pause, set_rate, ...), written
                    before anything starts
  swarm.csv         per second: peers online, seeds and leechers online, paused, offline,
                    crashed, gone, and the distributed copies among the peers online
  pieces.csv        a shard's only (a swarm split over workers): per second, per piece, how
                    many of its peers online hold it, for the merge's availability
  host.csv          per second: the machine's CPUs busy (share of all cores), iowait, the
                    testbed process's own CPU (one core = 1), memory available
  links.csv         each rate an access link was set to while the run went on (a trace's
                    steps, a carrier's throttle or cut), with its cause
  delayer-stats.json  the userspace delay element's counters per receiving host (if used)
  summary.json      status, t_min_s, per-peer outcome and bill (written last; partial on failure)
  hosts/<name>/     each host's client configuration and logs
Files that are replaced are written atomically (temp file + rename). Every `t` in every file
counts seconds from one origin, the swarm's start (the sampler's first tick); every peer is
keyed by its host name. docs/results.md is the data dictionary: every column with its unit.
"""
from __future__ import annotations

import csv
import json
import os
import threading
import time
from pathlib import Path

# the version of this contract, in manifest.json and summary.json; raised when a file or a
# column changes meaning (2: samples' rate_*_Bps and tcp_send_queue_bytes, events' t from the
# swarm's start, studies)
FORMAT_VERSION = 2
SAMPLE_FIELDS = ["t", "t_if", "peer", "progress", "rate_up_Bps", "rate_down_Bps", "client_bytes_up", "client_bytes_down",
                 "if_bytes_up", "if_bytes_down", "peers", "tcp_in", "tcp_out", "tcp_uploading", "tcp_downloading",
                 "tcp_send_queue_bytes", "utp_flows", "utp_uploading", "utp_downloading"]
METER_FIELDS = ["t", "scope", "name", "ip_bytes_up", "ip_bytes_down", "packets_up", "packets_down"]
LINK_FIELDS = ["t", "host", "direction", "rate_bps", "cause"]
POLICY_FIELDS = ["t", "segment", "host", "direction", "action", "user_share", "port_util"]
PROBE_FIELDS = ["t", "home", "seq", "rtt_ms"]
HOST_FIELDS = ["t", "cpu_busy", "cpu_iowait", "cpu_softirq", "testbed_cpu", "containers_cpu", "mem_available_bytes"]
SWARM_FIELDS = ["t", "online", "seeds_online", "leechers_online", "paused", "offline", "crashed", "gone", "copies"]
PIECE_FIELDS = ["t", "counts"]      # a shard's only: per piece, how many of its peers online hold it


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


class RowWriter(csv.DictWriter):
    """csv.DictWriter whose check for keys not among the fields is a subset test against a
    frozenset: DictWriter's own builds a set from the field list for every row, about a third
    of a row's cost, and the sampler writes two rows per peer per second."""

    def __init__(self, f, fieldnames: list[str]):
        super().__init__(f, fieldnames=fieldnames)
        self._fields = frozenset(fieldnames)

    def _dict_to_list(self, rowdict):
        if not rowdict.keys() <= self._fields:
            raise ValueError(f"dict contains fields not in fieldnames: {sorted(rowdict.keys() - self._fields)}")
        return [rowdict.get(key, self.restval) for key in self.fieldnames]


class RunDir:
    """The directory being written. samples.csv and the tables are block-buffered and flushed
    by `flush()`, which the sampler calls once a tick: a line-buffered file made a write
    system call per row, 200 a second in a 100-peer swarm. A run killed outright loses at
    most the tick it was in; events.jsonl stays line-buffered."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True, exist_ok=False)
        (path / "hosts").mkdir()
        self._events = (path / "events.jsonl").open("a", buffering=1)
        self._event_lock = threading.Lock()
        self._samples_file = (path / "samples.csv").open("a", newline="")
        self._samples = RowWriter(self._samples_file, SAMPLE_FIELDS)
        self._samples.writeheader()
        self._samples_file.flush()
        self._tables = {name: self._table(name, fields) for name, fields in
                        (("meter", METER_FIELDS), ("links", LINK_FIELDS), ("swarm", SWARM_FIELDS),
                         ("policy", POLICY_FIELDS), ("probes", PROBE_FIELDS), ("host", HOST_FIELDS))}
        self.t0 = time.time()

    def _table(self, name: str, fields: list[str]) -> tuple:
        f = (self.path / f"{name}.csv").open("a", newline="")
        w = RowWriter(f, fields)
        w.writeheader()
        f.flush()
        return f, w, threading.Lock()

    def flush(self) -> None:
        """What was written so far, to the files (the sampler's, once a tick)."""
        self._samples_file.flush()
        for f, _, lock in self._tables.values():
            with lock:
                f.flush()

    def add_table(self, name: str, fields: list[str]) -> None:
        """A table only some runs write (pieces.csv: a shard's), made before its first row."""
        self._tables[name] = self._table(name, fields)

    def row(self, table: str, row: dict) -> None:
        """Append a row to one of the tables (safe from several threads)."""
        _, w, lock = self._tables[table]
        with lock:
            w.writerow(row)

    @property
    def hosts(self) -> Path:
        return self.path / "hosts"

    def event(self, kind: str, **fields) -> dict:
        now = time.time()
        rec = {"time": round(now, 3), "t": round(now - self.t0, 3), "kind": kind, **fields}
        with self._event_lock:          # the loop, the slow pool and the death watch all write
            self._events.write(json.dumps(rec) + "\n")
        return rec

    def sample(self, row: dict) -> None:
        self._samples.writerow(row)

    def close(self) -> None:
        self._events.close()
        self._samples_file.close()
        for f, _, _ in self._tables.values():
            f.close()
        self._rebase_events()

    def _rebase_events(self) -> None:
        """The bring-up's events were written before the swarm's start was known: give every
        event its t from that one origin (negative before the start), from its unix time."""
        path = self.path / "events.jsonl"
        lines = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if "time" in rec and "t_swarm" not in rec:
                rec["t"] = round(rec["time"] - self.t0, 3)
            lines.append(json.dumps(rec))
        write_atomic(path, "".join(ln + "\n" for ln in lines))


def write_plan(path: Path, plan) -> None:
    """plan.json and timeline.csv: what the run is going to do, before it does anything."""
    import dataclasses
    from testbed.plan import TIMELINE_FIELDS

    def default(o):
        if hasattr(o, "steps") and hasattr(o, "source"):       # a trace: named, not copied
            return o.source
        if dataclasses.is_dataclass(o):
            return {f.name: getattr(o, f.name) for f in dataclasses.fields(o) if f.name != "timeline"}
        if hasattr(o, "model_dump"):
            return o.model_dump(mode="json")
        return str(o)
    write_atomic(path / "plan.json", json.dumps(plan, default=default, indent=1) + "\n")
    with (path / "timeline.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TIMELINE_FIELDS)
        w.writeheader()
        w.writerows(ev.row() for ev in plan.timeline)


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def read_events(run_dir: Path) -> list[dict]:
    """events.jsonl, skipping a line cut short by a process that died while writing it."""
    path = run_dir / "events.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
