"""The CI gate: a baseline of metric distributions, and the rule that calls a change a
regression. Reads results directories and baseline files only.

The rule, stated: for each gated metric, a regression is a change in the worse direction
whose relative size, on the mean over repetitions, exceeds the metric's tolerance, AND
which Welch's one-sided t-test finds significant at alpha (0.05 by default). Both are
needed: the test alone flags tiny but consistent shifts (a 2 % slower median is real, and
no reason to fail a build), the tolerance alone flags noise when the repetitions are few.
A metric whose baseline values are all equal (a completion fraction of 1.0) regresses on
the tolerance alone once every candidate value is worse than all of them.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy import stats as st

from testbed.analysis.metrics import METRICS, run_metrics
from testbed.errors import InputError

FORMAT = "testbed-baseline/1"
# the gated metrics by default, and which way is worse
DEFAULT_METRICS = {"completion_median_s": "higher", "completion_p95_s": "higher", "completed_fraction": "lower",
                   "origin_offload": "lower"}
# which way is worse for the metrics a baseline may gate on (any other: higher is worse)
LOWER_IS_WORSE = {"completed_fraction", "origin_offload", "kumar_ross_efficiency", "share_ratio", "bytes_up",
                  "bytes_down"}
DEFAULT_TOLERANCE = 0.25
ALPHA = 0.05
FINGERPRINT_KEYS = ("testbed", "kernel", "cpus", "shaper", "images")


@dataclass
class Verdict:
    metric: str
    worse: str                       # "higher" or "lower"
    baseline: list[float]
    candidate: list[float]
    baseline_mean: float | None
    candidate_mean: float | None
    change: float | None             # relative change of the mean, signed (+ = higher)
    p_value: float | None            # Welch one-sided, in the worse direction
    tolerance: float
    regressed: bool
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def fingerprint(manifest: dict) -> dict:
    """What must match for two measurements to be comparable, from a run's manifest."""
    return {"testbed": manifest.get("testbed", {}).get("version"), "kernel": manifest.get("host", {}).get("kernel"),
            "cpus": manifest.get("host", {}).get("cpus"), "shaper": manifest.get("shaper"),
            "images": {k: v["tag"] for k, v in sorted(manifest.get("images", {}).items())}}


def worse(metric: str) -> str:
    """'lower' or 'higher': which way a metric gets worse (`name:lower` in --metric overrides)."""
    name, _, way = metric.partition(":")
    return way or ("lower" if name.split("[")[0] in LOWER_IS_WORSE else "higher")


def experiment_hash(run_dir: Path) -> str:
    """The experiment as carried out, without the fields that do not change the swarm
    (repetitions, description)."""
    import yaml
    data = yaml.safe_load((run_dir / "experiment.yaml").read_text())
    for key in ("repetitions", "description"):
        data.pop(key, None)
    return hashlib.sha256(json.dumps(_set(data), sort_keys=True).encode()).hexdigest()[:16]


def _set(value):
    """Without keys left unset (null, or holding only unset keys): a key the schema gained
    since the baseline, at its unset default, changes the resolved file's text, not the swarm
    (`limits` and `capture` did)."""
    if isinstance(value, dict):
        kept = {k: _set(v) for k, v in value.items() if v is not None}
        return {k: v for k, v in kept.items() if v != {}}
    if isinstance(value, list):
        return [_set(v) for v in value]
    return value


def measure(run_dirs: list[Path]) -> dict:
    """The metric values, fingerprint and experiment hash of a set of runs of one experiment."""
    if not run_dirs:
        raise InputError("no run to measure")
    metrics: dict[str, list[float | None]] = {}
    runs = []
    for d in run_dirs:
        m = run_metrics(d)
        runs.append({"run_id": m["run_id"], "status": m["status"], "repetition": m["repetition"]})
        for k in set(metrics) | set(m["metrics"]):
            metrics.setdefault(k, [None] * (len(runs) - 1)).append(m["metrics"].get(k))
    manifests = [json.loads((d / "manifest.json").read_text()) for d in run_dirs]
    hashes = {experiment_hash(d) for d in run_dirs}
    if len(hashes) > 1:
        raise InputError(f"the runs are of {len(hashes)} different experiments; a baseline is of one")
    return {"experiment": manifests[0].get("experiment"), "experiment_hash": hashes.pop(),
            "environment": fingerprint(manifests[0]), "runs": runs, "metrics": metrics}


def make_baseline(measured: dict, gates: dict[str, str] | None = None, tolerance: float = DEFAULT_TOLERANCE,
                  alpha: float = ALPHA) -> dict:
    gates = gates or DEFAULT_METRICS
    return {"format": FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **measured, "rule": {"metrics": gates, "tolerance": {k: tolerance for k in gates}, "alpha": alpha,
                                 "test": "relative change of the mean beyond the tolerance, and Welch's one-sided "
                                         "t-test significant at alpha"}}


def load_baseline(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"--baseline: no such file {path}") from None
    except ValueError as exc:
        raise InputError(f"{path}: not a baseline file (not JSON: {exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{path}: not a baseline file (format is not {FORMAT}); make one with `testbed baseline "
                         "create`")
    for key in ("experiment", "experiment_hash", "environment", "metrics", "rule"):
        if key not in data:
            raise InputError(f"{path}: missing required key '{key}' (make it with `testbed baseline create`)")
    if not isinstance(data["rule"], dict) or not isinstance(data["rule"].get("metrics"), dict):
        raise InputError(f"{path}: rule.metrics: must map each gated metric to 'higher' or 'lower'")
    unknown = [m for m in data["rule"]["metrics"] if m.split("[")[0] not in METRICS]
    if unknown:
        raise InputError(f"{path}: rule.metrics: unknown metric '{unknown[0]}'")
    return data


def differences(a: dict, b: dict) -> list[str]:
    """Which environment fields differ, as 'key: a -> b'."""
    out = []
    for k in FINGERPRINT_KEYS:
        if a.get(k) != b.get(k):
            if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
                out += [f"{k}.{n}: {a[k].get(n)} -> {b[k].get(n)}" for n in sorted(set(a[k]) | set(b[k]))
                        if a[k].get(n) != b[k].get(n)]
            else:
                out.append(f"{k}: {a.get(k)} -> {b.get(k)}")
    return out


def _clean(xs) -> list[float]:
    return [float(x) for x in xs if x is not None and not math.isnan(float(x))]


def judge(metric: str, worse: str, base: list, cand: list, tolerance: float, alpha: float = ALPHA) -> Verdict:
    b, c = _clean(base), _clean(cand)
    if not b or not c:
        return Verdict(metric, worse, b, c, None, None, None, None, tolerance, not c and bool(b),
                       "no candidate value (no peer completed?)" if not c else "no baseline value")
    mb, mc = float(np.mean(b)), float(np.mean(c))
    change = (mc - mb) / abs(mb) if mb else (0.0 if mc == mb else math.copysign(math.inf, mc - mb))
    bad = change if worse == "higher" else -change          # > 0: worse
    if len(b) > 1 and len(c) > 1 and (np.std(b) > 0 or np.std(c) > 0):
        p = float(st.ttest_ind(c, b, equal_var=False, alternative="greater" if worse == "higher" else "less").pvalue)
    else:   # no spread to test against: every candidate value worse than every baseline value
        p = 0.0 if (min(c) > max(b) if worse == "higher" else max(c) < min(b)) else 1.0
    regressed = bad > tolerance and p < alpha
    word = "worse" if bad > 0 else "better"
    reason = (f"{metric} {word} by {abs(change) * 100:.1f} % (mean {mb:.4g} -> {mc:.4g}; tolerance "
              f"{tolerance * 100:.0f} %, one-sided Welch p = {p:.3g})")
    return Verdict(metric, worse, b, c, mb, mc, change, p, tolerance, regressed, reason)


def incomplete(measured: dict) -> Verdict | None:
    """A failing verdict when a run did not complete (timed out, failed, a peer's file
    differing from the origin's): a build that breaks runs is a regression, whatever the
    metrics of the runs that did complete say."""
    bad = [r for r in measured["runs"] if r["status"] != "complete"]
    if not bad:
        return None
    n = len(measured["runs"])
    return Verdict("runs_complete", "lower", [], [float(n - len(bad))], None, float(n - len(bad)), None, None, 0.0,
                   True, f"{len(bad)} of {n} runs did not complete: " +
                   ", ".join(f"{r['run_id']} ({r['status']})" for r in bad))


def compare_to_baseline(baseline: dict, measured: dict, only: list[str] | None = None) -> list[Verdict]:
    rule = baseline["rule"]
    unknown = [m for m in only or () if m not in rule["metrics"]]
    if unknown:
        raise InputError(f"--metric: '{unknown[0]}' is not gated by the baseline (it gates: "
                         f"{', '.join(rule['metrics'])})")
    out = [v for v in [incomplete(measured)] if v]
    for metric, worse in rule["metrics"].items():
        if only and metric not in only:
            continue
        out.append(judge(metric, worse, baseline["metrics"].get(metric, []), measured["metrics"].get(metric, []),
                         rule["tolerance"].get(metric, DEFAULT_TOLERANCE), rule.get("alpha", ALPHA)))
    return out
