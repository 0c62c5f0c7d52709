"""The CI gate's commands: `baseline create|update` and `regress` (parser and error boundary
stay in testbed.cli).

    testbed baseline create EXPERIMENT --out BASE.json [--repetitions N] [--metric M ...]
    testbed baseline update BASE.json EXPERIMENT [--repetitions N]
    testbed regress EXPERIMENT --baseline BASE.json [--junit FILE] [--markdown FILE] [--strict]

Exit status of regress: 0 no regression, 1 a regression (each named), 2 invalid input or a
baseline that does not fit (another experiment; with --strict, another environment).
"""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from testbed.cli_common import console, err, sigterm_as_interrupt
from testbed.errors import InputError


def _runs(args, exp) -> list[Path]:
    """Run the experiment's repetitions (or take --from-runs) and return their directories."""
    if args.from_runs:
        dirs = [Path(d) for d in args.from_runs]
        missing = [d for d in dirs if not (d / "summary.json").is_file()]
        if missing:
            raise InputError(f"--from-runs: {missing[0]} is not a finished run directory (no summary.json)")
        return dirs
    from mininet.log import setLogLevel
    setLogLevel("warning")
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from testbed.run import run as run_experiment
    signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    n = args.repetitions or exp.repetitions
    out = []
    # with --json, standard output is the JSON document alone: progress goes to stderr
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=err if getattr(args, "json", False) else console) as progress:
        whole = progress.add_task(f"{exp.name}: {n} repetitions", total=n, info="")

        def on_event(e: dict) -> None:
            if e["kind"] == "progress":
                progress.update(whole, info=f"{e['done']}/{e['total']} done  t={e['t']:5.1f}s")
        for rep in range(1, n + 1):
            result = run_experiment(exp, Path(args.results), on_event, repetition=rep)
            if result.summary.get("error") == "interrupted":
                raise KeyboardInterrupt
            out.append(result.run_dir)
            progress.update(whole, advance=1, info=f"r{rep}: {result.status}")
    return out


def cmd_baseline(args) -> int:
    from testbed.analysis import regress
    from testbed.model import load_experiment
    from testbed.results import write_json
    if args.baseline_command == "create":
        exp = load_experiment(args.file)
        gates = regress.DEFAULT_METRICS
        if args.metric:
            unknown = [m for m in args.metric if m.split(":")[0].split("[")[0] not in regress.METRICS
                       or m.partition(":")[2] not in ("", "higher", "lower")]
            if unknown:
                raise InputError(f"--metric: unknown metric '{unknown[0]}' (a metric of `testbed report`, "
                                 "optionally :higher or :lower, the way it gets worse)")
            gates = {m.split(":")[0]: regress.worse(m) for m in args.metric}
        base = regress.make_baseline(_complete(regress.measure(_runs(args, exp)), exp.name), gates, args.tolerance)
        out = Path(args.out)
    else:
        out = Path(args.baseline)
        old = regress.load_baseline(out)
        exp = load_experiment(args.file)
        if exp.name != old["experiment"]:
            raise InputError(f"{args.baseline} is a baseline of '{old['experiment']}', not of '{exp.name}'")
        base = {**regress.make_baseline(_complete(regress.measure(_runs(args, exp)), exp.name)), "rule": old["rule"]}
    write_json(out, base)
    means = ", ".join(f"{m} {_mean(base['metrics'].get(m))}" for m in base["rule"]["metrics"])
    console.print(f"baseline {out}: {len(base['runs'])} runs of {base['experiment']}; {means}")
    return 0


def _complete(measured: dict, name: str) -> dict:
    """A baseline is made of complete runs of the experiment named, nothing else."""
    from testbed.errors import TestbedError
    if measured["experiment"] != name:
        raise InputError(f"the runs are of '{measured['experiment']}', not of '{name}'")
    bad = [r for r in measured["runs"] if r["status"] != "complete"]
    if bad:
        raise TestbedError(f"run {bad[0]['run_id']} did not complete ({bad[0]['status']}); a baseline is made of "
                           "complete runs")
    return measured


def _mean(xs) -> str:
    xs = [x for x in (xs or []) if x is not None]
    return f"{sum(xs) / len(xs):.4g}" if xs else "-"


def cmd_regress(args) -> int:
    from testbed.analysis import regress, regress_out
    from testbed.model import load_experiment
    base = regress.load_baseline(Path(args.baseline))
    exp = load_experiment(args.file)
    if exp.name != base["experiment"]:
        raise InputError(f"--baseline: {args.baseline} is a baseline of '{base['experiment']}', not of "
                         f"'{exp.name}'")
    unknown = [m for m in args.metric or () if m not in base["rule"]["metrics"]]
    if unknown:
        raise InputError(f"--metric: '{unknown[0]}' is not gated by the baseline (it gates: "
                         f"{', '.join(base['rule']['metrics'])})")
    runs = _runs(args, exp)
    measured = regress.measure(runs)
    if measured["experiment"] != exp.name:
        raise InputError(f"--from-runs: the runs are of '{measured['experiment']}', not of '{exp.name}'")
    env = regress.differences(base["environment"], measured["environment"])
    warnings = []
    if env:
        warnings.append("the environment differs from the baseline's: " + "; ".join(env))
    if measured["experiment_hash"] != base["experiment_hash"]:
        warnings.append(f"the experiment differs from the baseline's (hash {base['experiment_hash']} -> "
                        f"{measured['experiment_hash']})")
    if warnings and args.strict:
        raise InputError(f"--strict: {warnings[0]}")
    for w in warnings:
        err.print(f"testbed: warning: {w}", markup=False, highlight=False)
    verdicts = regress.compare_to_baseline(base, measured, args.metric)
    report = regress_out.Report(exp.name, args.baseline, verdicts, warnings, [str(d) for d in runs],
                                base["rule"].get("alpha", regress.ALPHA))
    if args.junit:
        Path(args.junit).write_text(regress_out.junit_xml(report))
    md = regress_out.markdown(report)
    if args.markdown:
        Path(args.markdown).write_text(md)
    if args.json:
        sys.stdout.write(json.dumps(report.as_dict(), indent=1) + "\n")
    else:
        console.print(md, markup=False, highlight=False)
    bad = [v for v in verdicts if v.regressed]
    for v in bad:
        err.print(f"testbed: regression: {v.reason}", markup=False, highlight=False)
    return 1 if bad else 0


def add_parsers(sub) -> None:
    def common(p, runs_help: str) -> None:
        p.add_argument("--repetitions", type=int, help="how many runs (default: the experiment's repetitions)")
        p.add_argument("--results", default="results", help="where the run directories go (default ./results)")
        p.add_argument("--from-runs", nargs="+", metavar="RUN_DIR", help=runs_help)

    s = sub.add_parser("baseline", help="a baseline of an experiment's metrics for `testbed regress`")
    bsub = s.add_subparsers(dest="baseline_command", required=True)
    b = bsub.add_parser("create", help="run the experiment's repetitions and write their metrics")
    b.add_argument("file")
    b.add_argument("--out", required=True, help="the baseline file to write (JSON)")
    b.add_argument("--metric", action="append", help="a metric to gate on (repeatable; default: median and p95 "
                                                     "completion time, completion fraction, origin offload)")
    b.add_argument("--tolerance", type=float, default=0.25, help="relative change allowed (default 0.25)")
    common(b, "measure these finished runs instead of running")
    b.set_defaults(func=cmd_baseline)
    b = bsub.add_parser("update", help="measure again, keeping the baseline's rule")
    b.add_argument("baseline")
    b.add_argument("file")
    common(b, "measure these finished runs instead of running")
    b.set_defaults(func=cmd_baseline)

    s = sub.add_parser("regress", help="run an experiment and fail (exit 1) if it regressed against a baseline")
    s.add_argument("file")
    s.add_argument("--baseline", required=True)
    s.add_argument("--metric", action="append", help="judge only this metric (repeatable)")
    s.add_argument("--strict", action="store_true", help="refuse a baseline from another environment or experiment")
    s.add_argument("--junit", help="write JUnit XML here (one test case per metric)")
    s.add_argument("--markdown", help="write a Markdown summary here (for a pull-request comment)")
    s.add_argument("--json", action="store_true")
    common(s, "judge these finished runs instead of running")
    s.set_defaults(func=cmd_regress)
