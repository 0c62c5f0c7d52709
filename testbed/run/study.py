"""Carry out a study: every (repetition, arm) run, into one study directory that indexes them.

    run_study(loaded, study_dir, on_event) -> index (the study.json written)

results/<study>-<stamp>/
  study.yaml    the study as resolved: each arm's experiment written out in full
  study.json    the index: each run's arm, repetition, seed, run directory, status and error
  runs/<run_id>/  one results directory per run (the run contract, unchanged)

Runs go repetition by repetition, every arm within a repetition, so that a study stopped
early still holds complete pairs. A run that fails (refused at start, timed out, failed) is
recorded with its reason and the study goes on. Ctrl-C or SIGTERM marks the run under way
'interrupted' and stops the study; `resume` runs what is not finished, never repeating a
run that finished, whatever its outcome.
"""
from __future__ import annotations

import json
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import yaml

from testbed.errors import InputError, TestbedError
from testbed.model.study import LoadedStudy, load_study
from testbed.results import write_atomic, write_json

FORMAT = "testbed-study/1"
# finished runs are never repeated; a run refused at start is tried again on resume (the
# machine may have been fixed since)
FINISHED = ("complete", "timeout", "failed")


def new_study_dir(root: Path, name: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return root / f"{name}-study-{stamp}-{secrets.token_hex(2)}"


def run_id(study: str, arm: str, repetition: int) -> str:
    return f"{study[:20]}-{arm}-r{repetition}-{secrets.token_hex(3)}"


def load_index(study_dir: Path) -> dict:
    path = study_dir / "study.json"
    if not path.is_file():
        raise InputError(f"{study_dir}: not a study directory (no study.json)")
    return json.loads(path.read_text())


def open_study(loaded: LoadedStudy, study_dir: Path) -> dict:
    """A new study directory with its index, every run pending."""
    study_dir.mkdir(parents=True, exist_ok=False)
    (study_dir / "runs").mkdir()
    s = loaded.study
    doc = {"name": s.name, "description": s.description, "seed": s.seed, "repetitions": s.repetitions,
           "source": str(Path(loaded.source).resolve()),
           "arms": [{"name": n, "description": d, "experiment": data} for n, d, data, _ in loaded.arms]}
    if s.reproduces:
        doc["reproduces"] = s.reproduces.model_dump(mode="json", exclude_none=True)
    write_atomic(study_dir / "study.yaml", yaml.safe_dump(doc, sort_keys=False))
    index = {
        "format": FORMAT, "study": s.name, "digest": loaded.digest, "source": doc["source"],
        "seed": s.seed, "repetitions": s.repetitions, "baseline": loaded.names[0],
        "arms": [{"name": n, "description": d} for n, d, _, _ in loaded.arms],
        "status": "pending", "created": _now(),
        # every run of repetition r draws from (seed, r, purpose): the arms of a repetition share them
        "runs": [{"arm": arm, "repetition": r, "seed": s.seed, "run_id": None, "run_dir": None,
                  "status": "pending", "error": None, "started": None, "ended": None, "wall_s": None}
                 for r in range(1, s.repetitions + 1) for arm in loaded.names],
    }
    write_json(study_dir / "study.json", index)
    return index


def reopen(study_dir: Path) -> tuple[LoadedStudy, dict]:
    """The study of an existing directory, reloaded from its source and checked unchanged."""
    index = load_index(study_dir)
    loaded = load_study(index["source"])
    if loaded.digest != index["digest"]:
        raise InputError(f"{index['source']}: the study changed since {study_dir} was started "
                         f"(digest {loaded.digest} != {index['digest']}); start a new study instead")
    return loaded, index


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def pending(index: dict) -> list[dict]:
    return [r for r in index["runs"] if r["status"] not in FINISHED]


def run_study(loaded: LoadedStudy, study_dir: Path, index: dict, on_event: Callable[[dict], None] | None = None,
              runner: Callable | None = None) -> dict:
    """Run every run of the index not yet finished; returns the index (also in study.json)."""
    from testbed.run import run as run_experiment
    runner = runner or run_experiment
    emit = on_event or (lambda e: None)
    todo = pending(index)
    index["status"] = "running"
    write_json(study_dir / "study.json", index)
    emit({"kind": "study_start", "runs": len(index["runs"]), "todo": len(todo), "dir": str(study_dir)})
    try:
        for i, entry in enumerate(todo, 1):
            name, _, _, exp = loaded.arm(entry["arm"])
            rid = run_id(loaded.study.name, entry["arm"], entry["repetition"])
            entry.update(run_id=rid, run_dir=f"runs/{rid}", status="running", error=None, started=_now())
            write_json(study_dir / "study.json", index)
            emit({"kind": "study_run", "arm": name, "repetition": entry["repetition"], "i": i, "todo": len(todo)})
            t0 = time.monotonic()
            try:
                result = runner(exp, study_dir / "runs", emit, repetition=entry["repetition"], run_id=rid)
                entry["status"], entry["error"] = result.status, result.summary.get("error")
                if entry["error"] == "interrupted":
                    entry["status"] = "interrupted"
                    raise KeyboardInterrupt
            except TestbedError as exc:     # refused at start (a missing image, switch, ...): recorded
                entry["status"], entry["error"] = "refused", str(exc)
                if not (study_dir / entry["run_dir"]).exists():
                    entry["run_dir"] = None
                if entry["arm"] == index["baseline"]:
                    # the controlled arm cannot run here (no root, no daemon, no image): nothing
                    # of the study can be compared, so stop with the reason instead of going on
                    raise
            except KeyboardInterrupt as exc:
                done = getattr(exc, "result", None)     # the signal came during its teardown
                if done is not None and done.summary.get("error") != "interrupted":
                    entry["status"], entry["error"] = done.status, done.summary.get("error")
                else:
                    entry["status"] = "interrupted"
                    entry["error"] = entry["error"] or "interrupted"
                raise
            finally:
                entry["ended"], entry["wall_s"] = _now(), round(time.monotonic() - t0, 1)
                write_json(study_dir / "study.json", index)
            emit({"kind": "study_run_end", "arm": name, "repetition": entry["repetition"], "status": entry["status"],
                  "error": entry["error"], "run_dir": str(study_dir / entry["run_dir"]) if entry["run_dir"] else None})
    finally:
        left = pending(index)
        index["status"] = "complete" if not left and all(r["status"] == "complete" for r in index["runs"]) else \
            "partial" if left else "finished with failures"
        index["updated"] = _now()
        write_json(study_dir / "study.json", index)
    return index
