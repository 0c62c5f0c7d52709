"""A run's summary, also for a run that never wrote one (killed with SIGKILL, machine lost):
rebuilt from what the run appended as it went (plan.json, events.jsonl, samples.csv)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from testbed.errors import InputError
from testbed.results import read_events


def summary_of(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    if path.is_file():
        return json.loads(path.read_text())
    if not (run_dir / "plan.json").is_file():
        raise InputError(f"{run_dir}: not a run directory (no summary.json, no plan.json)")
    return rebuild(run_dir)


def rebuild(run_dir: Path) -> dict:
    """What the events and samples of an unfinished run hold, in summary.json's shape, marked
    `"status": "killed"` and `"partial": true`; byte counts are the last sample's."""
    plan = json.loads((run_dir / "plan.json").read_text())
    evs = read_events(run_dir)
    arrived = {e["host"]: e.get("t_swarm", e["t"]) for e in evs if e["kind"] == "arrive"}
    done = {e["host"]: (e["t_swarm"], e["download_s"]) for e in evs if e["kind"] == "peer_complete"}
    last: dict[str, dict] = {}
    if (run_dir / "samples.csv").is_file():
        with (run_dir / "samples.csv").open() as f:
            for row in csv.DictReader(f):
                last[row["peer"]] = row
    peers = []
    for h in plan["hosts"]:
        if not h.get("client"):
            continue
        s = last.get(h["name"], {})
        n = lambda k: int(float(s[k])) if s.get(k) not in (None, "") else None   # noqa: E731
        leecher = h["role"] == "leecher"
        peers.append({
            "name": h["name"], "group": h["group"], "role": h["role"], "client": h["client"],
            "arrived_s": arrived.get(h["name"], 0.0 if not leecher else None),
            "completed": h["name"] in done or not leecher,
            "completed_at_s": done[h["name"]][0] if h["name"] in done else None,
            "completion_s": done[h["name"]][1] if h["name"] in done else None,
            "bytes_up": n("client_bytes_up"), "bytes_down": n("client_bytes_down"),
            "if_bytes_up": n("if_bytes_up"), "if_bytes_down": n("if_bytes_down"),
            "progress": float(s["progress"]) if s.get("progress") else None,
            "sha256_ok": None, "bill": None,
        })
    leechers = [p for p in peers if p["role"] == "leecher"]
    start = next((e for e in evs if e["kind"] == "run_start"), {})
    return {"run_id": plan["run_id"], "experiment": plan["name"], "repetition": plan.get("repetition"),
            "status": "killed", "partial": True, "rebuilt": True,
            "error": "the run ended without writing summary.json; rebuilt from events.jsonl and samples.csv",
            "t_min_s": plan.get("t_min_s"), "flash_crowd": plan.get("t_min_s") is not None,
            "swarm_completion_s": None, "leechers": len(leechers),
            "leechers_completed": sum(1 for p in leechers if p["completed"]),
            "leechers_arrived": sum(1 for p in leechers if p["arrived_s"] is not None),
            "homes": len(plan.get("homes") or ()), "started": start.get("time"),
            "last_event_s": evs[-1]["t"] if evs else None, "peers": peers}
