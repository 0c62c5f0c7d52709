"""Interoperability matrix: for every ordered pair (seeding client, leeching client), a real
two-peer swarm, each run in its own `testbed run` process, several at a time.

The matrix directory holds runs/<run-id>/ (one results directory per pair) and
matrix.json: one entry per pair with status, completion time and SHA-256 verdict.

A failed pair is classified from its run directory (classify): "interop" when both
clients ran and the data did not arrive (the run timed out, or the file differs from the
origin's), "driver" when the testbed or a driver raised (a traceback or client_error in
events.jsonl, a peer's error, a RunError before the swarm started). A driver-kind failure
is retried once, the first attempt kept under "first_attempt": a race in a driver cannot
fail the matrix, while a driver failure that happens again still does. An interoperability
failure (not explained) is tried once more too: a pair that fails twice running fails the
matrix; one that works the second time is marked "intermittent", with the first failure.
"""
from __future__ import annotations

import csv
import json
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import yaml

from testbed.results import read_events, read_summary, write_json

INTEROP, DRIVER = "interop", "driver"
SHA_MISMATCH = "the leecher completed but its file differs from the origin's (sha256)"

TRANSMISSION_UTP = ("transmission 3.00 tries uTP first and its fallback to TCP is broken: the uTP attempt "
                    "never times out and the TCP socket it opens is closed at once (transmission#4033, fixed "
                    "by #4826/#4897 in 4.0), so with its default uTP on it cannot reach a TCP-only peer")


def pair_experiment(seeder: str, leecher: str, size: str, transmission_utp: bool | None = None) -> dict:
    def group(name: str, client: str) -> dict:
        # queue: 50 packets, not the default 100. The uplink's queue sits on the sender's own
        # interface; with 100 packets a uTP seeder's UDP socket (212992-byte send buffer) is
        # refused sends while the queue backs up (SndbufErrors in its namespace) and qBittorrent
        # 4.5.2 (libtorrent 2.0.8) resends much of what crossed the link intact. Measured,
        # qbittorrent -> libtorrent, 32 MiB: 52-54k datagrams sent and received for 23k packets
        # of data, 24-42 s; with 50 packets, 23.2k datagrams, 15-16 s (line rate 13.4 s). One
        # matrix run lost that pair's only connection mid-transfer in this state (the seeder
        # went silent, then dropped the peer; the leecher noticed after its 60 s request
        # timeout, too late to reconnect within the run's 90 s).
        g = {"name": name, "client": client, "access": {"up": "20mbit", "down": "20mbit", "queue": 50}}
        if client == "transmission" and transmission_utp is not None:
            g["behaviour"] = {"utp": transmission_utp}
        return g

    return {
        "version": 1, "name": f"pair-{seeder}-{leecher}", "seed": 1,
        "description": f"{seeder} seeds, {leecher} leeches",
        "content": {"size": size}, "topology": "star",
        "seeders": [group("seeder", seeder)],
        "peers": [group("leecher", leecher)],
        "timeout": "90s",
    }


def run_pair(seeder: str, leecher: str, size: str, out: Path, transmission_utp: bool | None = None) -> dict:
    suffix = "" if transmission_utp is None else "-noutp"
    exp_file = out / "experiments" / f"{seeder}-{leecher}{suffix}.yaml"
    exp_file.parent.mkdir(parents=True, exist_ok=True)
    exp_file.write_text(yaml.safe_dump(pair_experiment(seeder, leecher, size, transmission_utp), sort_keys=False))
    run_id = f"pair-{seeder}-{leecher}{suffix}-{secrets.token_hex(3)}"
    run_dir = out / "runs" / run_id
    proc = subprocess.run([sys.executable, "-m", "testbed.cli", "run", str(exp_file), "--results",
                           str(run_dir.parent), "--run-id", run_id], capture_output=True, text=True)
    entry = {"seeder": seeder, "leecher": leecher, "exit": proc.returncode}
    if not (run_dir / "summary.json").is_file():
        entry.update(status="failed", error=(proc.stderr.strip().splitlines() or ["no run directory"])[-1])
    else:
        s = read_summary(run_dir)
        peer = next((p for p in s["peers"] if p["role"] == "leecher"), {})
        entry.update(status=s["status"], run_dir=str(run_dir), completion_s=peer.get("completion_s"),
                     sha256_ok=bool(peer.get("sha256_ok")), error=s.get("error"),
                     ok=s["status"] == "complete" and bool(peer.get("sha256_ok")))
    if not entry.get("ok"):
        entry["failure"], entry["reason"] = classify(entry)
    return entry


def leecher_progress(run_dir: Path, leecher: str) -> float | None:
    """The leecher's last progress sample (0..1), if any."""
    path = run_dir / "samples.csv"
    if not path.is_file():
        return None
    rows = [r for r in csv.DictReader(path.open()) if r.get("peer") == leecher and r.get("progress")]
    return float(rows[-1]["progress"]) if rows else None


def classify(entry: dict) -> tuple[str, str]:
    """Why a pair failed: (DRIVER, reason) when the testbed or a driver raised, (INTEROP, reason)
    when both clients ran fine and the data did not arrive."""
    if not entry.get("run_dir"):
        return DRIVER, f"`testbed run` exited {entry.get('exit')} without a run directory: {entry.get('error')}"
    run_dir = Path(entry["run_dir"])
    try:
        s = read_summary(run_dir)
        events = read_events(run_dir)
    except (OSError, ValueError) as exc:
        return DRIVER, f"the run directory could not be read: {exc.__class__.__name__}: {exc}"
    for e in events:
        if e.get("kind") == "traceback":
            last = (e.get("text") or "").strip().splitlines()
            return DRIVER, f"the testbed raised {s.get('error') or (last[-1] if last else 'an exception')}"
    for e in events:
        if e.get("kind") == "client_error":
            return DRIVER, f"{e.get('host')}'s client failed: {e.get('error')}"
    peers = s.get("peers", [])
    for p in peers:
        if p.get("error"):
            return DRIVER, f"{p['name']} ({p.get('client')}) failed: {p['error']}"
    if s.get("status") != "timeout" and not any(e.get("kind") == "swarm_start" for e in events):
        return DRIVER, f"the run failed before the swarm started: {s.get('error') or 'no error recorded'}"
    leechers = [p for p in peers if p.get("role") == "leecher"]
    if s.get("status") == "timeout":
        after = next((e.get("after_s") for e in events if e.get("kind") == "timeout"), None)
        within = f" within {after:g}s" if isinstance(after, (int, float)) else ""
        got = [f"{p.get('client')} {pct * 100:.0f} %" for p in leechers
               if p.get("completion_s") is None and (pct := leecher_progress(run_dir, p["name"])) is not None]
        return INTEROP, f"the leecher did not complete{within}" + (f" ({', '.join(got)} verified)" if got else "")
    if leechers and all(p.get("completion_s") is not None for p in leechers) and \
            not all(p.get("sha256_ok") for p in leechers):
        return INTEROP, SHA_MISMATCH
    return DRIVER, f"the testbed stopped the run: {s.get('error') or 'no error recorded'}"


def attempt(seeder: str, leecher: str, size: str, out: Path, transmission_utp: bool | None = None) -> dict:
    """run_pair, once more if the first run failed on the testbed's or a driver's side."""
    entry = run_pair(seeder, leecher, size, out, transmission_utp)
    if not entry.get("ok") and entry.get("failure") == DRIVER:
        first, entry = entry, run_pair(seeder, leecher, size, out, transmission_utp)
        entry["first_attempt"] = first
    return entry


def retries(entry: dict) -> int:
    """Driver-kind retries in an entry, its transmission-without-uTP run included."""
    nested = entry.get("without_transmission_utp")
    return ("first_attempt" in entry) + (retries(nested) if nested else 0)


def run_matrix(clients: list[str], size: str, out: Path, parallel: int = 3,
               on_pair: Callable[[dict], None] | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    pairs = [(s, le) for s in clients for le in clients]

    def one(pair):
        entry = attempt(*pair, size, out)
        if not entry.get("ok") and entry.get("failure") == INTEROP and "transmission" in pair \
                and pair != ("transmission", "transmission"):
            # the one failure seen with the clients' defaults: show it is transmission's uTP bug
            retry = attempt(*pair, size, out, transmission_utp=False)
            entry["without_transmission_utp"] = retry
            if retry.get("ok"):
                entry["explained"] = TRANSMISSION_UTP
        if not entry.get("ok") and entry.get("failure") == INTEROP and not entry.get("explained"):
            # once more: a pair that fails twice running does not interoperate; one that works
            # the second time failed intermittently, and says so (its first attempt kept).
            # Seen once in CI (2026-11-26): rtorrent -> aria2, whose one connection carried
            # 77 % in under a second, then closed, and neither side dialed again in 87 s
            again = attempt(*pair, size, out)
            if again.get("ok"):
                entry = {**again, "intermittent": entry.get("reason"), "first_attempt": entry}
        if on_pair:
            on_pair(entry)
        return entry

    with ThreadPoolExecutor(parallel) as pool:
        entries = list(pool.map(one, pairs))
    failed = [e for e in entries if not e.get("ok") and not e.get("explained")]
    result = {"clients": clients, "size": size, "pairs": entries,
              "passed": sum(1 for e in entries if e.get("ok")),
              "explained": sum(1 for e in entries if not e.get("ok") and e.get("explained")),
              "total": len(entries),
              "failures": {kind: sum(1 for e in failed if e.get("failure") == kind) for kind in (INTEROP, DRIVER)},
              "driver_retries": sum(retries(e) for e in entries),
              "intermittent": sum(1 for e in entries if e.get("intermittent"))}
    write_json(out / "matrix.json", result)
    return result


def load(out: Path) -> dict:
    return json.loads((out / "matrix.json").read_text())
