"""The commands of several machines: `workers check`, `workers harness up|down` (the parser and
the error boundary stay in testbed.cli)."""
from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from testbed.cli_common import console, err
from testbed.errors import InputError, RunError


def cmd_check(args) -> int:
    """Reads the inventory (Ansible's reading, checked), then runs the read-only check playbook
    on every worker: 0 if each has what a shard needs, 1 naming each worker and task that failed."""
    from testbed.workers.ansible import clock_offsets, run_playbook
    from testbed.workers.inventory import load_inventory
    inventory = Path(args.inventory)
    workers = load_inventory(inventory)
    err.print(f"{len(workers)} worker(s) in {inventory}: " + ", ".join(w.name for w in workers))
    names = [w.name for w in workers]
    result = run_playbook("check", inventory, progress=lambda line: err.print(f"  {line}", markup=False,
                                                                                highlight=False), workers_named=names)
    coordinator = args.clock or next((w.vars["testbed_coordinator"] for w in workers
                                      if "testbed_coordinator" in w.vars), None)
    offsets = {}
    if coordinator:
        err.print(f"  clocks: probing {coordinator} from each worker")
        offsets, clock_problems = clock_offsets(inventory, str(coordinator), names)
        result_problems = clock_problems
    else:
        result_problems = []
    rows = []
    for w in workers:
        o = result.workers.get(w.name)
        report = o.report if o else {}
        rows.append({"worker": w.name, "address": w.address, "underlay": w.underlay, "cores_given": w.cores,
                     "ok": bool(o and o.good), "problem": None if (o and o.good) else (o.problem() if o else f"worker {w.name}: Ansible reported nothing of it"),
                     **report, **({"clock_offset_s": offsets[w.name].seconds, "clock_error_s": offsets[w.name].error}
                                  if w.name in offsets else {})})
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        t = Table(title="workers")
        for col in ("worker", "underlay", "cores", "memory", "kernel", "system", "vxlan", "clock offset", "ok"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["worker"], r["underlay"], str(r.get("cores", "?")), f"{r.get('memory_mb', '?')} MB",
                      str(r.get("kernel", "?")), str(r.get("system", "?")), str(r.get("vxlan", "?")),
                      f"{r['clock_offset_s'] * 1000:+.2f} ms ± {r['clock_error_s'] * 1000:.2f}"
                      if "clock_offset_s" in r else "-",
                      "yes" if r["ok"] else "[red]no[/red]")
        console.print(t)
    problems = [r["problem"] for r in rows if r["problem"]]
    problems += [p for p in result_problems if p not in problems]
    if problems:
        raise RunError("; ".join(problems))
    return 0


def cmd_prepare(args) -> int:
    """Every worker set up by the testbed's own setup.sh (copied there if it has none): 0, or
    1 naming each worker and task that failed."""
    from testbed.workers.prepare import prepare
    inventory = Path(args.inventory)
    result = prepare(inventory, progress=lambda line: err.print(f"  {line}", markup=False, highlight=False))
    problems = list(result.problems)
    for name, o in sorted(result.workers.items()):
        if o.good:
            steps = [s.split("==> ", 1)[-1] for s in o.report.get("steps", []) if "==>" in s]
            how = "copied and set up" if str(o.report.get("copied")) == "True" else "set up"
            console.print(f"{name}: {how} in {o.report.get('project')}: " + "; ".join(steps), highlight=False)
        elif o.problem() not in problems:
            problems.append(o.problem())
    if problems:
        raise RunError("; ".join(problems))
    return 0


def cmd_run(args) -> int:
    """An experiment run whole on one worker; its results come back as if run here."""
    from testbed.workers.remote import run_on_worker
    rc, run_dir = run_on_worker(Path(args.file), Path(args.inventory), args.worker, Path(args.results),
                                progress=lambda line: err.print(f"  {line}", markup=False, highlight=False))
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    console.print(f"{summary.get('status', 'unknown')}: {summary.get('leechers_completed', '?')}/"
                  f"{summary.get('leechers', '?')} leechers completed; results: {run_dir}")
    return rc


def cmd_shard(args) -> int:
    """A worker's share of a swarm spread over workers, as the coordinator's playbook starts it.
    Whatever happens, the sync directory's state says it ended (the playbook waits on it)."""
    import signal
    import sys

    from testbed.cli_common import sigterm_as_interrupt
    from testbed.workers.shard import Heartbeat, ShardRun, ShardSpec, Sync
    sync = Sync(Path(args.sync))
    status = "failed"
    try:
        from testbed.model import load_experiment
        exp = load_experiment(args.file)
        spec = ShardSpec.load(Path(args.spec))
        if spec.coordinator:
            sync.heartbeat = Heartbeat(spec.coordinator)
        from mininet.log import setLogLevel
        setLogLevel("warning")
        from testbed.run import run as run_experiment
        signal.signal(signal.SIGTERM, sigterm_as_interrupt)

        def on_event(e: dict) -> None:          # the worker's log: one JSON object a line
            sys.stdout.write(json.dumps(e, default=str) + "\n")
            sys.stdout.flush()
        result = run_experiment(exp, Path(args.results), on_event=on_event, shard=ShardRun(spec, sync))
        status = result.status
        return 0 if result.ok else 1
    finally:
        if sync.heartbeat is not None:
            sync.heartbeat.close()
        sync.mark(f"ended {status}")


def cmd_split(args) -> int:
    """One experiment spread over the inventory's workers; one results directory here."""
    import signal

    from testbed.cli_common import sigterm_as_interrupt
    from testbed.workers.split import split_run
    signal.signal(signal.SIGTERM, sigterm_as_interrupt)     # as Ctrl-C: every shard is ended, results kept
    run_dir, summary = split_run(Path(args.file), Path(args.inventory), Path(args.results),
                                 progress=lambda line: err.print(f"  {line}", markup=False, highlight=False))
    console.print(f"{summary.get('status', 'unknown')}: {summary.get('leechers_completed', '?')}/"
                  f"{summary.get('leechers', '?')} leechers completed over {len(summary.get('workers', {}))} "
                  f"worker(s); results: {run_dir}")
    for w, info in summary.get("workers", {}).items():
        if info.get("problem"):
            console.print(f"[yellow]worker {w}: {info['problem']}")
    return 0 if summary.get("status") == "complete" else 1


def cmd_harness(args) -> int:
    from testbed.workers import harness
    directory = Path(args.dir)
    if args.harness_command == "up":
        if (directory / "harness.json").exists():
            raise InputError(f"{directory}: a harness is already there (`testbed workers harness down {directory}`)")
        if not 1 <= args.count <= 61:
            raise InputError(f"count: a harness has 1 to 61 workers, not {args.count}")
        h = harness.Harness(args.count, directory)
        path = h.up()
        console.print(f"{args.count} worker(s) up, harness {h.tag}: inventory {path}")
        console.print(f"try: testbed workers check {path}")
        return 0
    if not (directory / "harness.json").exists():
        raise InputError(f"{directory}: no harness there (no harness.json)")
    h = harness.from_directory(directory)
    h.down()
    console.print(f"harness {h.tag} removed")
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("workers", help="several machines: check an Ansible inventory of workers, or make test workers")
    wsub = s.add_subparsers(dest="workers_command", required=True)
    b = wsub.add_parser("check", help="what each worker of an inventory has, by a read-only playbook")
    b.add_argument("inventory", help="an inventory in Ansible's format (its group `workers`)")
    b.add_argument("--json", action="store_true")
    b.add_argument("--clock", metavar="ADDRESS", help="also measure each worker's clock offset against a responder on "
                   "this machine's underlay ADDRESS (default: the inventory's testbed_coordinator, if set)")
    b.set_defaults(func=cmd_check)
    b = wsub.add_parser("prepare", help="set each worker up (packages, dockerd, sysctls, the testbed) with setup.sh")
    b.add_argument("inventory", help="an inventory in Ansible's format (its group `workers`)")
    b.set_defaults(func=cmd_prepare)
    b = wsub.add_parser("run", help="run an experiment whole on one worker; its results come back here")
    b.add_argument("file")
    b.add_argument("--inventory", required=True, help="an inventory in Ansible's format (its group `workers`)")
    b.add_argument("--worker", help="which worker (default: the inventory's first)")
    b.add_argument("--results", default="results", help="where the run directory goes (default: ./results)")
    b.set_defaults(func=cmd_run)
    b = wsub.add_parser("split", help="run one experiment spread over the inventory's workers (VXLAN-joined)")
    b.add_argument("file")
    b.add_argument("--inventory", required=True, help="an inventory in Ansible's format (its group `workers`)")
    b.add_argument("--results", default="results", help="where the run directory goes (default: ./results)")
    b.set_defaults(func=cmd_split)
    b = wsub.add_parser("shard", help="(started by `workers split` on each worker) this worker's share of a swarm")
    b.add_argument("file")
    b.add_argument("--spec", required=True, help="the shard's spec (JSON, from the coordinator)")
    b.add_argument("--sync", required=True, help="the directory the coordinator's playbook and the shard keep step in")
    b.add_argument("--results", required=True)
    b.set_defaults(func=cmd_shard)
    b = wsub.add_parser("harness", help="workers on this machine: namespaces with their own sshd")
    hsub = b.add_subparsers(dest="harness_command", required=True)
    h = hsub.add_parser("up", help="make COUNT workers and write DIR/inventory.yaml")
    h.add_argument("count", type=int)
    h.add_argument("--dir", default="workers-harness", help="where its keys and inventory go (default ./workers-harness)")
    h.set_defaults(func=cmd_harness)
    h = hsub.add_parser("down", help="remove the harness made in DIR")
    h.add_argument("dir", nargs="?", default="workers-harness")
    h.set_defaults(func=cmd_harness)
