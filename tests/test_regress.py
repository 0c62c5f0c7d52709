"""The CI gate without the machine: the rule, the baseline file, JUnit XML against the schema
CI systems read, the Markdown summary and the exit codes. Real runs: tests/integration/
test_regress.py and .ci/run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import xmlschema
import yaml
from scipy import stats as sst

from testbed.analysis import regress, regress_out
from testbed.errors import InputError
from tests.test_study import fake_run

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = xmlschema.XMLSchema(str(ROOT / "tests" / "data" / "junit-10.xsd"))
MANIFEST = {"experiment": "e", "testbed": {"version": "0.1.0"}, "host": {"kernel": "6.1", "cpus": 2},
            "shaper": "userspace", "images": {"transmission": {"tag": "testbed/transmission:abc"}}}


def runs(tmp_path: Path, name: str, medians: list[float], **manifest) -> list[Path]:
    out = []
    for i, t in enumerate(medians, 1):
        d = fake_run(tmp_path / f"{name}{i}", [t, t, t], 100, i)
        (d / "manifest.json").write_text(json.dumps({**MANIFEST, **manifest}))
        (d / "experiment.yaml").write_text(yaml.safe_dump({"name": "e", "seed": 1, "repetitions": 3}))
        out.append(d)
    return out


def test_the_rule_needs_both_the_tolerance_and_significance():
    base = [30.0, 31.0, 29.0, 30.5, 29.5]
    slow = regress.judge("completion_median_s", "higher", base, [45.0, 46.0, 44.0], 0.25)
    assert slow.regressed and slow.change == pytest.approx(0.5)
    ref = sst.ttest_ind([45.0, 46.0, 44.0], base, equal_var=False, alternative="greater").pvalue
    assert slow.p_value == pytest.approx(ref)
    # consistent but small: significant, within the tolerance
    assert not regress.judge("completion_median_s", "higher", base, [33.0, 33.5, 32.5], 0.25).regressed
    # large but noisy: beyond the tolerance, not significant
    assert not regress.judge("completion_median_s", "higher", base, [20.0, 80.0, 25.0], 0.25).regressed
    # better is never a regression; lower-is-worse metrics turn around
    assert not regress.judge("completion_median_s", "higher", base, [10.0, 11.0, 10.5], 0.25).regressed
    assert regress.judge("completed_fraction", "lower", [1, 1, 1], [0.5, 0.5, 0.6], 0.25).regressed
    assert not regress.judge("completed_fraction", "lower", [1, 1, 1], [1, 1, 1], 0.25).regressed
    # nothing completed at all: no candidate value is a regression
    assert regress.judge("completion_median_s", "higher", base, [None, None], 0.25).regressed


def test_baseline_round_trip_and_the_verdicts(tmp_path):
    base = regress.make_baseline(regress.measure(runs(tmp_path, "b", [30.0, 31.0, 29.0])))
    path = tmp_path / "base.json"
    path.write_text(json.dumps(base))
    loaded = regress.load_baseline(path)
    assert loaded["metrics"]["completion_median_s"] == [30.0, 31.0, 29.0]
    assert loaded["environment"]["images"] == {"transmission": "testbed/transmission:abc"}
    verdicts = regress.compare_to_baseline(loaded, regress.measure(runs(tmp_path, "c", [45.0, 47.0, 46.0])))
    assert [v.metric for v in verdicts if v.regressed] == ["completion_median_s", "completion_p95_s"]


def test_bad_baselines_are_refused_in_one_sentence(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not a baseline file"):
        regress.load_baseline(bad)
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(InputError, match="testbed baseline create"):
        regress.load_baseline(bad)
    with pytest.raises(InputError, match="no such file"):
        regress.load_baseline(tmp_path / "none.json")


def test_environment_differences_are_named():
    a = regress.fingerprint(MANIFEST)
    b = regress.fingerprint({**MANIFEST, "shaper": "netem",
                             "images": {"transmission": {"tag": "testbed/transmission:def"}}})
    assert regress.differences(a, b) == ["shaper: userspace -> netem",
                                         "images.transmission: testbed/transmission:abc -> testbed/transmission:def"]


def test_junit_xml_validates_against_the_ci_schema_and_names_the_metric(tmp_path):
    base = [30.0, 31.0, 29.0]
    rep = regress_out.Report("ci-small", "base.json", [
        regress.judge("completion_median_s", "higher", base, [45.0, 46.0, 44.0], 0.25),
        regress.judge("completed_fraction", "lower", [1, 1, 1], [1, 1, 1], 0.25)], ["the environment differs"])
    xml = regress_out.junit_xml(rep)
    SCHEMA.validate(xml)
    doc = SCHEMA.to_dict(xml)
    suite = doc["testsuite"][0]
    assert suite["@tests"] == "2" and suite["@failures"] == "1"
    failed = [c for c in suite["testcase"] if "failure" in c]
    assert [c["@name"] for c in failed] == ["completion_median_s"]
    # the schema is a real check: a test case without a name does not pass it
    assert not SCHEMA.is_valid(xml.replace('name="completed_fraction" ', ""))
    md = regress_out.markdown(rep)
    assert "**1 regression(s)**: completion_median_s" in md and "REGRESSED" in md and "> warning:" in md


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_regress_exit_codes_from_finished_runs(tmp_path):
    b = runs(tmp_path, "b", [30.0, 31.0, 29.0])
    exp = tmp_path / "e.yaml"
    exp.write_text((ROOT / "experiments" / "ci" / "small.yaml").read_text().replace("name: ci-small", "name: e"))
    r = run_cli("baseline", "create", str(exp), "--out", str(tmp_path / "base.json"), "--from-runs", *map(str, b))
    assert r.returncode == 0, r.stderr
    same = runs(tmp_path, "s", [30.5, 29.5, 30.0])
    r = run_cli("regress", str(exp), "--baseline", str(tmp_path / "base.json"), "--from-runs", *map(str, same),
                "--junit", str(tmp_path / "j.xml"))
    assert r.returncode == 0, r.stdout + r.stderr
    SCHEMA.validate(str(tmp_path / "j.xml"))
    slow = runs(tmp_path, "x", [45.0, 46.0, 44.0])
    r = run_cli("regress", str(exp), "--baseline", str(tmp_path / "base.json"), "--from-runs", *map(str, slow),
                "--markdown", str(tmp_path / "pr.md"))
    assert r.returncode == 1 and "regression: completion_median_s worse by 50.0 %" in r.stderr
    assert "REGRESSED" in (tmp_path / "pr.md").read_text()
    other = runs(tmp_path, "o", [30.0, 31.0, 29.0], shaper="netem")
    r = run_cli("regress", str(exp), "--baseline", str(tmp_path / "base.json"), "--from-runs", *map(str, other))
    assert r.returncode == 0 and "warning: the environment differs from the baseline's: shaper" in r.stderr
    r = run_cli("regress", str(exp), "--baseline", str(tmp_path / "base.json"), "--from-runs", *map(str, other),
                "--strict")
    assert r.returncode == 2 and "--strict" in r.stderr
    r = run_cli("regress", "experiments/quickstart.yaml", "--baseline", str(tmp_path / "base.json"))
    assert r.returncode == 2 and "is a baseline of 'e', not of 'quickstart'" in r.stderr


def test_a_run_that_did_not_complete_is_a_regression_and_typos_are_refused(tmp_path):
    b = runs(tmp_path, "b", [30.0, 31.0, 29.0])
    base = regress.make_baseline(regress.measure(b))
    cand = runs(tmp_path, "c", [30.0, 30.5])
    s = json.loads((cand[1] / "summary.json").read_text())
    (cand[1] / "summary.json").write_text(json.dumps({**s, "status": "timeout"}))
    verdicts = regress.compare_to_baseline(base, regress.measure(cand))
    assert verdicts[0].metric == "runs_complete" and verdicts[0].regressed and "(timeout)" in verdicts[0].reason
    with pytest.raises(InputError, match="'completion_mediam_s' is not gated"):
        regress.compare_to_baseline(base, regress.measure(b), ["completion_mediam_s"])
    assert regress.worse("kumar_ross_efficiency") == "lower" and regress.worse("completion_p95_s") == "higher"
    assert regress.worse("bytes_up[leecher]:higher") == "higher"
    path = tmp_path / "base.json"
    path.write_text(json.dumps({k: v for k, v in base.items() if k != "rule"}))
    with pytest.raises(InputError, match="missing required key 'rule'"):
        regress.load_baseline(path)
