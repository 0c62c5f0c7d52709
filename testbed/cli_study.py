"""The commands of studies and analysis: `study run|resume`, `report`, `compare` (the
parser and the error boundary stay in testbed.cli)."""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from testbed.cli_common import console, err, sigterm_as_interrupt
from testbed.errors import InputError


def _current_claims(study_dir: Path) -> dict | None:
    """The claims of the study's source file as it is now, when it still describes these runs
    (same digest): a corrected claim is judged again without running anything. Otherwise
    None, and the report uses the claims the study was run with."""
    from testbed.model.study import load_study
    from testbed.run.study import load_index
    try:
        index = load_index(study_dir)
        loaded = load_study(index["source"])
    except (InputError, OSError, KeyError):
        return None
    if loaded.digest != index.get("digest") or not loaded.study.reproduces:
        return None
    return loaded.study.reproduces.model_dump(mode="json", exclude_none=True)


def cmd_report(args) -> int:
    from testbed import report
    from testbed.analysis import pages
    from testbed.analysis.compare import is_study_dir
    path = Path(args.path)
    if not path.is_dir():
        raise InputError(f"{path}: no such run or study directory")
    out = Path(args.out) if args.out else path
    if is_study_dir(path):
        current = _current_claims(path)
        data = pages.study_report(path, out, current, "the study file as it is now" if current else "")
        if args.json:
            sys.stdout.write(pages.dumps(data) + "\n")
        else:
            console.print((out / "report.md").read_text(), markup=False, highlight=False)
            console.print(f"report: {out / 'report.html'}  (and report.md, metrics.json)")
        return 0 if data["status"] == "complete" else 1
    if args.json:
        summary = report.load(path)
        pngs = report.plots(path, out)
        data = pages.run_report(path, out, pngs)
        sys.stdout.write(pages.dumps({**data, "summary": summary}) + "\n")
        return 0 if summary["status"] == "complete" else 1
    summary = report.render(path, console)
    pngs = report.plots(path, out)
    for png in pngs:
        console.print(f"plot: {png}")
    pages.run_report(path, out, pngs)
    console.print(f"report: {out / 'report.html'}  (and report.md, metrics.json)")
    return 0 if summary["status"] == "complete" else 1


def cmd_compare(args) -> int:
    from testbed.analysis import compare
    a, b = compare.side(args.a), compare.side(args.b)
    rows = compare.table(a, b, args.metric or None)
    note = compare.method_note(a, b)
    if args.json:
        sys.stdout.write(json.dumps({"a": a.label, "b": b.label, "paired": compare.paired(a, b), "method": note,
                                     "rows": rows}, indent=1) + "\n")
        return 0
    console.print(f"# {a.label} vs {b.label}\n", markup=False, highlight=False)
    console.print(compare.markdown_table(rows, a.label, b.label), markup=False, highlight=False)
    console.print(f"\n{note}", markup=False, highlight=False)
    return 0


def cmd_study(args) -> int:
    from testbed.model.study import load_study
    from testbed.run import study
    if args.study_command == "run":
        loaded = load_study(args.file)
        study_dir = Path(args.out) if args.out else study.new_study_dir(Path(args.results), loaded.study.name)
        if study_dir.exists():
            raise InputError(f"--out: {study_dir} exists; resume it with `testbed study resume {study_dir}`")
        index = study.open_study(loaded, study_dir)
    else:
        study_dir = Path(args.dir)
        loaded, index = study.reopen(study_dir)
        if not study.pending(index):
            console.print(f"{study_dir}: every run is finished ({index['status']}); nothing to resume")
            return 0 if index["status"] == "complete" else 1
    from mininet.log import setLogLevel
    setLogLevel("warning")
    signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    todo = len(study.pending(index))
    total = len(index["runs"])
    console.print(f"study {loaded.study.name}: {len(loaded.arms)} arms x {loaded.study.repetitions} repetitions; "
                  f"{todo} of {total} runs to go; directory {study_dir}")
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console) as progress:
        whole = progress.add_task(f"study {loaded.study.name}", total=total, completed=total - todo, info="")
        run_task = progress.add_task("run", total=None, info="")

        def on_event(e: dict) -> None:
            kind = e["kind"]
            if kind == "study_run":
                progress.reset(run_task, total=None, description=f"{e['arm']} r{e['repetition']}", info="starting")
            elif kind == "study_run_end":
                progress.advance(whole)
                if e["status"] != "complete":
                    progress.console.print(f"[yellow]{e['arm']} r{e['repetition']}: {e['status']}"
                                           + (f": {e['error']}" if e["error"] else ""), highlight=False)
            elif kind == "progress":
                progress.update(run_task, total=e["total"], completed=e["done"],
                                info=f"t={e['t']:5.1f}s  {e['online']} online")
            elif kind in ("containers", "network", "clients_ready", "teardown"):
                progress.update(run_task, info=kind.replace("_", " "))
        try:
            index = study.run_study(loaded, study_dir, index, on_event)
        except KeyboardInterrupt:
            err.print(f"testbed: interrupted; resume with `testbed study resume {study_dir}`")
            return 130
    done = sum(1 for r in index["runs"] if r["status"] == "complete")
    console.print(f"study {loaded.study.name}: {index['status']}, {done}/{total} runs complete; "
                  f"report with `testbed report {study_dir}`")
    return 0 if index["status"] == "complete" else 1
