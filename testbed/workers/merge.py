"""The results of a swarm spread over workers, merged into one run directory on the
coordinator's clock.

Each worker's shard is a run directory of its own (its samples, events and summary, on its
own clock, from its own t=0, the moment it was told to start). They are kept whole under
`shards/<worker>/`; the run directory itself gets what the analysis reads for the whole
swarm:

- samples.csv and events.jsonl: every shard's rows, their times moved onto one time origin;
- meter.csv, links.csv, host.csv (and policy.csv, probes.csv where a shard has them): every
  shard's rows, moved likewise, each with its `worker` (a host's rows come from the worker
  that ran it; host.csv has one row per worker per tick: each machine's own load);
- swarm.csv: the whole swarm's population, each shard's counts added up a tick apart from
  the first shard's first row to the last one's last (a shard's row taken is its latest one
  at most half a tick later, and it counts until a tick past its last); `copies`, the
  file's availability, from every counting shard's per-piece counts at that row
  (pieces.csv, a shard's own) added up piece by piece, and the summary's `availability`
  from those;
- summary.json: every peer, its times moved likewise, the swarm's counts and completion
  recomputed over all of them, and `workers`: each worker's shard, its clock offset and shift,
  and what went wrong with it (a worker lost: its peers are missing, and the swarm is
  not complete);
- households.json: every shard's homes (each whole on one worker, with its `worker`), its
  segments' shares (a segment is whole on one worker too) and its segment policies' records;
- plan.json (the whole plan, each host's worker), manifest.json, experiment.yaml.

The time origin: a shard's start, read on its own clock (its swarm_start event's time less
its t), minus that worker's clock offset (workers/clock.py), is its start on the
coordinator's clock; the earliest shard's is the swarm's t=0, and every other shard's times
move by how much later it started. Reads only results: the coordinator's side, after the fact.
"""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from testbed import availability
from testbed.results import (HOST_FIELDS, LINK_FIELDS, METER_FIELDS, POLICY_FIELDS, PROBE_FIELDS, SAMPLE_FIELDS,
                             SWARM_FIELDS, read_events, write_json)

PEER_TIMES = ("arrived_s", "planned_arrival_s", "completed_at_s", "left_s", "cap_reached_s", "line_cut_s")


# a shard summary's fields that speak of that shard alone (its machine, its containers, its
# hosts' availability): kept per worker, not taken from one shard for the whole swarm
SHARD_ONLY = ("peers", "testbed_cpu", "host", "containers", "shaper", "availability", "container_deaths",
              "out_of_memory", "ended_by", "delay_element", "outside_blocked", "captures", "homes")


@dataclass
class ShardResult:
    worker: str
    run_dir: Path | None            # its results, if they came back
    problem: str | None = None      # what went wrong with the worker, in one sentence
    offset_s: float = 0.0           # its clock minus the coordinator's
    offset_error_s: float | None = None     # None: not measured (taken as 0)


def event(run_dir: Path, kind: str) -> dict | None:
    """The shard's first event of that kind, if it has one."""
    return next((e for e in read_events(run_dir) if e.get("kind") == kind), None)


def swarm_start(run_dir: Path) -> float | None:
    """When the shard's swarm started, unix seconds on its worker's clock."""
    e = event(run_dir, "swarm_start")
    return None if e is None else float(e["time"]) - float(e["t"])


def tunnel_counters(run_dir: Path) -> dict | None:
    """What the shard's VXLAN tunnels carried (its tunnels_counted event), if it had any."""
    e = event(run_dir, "tunnels_counted")
    return None if e is None else {k: e[k] for k in ("tx_bytes", "tx_packets", "rx_bytes", "rx_packets",
                                                      "underlay_bytes_out")}


def shifts(shards: list[ShardResult]) -> dict[str, float]:
    """worker -> seconds to add to its shard's times (0 for the earliest), for the shards that
    started their swarm."""
    starts = {s.worker: t - s.offset_s for s in shards if s.run_dir and (t := swarm_start(s.run_dir)) is not None}
    if not starts:
        return {}
    first = min(starts.values())
    return {w: t - first for w, t in starts.items()}


def _moved(peer: dict, by: float, worker: str) -> dict:
    out = dict(peer, worker=worker)
    for k in PEER_TIMES:
        if out.get(k) is not None:
            out[k] = round(out[k] + by, 3)
    if isinstance(out.get("seeding"), dict) and out["seeding"].get("stopped_s") is not None:
        out["seeding"] = dict(out["seeding"], stopped_s=round(out["seeding"]["stopped_s"] + by, 3))
    return out


def merge(out: Path, run_id: str, whole_plan: dict, placement: dict[str, str], shards: list[ShardResult]) -> dict:
    """Writes the merged run directory `out` (shards' directories already under out/shards)
    and returns its summary."""
    move = shifts(shards)
    summaries = {}
    for s in shards:
        if s.run_dir and (s.run_dir / "summary.json").exists():
            summaries[s.worker] = json.loads((s.run_dir / "summary.json").read_text())
    _merge_rows(out, shards, move)
    series = merge_tables(out, shards, move)
    merge_homes(out, shards, [h["name"] for h in whole_plan.get("homes") or ()])
    peers = [_moved(p, move.get(w, 0.0), w) for w, sm in summaries.items() for p in sm.get("peers", [])]
    peers.sort(key=lambda p: [h["name"] for h in whole_plan["hosts"]].index(p["name"])
               if any(h["name"] == p["name"] for h in whole_plan["hosts"]) else 1 << 30)
    leechers = [h["name"] for h in whole_plan["hosts"] if h["role"] == "leecher"]
    done = [p for p in peers if p["role"] == "leecher" and p.get("completed")]
    workers, problems = {}, []
    for s in shards:
        sm = summaries.get(s.worker, {})
        problem = s.problem or (None if s.worker in summaries else "its results did not come back")
        if problem is None and sm.get("status") not in ("complete", None):
            problem = f"its shard ended {sm.get('status')}" + (f": {sm['error']}" if sm.get("error") else "")
        if problem:
            problems.append(f"worker {s.worker}: {problem}")
        lost = s.problem is not None or s.worker not in summaries
        workers[s.worker] = {
            "hosts": sorted(h for h, w in placement.items() if w == s.worker),
            "shard_run_id": sm.get("run_id"), "status": sm.get("status", "lost"), "problem": problem,
            "clock_offset_s": s.offset_s, "clock_error_s": s.offset_error_s,
            "shift_s": None if s.worker not in move else round(move[s.worker], 6),
            "ended_by": sm.get("ended_by"), "testbed_cpu": sm.get("testbed_cpu"),
            "tunnel": tunnel_counters(s.run_dir) if s.run_dir else None,
            # the shard's own (its hosts only, its clock): whole-swarm availability is not merged
            "availability": sm.get("availability"), "lost": lost}
    statuses = {sm.get("status") for sm in summaries.values()}
    if any(i["lost"] for i in workers.values()) or "failed" in statuses or not statuses:
        status = "failed"
    elif "timeout" in statuses:
        status = "timeout"
    else:
        status = "complete"
    first = next(iter(summaries.values()), {})
    arrived = [p for p in peers if p["role"] == "leecher" and p.get("arrived_s") is not None]
    shapers = sorted({sm.get("shaper") for sm in summaries.values() if sm.get("shaper")})
    summary = {
        **{k: v for k, v in first.items() if k not in SHARD_ONLY},
        "run_id": run_id, "status": status, "error": "; ".join(problems) or None, "partial": status != "complete",
        # as a run's summary counts it: every leecher that arrived completed (and none was lost)
        "swarm_completion_s": round(max(p["completed_at_s"] for p in done), 3)
        if done and len(done) == len(arrived) and status == "complete" else None,
        "leechers": len(leechers), "leechers_completed": len(done), "leechers_arrived": len(arrived),
        "t_min_s": whole_plan.get("t_min_s"), "t_min_terms": whole_plan.get("t_min_terms", {}),
        "shaper": shapers[0] if len(shapers) == 1 else "/".join(shapers) or None,
        "container_deaths": [dict(d, worker=w) for w, sm in summaries.items() for d in sm.get("container_deaths", [])],
        "out_of_memory": sorted(h for sm in summaries.values() for h in sm.get("out_of_memory", [])),
        "availability": availability.summarize(series) if series else None, "homes": len(whole_plan.get("homes") or ()),
        "ended_by": next(iter(ends)) if len(ends := {sm.get("ended_by") for sm in summaries.values()}) == 1 else None,
        "workers": workers, "peers": peers}
    write_json(out / "summary.json", summary)
    return summary


def _merge_rows(out: Path, shards: list[ShardResult], move: dict[str, float]) -> None:
    with (out / "samples.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, SAMPLE_FIELDS, extrasaction="ignore")
        w.writeheader()
        rows = []
        for s in shards:
            path = s.run_dir / "samples.csv" if s.run_dir else None
            if path is None or not path.exists() or s.worker not in move:
                continue
            with path.open() as g:
                for row in csv.DictReader(g):
                    for k in ("t", "t_if"):
                        if row.get(k) not in (None, ""):
                            row[k] = f"{float(row[k]) + move[s.worker]:.3f}"
                    rows.append(row)
        rows.sort(key=lambda r: (float(r["t"]), r["peer"]))
        w.writerows(rows)
    events = []
    for s in shards:
        for e in read_events(s.run_dir) if s.run_dir else []:
            e["worker"] = s.worker
            if s.worker in move and isinstance(e.get("t"), (int, float)):
                e["t"] = round(e["t"] + move[s.worker], 6)
            events.append(e)
    events.sort(key=lambda e: (e.get("t") if isinstance(e.get("t"), (int, float)) else -1e18))
    with (out / "events.jsonl").open("w") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")


# tables whose rows are each shard's own, merged by moving their times: name -> fields
TABLES = {"meter.csv": METER_FIELDS, "links.csv": LINK_FIELDS, "host.csv": HOST_FIELDS,
          "policy.csv": POLICY_FIELDS, "probes.csv": PROBE_FIELDS}
COUNTS = [f for f in SWARM_FIELDS if f not in ("t", "copies")]     # swarm.csv's that add up across shards


def _rows(s: ShardResult, name: str, move: dict[str, float]) -> list[dict]:
    """A shard's rows of one table, times moved onto the coordinator's clock ([] if it has none,
    or never started its swarm)."""
    path = s.run_dir / name if s.run_dir else None
    if path is None or not path.exists() or s.worker not in move:
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if row.get("t") not in (None, ""):
            row["t"] = f"{float(row['t']) + move[s.worker]:.3f}"
    return [r for r in rows if r.get("t") not in (None, "")]


def merge_tables(out: Path, shards: list[ShardResult], move: dict[str, float]) -> list[tuple[float, float]]:
    """The per-tick tables of every shard, as the module's docstring says; returns the whole
    swarm's (t, distributed copies)."""
    for name, fields in TABLES.items():
        rows = [dict(r, worker=s.worker) for s in shards for r in _rows(s, name, move)]
        if not rows and not any(s.run_dir and (s.run_dir / name).exists() for s in shards):
            continue
        rows.sort(key=lambda r: float(r["t"]))
        with (out / name).open("w", newline="") as f:
            w = csv.DictWriter(f, [*fields, "worker"], extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    per_shard = [(rows, _pieces(s, move)) for s in shards if (rows := _rows(s, "swarm.csv", move))]
    if not per_shard:
        return []
    times = [[float(r["t"]) for r in rows] for rows, _ in per_shard]
    # the merged ticks: from the earliest shard's first row to the latest one's last, a tick
    # apart (the median gap between a shard's rows: the sampling interval; 1 s with no gap)
    gaps = sorted(b - a for ts in times for a, b in zip(ts, ts[1:]) if b > a)
    tick = gaps[len(gaps) // 2] if gaps else 1.0
    first, last = min(ts[0] for ts in times), max(ts[-1] for ts in times)
    series = []
    with (out / "swarm.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, SWARM_FIELDS, extrasaction="ignore")
        w.writeheader()
        at = [0] * len(per_shard)
        for k_tick in range(int((last - first) / tick + 0.5) + 1):
            t, total, held = first + k_tick * tick, dict.fromkeys(COUNTS, 0), []
            for k, (rows, pieces) in enumerate(per_shard):
                ts = times[k]
                while at[k] + 1 < len(rows) and ts[at[k] + 1] <= t + tick / 2:
                    at[k] += 1
                # a shard's latest row at most half a tick later counts, from its first row
                # to one tick past its last (then it ended)
                if ts[at[k]] <= t + tick / 2 and t <= ts[-1] + tick:
                    for c in COUNTS:
                        total[c] += int(float(rows[at[k]].get(c) or 0))
                    held.append(pieces.get(rows[at[k]]["t"], False) if pieces is not None else False)
            copies = _copies(held, total["online"])
            if copies is not None:
                series.append((t, copies))
            w.writerow({"t": f"{t:.3f}", **total, "copies": None if copies is None else round(copies, 4)})
    return series


def _pieces(s: ShardResult, move: dict[str, float]) -> dict[str, list[int] | None] | None:
    """A shard's per-piece counts by its rows' (moved) times (None for a row whose peers had no
    piece map); None if it wrote none (a shard of an older testbed): then the merged
    availability is not known."""
    if not s.run_dir or not (s.run_dir / "pieces.csv").exists():
        return None
    return {r["t"]: [int(c) for c in r["counts"].split()] or None for r in _rows(s, "pieces.csv", move)}


def _copies(held: list, online: int) -> float | None:
    """The whole swarm's distributed copies at one tick from each counting shard's per-piece
    counts (None: the shard's peers online had no piece map; False: the shard recorded none)."""
    if any(h is False for h in held):
        return None
    maps = [h for h in held if h]
    if not maps:
        return 0.0 if online == 0 else None
    return availability.copies([sum(col) for col in zip(*maps)])


def merge_homes(out: Path, shards: list[ShardResult], order: list[str]) -> None:
    """households.json from every shard's: its homes in the plan's order, each with its worker."""
    parts = [(s.worker, json.loads((s.run_dir / "households.json").read_text())) for s in shards
             if s.run_dir and (s.run_dir / "households.json").exists()]
    if not parts:
        return
    homes = [dict(h, worker=w) for w, part in parts for h in part.get("homes", [])]
    homes.sort(key=lambda h: order.index(h["name"]) if h["name"] in order else len(order))
    write_json(out / "households.json", {
        "homes": homes, "segments": [dict(g, worker=w) for w, part in parts for g in part.get("segments", [])],
        "segment_policies": [dict(p, worker=w) for w, part in parts for p in part.get("segment_policies", [])],
        "note": parts[0][1].get("note")})


def copy_common(out: Path, shards: list[ShardResult]) -> None:
    """The experiment as written, its timeline and the torrent: the same in every shard; the first's."""
    for s in shards:
        if s.run_dir:
            for name in ("experiment.yaml", "timeline.csv", *(p.name for p in s.run_dir.glob("*.torrent"))):
                if (s.run_dir / name).exists() and not (out / name).exists():
                    shutil.copyfile(s.run_dir / name, out / name)
