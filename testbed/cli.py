"""The `testbed` command: the one error boundary.

A known error (TestbedError) prints one sentence and exits with its code (2 for bad
input or a missing prerequisite, 1 otherwise); an unknown one writes its traceback to a
log file and points to it. Exit 0 only for what completed.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from testbed import __version__
from testbed.errors import InputError, TestbedError

from testbed.cli_common import console, err
from testbed.cli_common import sigterm_as_interrupt as _sigterm
from testbed.cli_regress import add_parsers as add_regress_parsers
from testbed.cli_study import cmd_compare, cmd_report, cmd_study
from testbed.cli_workers import add_parsers as add_workers_parsers


# ------------------------------------------------------------------ commands

def cmd_validate(args) -> int:
    from testbed.model.study import is_study
    if args.timeline and (len(args.files) != 1 or is_study(args.files[0])):
        raise InputError("validate --timeline: name one experiment file (a study's arms each have their own: "
                         "validate the baseline experiment)")
    out = []
    for f in args.files:
        out.append(_validate_study(f) if is_study(f) else _validate_experiment(f, args))
        if out[-1] is None:
            return 0
    if args.json:
        sys.stdout.write(json.dumps(out if len(out) > 1 else out[0], indent=1) + "\n")
    else:
        for o in out:
            console.print(o["text"])
    return 0


def _validate_experiment(f: str, args) -> dict | None:
    from testbed.model import load_experiment
    from testbed.plan import TIMELINE_FIELDS, plan
    exp = load_experiment(f)
    n = sum(g.count for _, g in exp.groups())
    p = plan(exp, "validate-000000", repetition=args.repetition)
    if args.timeline:
        import csv
        w = csv.DictWriter(sys.stdout, fieldnames=TIMELINE_FIELDS)
        w.writeheader()
        w.writerows(ev.row() for ev in p.timeline)
        return None
    leechers = {h.name for h in p.by_role("leecher")}
    arrive = sum(1 for e in p.timeline if e.kind == "arrive" and e.host in leechers)
    bound = f"Kumar-Ross minimum {p.t_min_s:.1f}s" if p.t_min_s is not None else \
        "no Kumar-Ross bound (homes share their links)" if p.homes else "no Kumar-Ross bound (not a flash crowd)"
    text = (f"{f}: valid ({n} peers, topology {exp.topology.name}, {exp.repetitions} repetition(s); "
            f"{arrive} of {len(leechers)} leechers arrive within {p.horizon_s:g}s, {len(p.timeline)} planned events; "
            f"{bound})")
    warnings = []
    if p.t_min_s is not None and exp.timeout < p.t_min_s:
        warnings.append(f"the timeout ({exp.timeout:g}s) is below the Kumar-Ross minimum ({p.t_min_s:.1f}s): "
                        "no leecher can complete before it")
    text += "".join(f"\n[yellow]warning:[/] {w}" for w in warnings)
    return {"file": f, "kind": "experiment", "valid": True, "name": exp.name, "peers": n,
            "topology": exp.topology.name, "repetitions": exp.repetitions, "leechers": len(leechers),
            "leechers_arriving": arrive, "horizon_s": p.horizon_s, "planned_events": len(p.timeline),
            "t_min_s": p.t_min_s, "warnings": warnings, "text": text}


def _validate_study(f: str) -> dict:
    from testbed.model.study import load_study
    st = load_study(f)
    arms = [{"name": n, "peers": sum(g.count for _, g in e.groups())} for n, _, _, e in st.arms]
    text = (f"{f}: valid study ({len(st.arms)} arms: {', '.join(st.names)}; {st.study.repetitions} repetitions "
            f"each, {len(st.arms) * st.study.repetitions} runs; seed {st.study.seed})")
    return {"file": f, "kind": "study", "valid": True, "name": st.study.name, "arms": arms,
            "repetitions": st.study.repetitions, "runs": len(st.arms) * st.study.repetitions, "text": text}


def cmd_run(args) -> int:
    from testbed.model import load_experiment, resolved_yaml
    exp = load_experiment(args.file)
    if args.show_config:
        sys.stdout.write(resolved_yaml(exp))
        return 0
    if args.run_id:
        from testbed.plan import run_tag
        try:
            run_tag(args.run_id)
        except ValueError as exc:
            raise InputError(f"--run-id: {exc}") from None
    from mininet.log import setLogLevel
    setLogLevel("warning")
    from testbed import report
    from testbed.run import run as run_experiment
    signal.signal(signal.SIGTERM, _sigterm)
    results = Path(args.results)
    worst = 0
    for rep in range(1, exp.repetitions + 1):
        label = f" (repetition {rep}/{exp.repetitions})" if exp.repetitions > 1 else ""
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                      TimeElapsedColumn(), console=console, transient=False) as progress:
            task = progress.add_task(f"{exp.name}{label}: starting", total=None, info="")

            def on_event(e: dict) -> None:
                kind = e["kind"]
                if kind == "progress":
                    progress.update(task, description=f"{exp.name}{label}: swarm", total=e["total"],
                                    completed=e["done"],
                                    info=f"{e['done']}/{e['total']} done  {e['rate_down_Bps'] * 8 / 1e6:6.2f} Mbit/s "
                                         f" t={e['t']:5.1f}s  {e['online']} online"
                                         + (f"  (min {e['t_min_s']:.1f}s)" if e["t_min_s"] is not None else ""))
                elif kind == "run_start":
                    progress.console.print(f"run directory: {e['run_dir']}")
                elif kind in ("containers", "network", "tracker_started", "clients_ready", "teardown"):
                    progress.update(task, description=f"{exp.name}{label}: {kind.replace('_', ' ')}")
                elif kind == "client_error":
                    progress.console.print(f"[yellow]{e['host']}: {e['error']}")
                elif kind == "warning":
                    progress.console.print(f"[yellow]warning: {e['message']}")

            result = run_experiment(exp, results, on_event, repetition=rep, keep_data=args.keep_data,
                                      run_id=args.run_id if exp.repetitions == 1 else None)
        report.plots(result.run_dir)
        report.render(result.run_dir, console)
        console.print(f"results: {result.run_dir}")
        if result.summary.get("error") == "interrupted":
            # Ctrl-C or SIGTERM: this run is torn down and marked partial; start no further repetition
            return 130
        worst = max(worst, 0 if result.ok else 1)
    return worst


def cmd_matrix(args) -> int:
    from rich.table import Table

    from testbed import matrix
    from testbed.clients import DRIVERS
    clients = args.clients.split(",") if args.clients else list(DRIVERS)
    unknown = [c for c in clients if c not in DRIVERS]
    if unknown:
        raise InputError(f"--clients: unknown client '{unknown[0]}' (known: {', '.join(DRIVERS)})")
    from testbed.units import UnitError, parse_size
    try:
        parse_size(args.size)
    except UnitError as exc:
        raise InputError(f"--size: {exc}") from None
    out = Path(args.results)
    n = len(clients) ** 2
    with Progress(TextColumn("[bold]interoperability"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("pairs", total=n)

        def on_pair(e: dict) -> None:
            progress.advance(task)
            if not e.get("ok"):
                progress.console.print(f"[red]{e['seeder']} -> {e['leecher']}: {e['status']} {e.get('error') or ''}")

        result = matrix.run_matrix(clients, args.size, out, args.parallel, on_pair)
    t = Table(title="seeder (rows) -> leecher (columns): completion time, SHA-256 checked", title_justify="left")
    t.add_column("seeder \\ leecher")
    for c in clients:
        t.add_column(c, justify="right")
    cells = {(e["seeder"], e["leecher"]): e for e in result["pairs"]}
    for s in clients:
        t.add_row(s, *[cell(cells[s, le]) for le in clients])
    console.print(t)
    console.print(f"{result['passed']}/{result['total']} pairs passed with every client's defaults; "
                  f"{result['explained']} more pass with transmission's uTP off (*); {out / 'matrix.json'}")
    if result["explained"]:
        console.print(f"* {matrix.TRANSMISSION_UTP}")
    return 0 if result["passed"] + result["explained"] == result["total"] else 1


def cell(e: dict) -> str:
    if e.get("ok"):
        return f"{e['completion_s']:.0f}s ok"
    if e.get("explained"):
        return f"[yellow]{e['status']}; {e['without_transmission_utp']['completion_s']:.0f}s ok*"
    return f"[red]{e['status']}"


def cmd_calibrate(args) -> int:
    from rich.table import Table

    from testbed import calibrate
    from testbed.units import fmt_rate
    sweep = [x for x in args.sweep.split(",") if x.strip()]
    n = len(calibrate.targets(args.profiles or None, sweep))
    if args.trace:
        from testbed import traces
        try:
            traces.load(str(traces.resolve(args.trace, Path.cwd())))
        except traces.TraceError as exc:
            raise InputError(f"calibrate --trace: {exc}") from None
    from mininet.log import setLogLevel
    setLogLevel("warning")
    signal.signal(signal.SIGTERM, _sigterm)
    with Progress(TextColumn("[bold]calibrate"), BarColumn(), TextColumn("{task.completed}/{task.total} {task.fields[info]}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("links", total=n, info="")

        def on_row(row: dict) -> None:
            progress.update(task, advance=1, info=row["link"])
        out, summary = calibrate.run(args.profiles or None, sweep, args.trace, Path(args.results), args.shaper,
                                     args.seconds, args.pings, args.trace_seconds, on_row)
    t = Table(title=f"configured vs measured (shaper: {summary['shaper']})", title_justify="left")
    for col in ("link", "up", "down", "RTT", "RTT sd (jitter)", "loss (round trip)", "ok"):
        t.add_column(col, justify="left" if col == "link" else "right")
    for r in summary["rows"]:
        ok = calibrate.passed(r)
        t.add_row(r["link"], f"{fmt_rate(r['up_bps'])} -> {fmt_rate(r['up_measured_bps'])}",
                  f"{fmt_rate(r['down_bps'])} -> {fmt_rate(r['down_measured_bps'])}",
                  f"{r['rtt_expected_ms']:.1f} -> {r['rtt_ms']:.1f} ms",
                  f"{r['rtt_sd_expected_ms']:.1f} -> {r['rtt_sd_ms']:.1f} ms",
                  f"{100 * r['loss_expected_rt']:.2f} % -> {r['lost']}/{r['pings']}",
                  "[green]yes" if ok else "[red]NO")
    console.print(t)
    if summary.get("trace"):
        tr = summary["trace"]
        console.print(f"trace {tr['trace']}: {tr['within_10pct']}/{tr['seconds']} seconds within 10 % of the trace, "
                      f"median error {100 * tr['median_abs_error']:.1f} %; plot: {out / 'trace.png'}")
    console.print(f"results: {out}  (calibration.md is the table for the README)")
    bad = [r["link"] for r in summary["rows"] if not calibrate.passed(r)]
    return 1 if bad or summary["status"] != "complete" else 0


def cmd_images(args) -> int:
    from testbed import images
    from testbed.runtime import docker_client
    client = docker_client()
    wanted = args.names or [i.name for i in images.all_images()]
    for name in wanted:
        img = images.load_image(name)
        if images.exists(client, img) and not args.force:
            console.print(f"{img.tag}: up to date")
            continue
        t = time.monotonic()
        log = Path(tempfile.gettempdir()) / "testbed-images" / f"{name}.log"
        with console.status(f"building {img.tag} from Debian packages ({', '.join(img.spec.packages)})"):
            images.build(img, log)
        console.print(f"{img.tag}: built in {time.monotonic() - t:.0f}s")
    return 0


def cmd_doctor(args) -> int:
    from testbed import doctor
    failed = 0
    checks = doctor.checks()
    for c in checks:
        if not c.ok and args.fix and c.apply:
            c.apply()
            c.ok, c.detail = True, c.detail + " -> fixed"
    if args.json:
        sys.stdout.write(json.dumps([{"name": c.name, "ok": c.ok, "required": c.required, "detail": c.detail,
                                      "fix": None if c.ok else c.fix} for c in checks], indent=1) + "\n")
        return 2 if any(c.required and not c.ok for c in checks) else 0
    for c in checks:
        mark = "[green]ok  " if c.ok else ("[red]FAIL" if c.required else "[yellow]warn")
        console.print(f"{mark}[/] {c.name:18} {c.detail}")
        if not c.ok:
            console.print(f"     {'':18} fix: {c.fix}")
            failed += c.required
    return 2 if failed else 0


def cmd_clean(args) -> int:
    from testbed import cleanup
    from testbed.plan import run_tag
    from testbed.runtime import docker_client
    if args.run_id:
        try:
            run_tag(args.run_id)
        except ValueError as exc:
            raise InputError(f"run id: {exc}") from None
    removed = cleanup.clean(docker_client(), args.run_id)
    what = f"run {args.run_id}" if args.run_id else "all runs"
    console.print(f"cleaned {what}: " + ", ".join(f"{v} {k}" for k, v in removed.items()))
    return 0


# ------------------------------------------------------------------ parser

def parser() -> argparse.ArgumentParser:
    from testbed.calibrate import DEFAULT_SWEEP
    p = argparse.ArgumentParser(prog="testbed", description="Real BitTorrent swarms on emulated networks.")
    p.add_argument("--version", action="version", version=f"testbed {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("run", help="run an experiment file")
    s.add_argument("file")
    s.add_argument("--show-config", action="store_true", help="print the fully resolved experiment and exit")
    s.add_argument("--results", default="results", help="where run directories go (default: ./results)")
    s.add_argument("--keep-data", action="store_true", help="keep the content and downloaded files")
    s.add_argument("--run-id", help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("matrix", help="interoperability: a two-peer swarm for every (seeding, leeching) client pair")
    s.add_argument("--clients", help="comma-separated (default: every client)")
    s.add_argument("--size", default="2MiB", help="content size per pair (default 2MiB)")
    s.add_argument("--parallel", type=int, default=3, help="pairs run at once (default 3)")
    s.add_argument("--results", default="results/matrix", help="matrix directory (default results/matrix)")
    s.set_defaults(func=cmd_matrix)

    s = sub.add_parser("calibrate", help="measure each link profile's rate, RTT and loss against its configuration")
    s.add_argument("profiles", nargs="*", help="profile names (default: every profile in topologies/profiles.yaml)")
    s.add_argument("--sweep", default=",".join(DEFAULT_SWEEP),
                   help=f"plain rate-only links to measure too, comma-separated (default {','.join(DEFAULT_SWEEP)}; "
                        "'' for none)")
    s.add_argument("--trace", help="a trace to follow on one download for --trace-seconds, plotted in trace.png")
    s.add_argument("--trace-seconds", type=float, default=40.0)
    s.add_argument("--seconds", type=float, default=5.0, help="UDP seconds per direction (default 5)")
    s.add_argument("--pings", type=int, default=500, help="echoes per link (default 500)")
    s.add_argument("--shaper", choices=("auto", "netem", "userspace"), default="auto")
    s.add_argument("--results", default="results", help="where the calibration directory goes (default ./results)")
    s.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("validate", help="check experiment or study files without running them")
    s.add_argument("--timeline", action="store_true", help="print the planned events (timeline.csv) instead")
    s.add_argument("--repetition", type=int, default=1, help="whose draws --timeline shows (default 1)")
    s.add_argument("--json", action="store_true", help="what was found, as JSON")
    s.add_argument("files", nargs="+", metavar="file")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("report", help="report a run or a study: table, plots, report.html and report.md")
    s.add_argument("path", metavar="run_or_study_dir")
    s.add_argument("--out", help="write the report here instead of into the directory it reads")
    s.add_argument("--json", action="store_true", help="the metrics as JSON on standard output")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("compare", help="the controlled-vs-real-world table of two runs or studies")
    s.add_argument("a", help="RUN_DIR, STUDY_DIR (its baseline) or STUDY_DIR:ARM")
    s.add_argument("b", help="the same forms; the difference is b - a")
    s.add_argument("--metric", action="append", help="only this metric (repeatable)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("study", help="studies: a baseline and its variants, repeated with paired seeds")
    ssub = s.add_subparsers(dest="study_command", required=True)
    b = ssub.add_parser("run", help="run every arm of a study file, every repetition")
    b.add_argument("file")
    b.add_argument("--results", default="results", help="where the study directory goes (default ./results)")
    b.add_argument("--out", help="the study directory itself (must not exist)")
    b.set_defaults(func=cmd_study)
    b = ssub.add_parser("resume", help="run what an interrupted study has not finished")
    b.add_argument("dir")
    b.set_defaults(func=cmd_study)

    add_regress_parsers(sub)
    add_workers_parsers(sub)

    s = sub.add_parser("images", help="container images")
    isub = s.add_subparsers(dest="images_command", required=True)
    b = isub.add_parser("build", help="build images from Debian packages (skips up-to-date ones)")
    b.add_argument("names", nargs="*")
    b.add_argument("--force", action="store_true")
    b.set_defaults(func=cmd_images)

    s = sub.add_parser("doctor", help="check the machine's prerequisites, each with its fix")
    s.add_argument("--fix", action="store_true", help="apply the fixes that are safe to apply")
    s.add_argument("--json", action="store_true", help="each check as JSON")
    s.set_defaults(func=cmd_doctor)

    s = sub.add_parser("clean", help="remove containers, veths, bridges and namespaces of runs")
    s.add_argument("run_id", nargs="?", help="one run (default: every run)")
    s.set_defaults(func=cmd_clean)
    return p


def _one_line(message: str, limit: int = 300) -> str:
    """The sentence as one line of at most `limit` characters: a key or value quoted in it
    may hold a line break, or be long."""
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    return message if len(message) <= limit else message[:limit - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except TestbedError as exc:
        err.print(f"testbed: {_one_line(str(exc))}", markup=False, highlight=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("testbed: interrupted")
        return 130
    except Exception:
        log = Path(tempfile.gettempdir()) / f"testbed-crash-{int(time.time())}.log"
        log.write_text(traceback.format_exc())
        exc = sys.exc_info()[1]
        err.print(f"testbed: unexpected error ({type(exc).__name__}: {_one_line(str(exc), 200)}); traceback in {log}",
                  markup=False, highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
