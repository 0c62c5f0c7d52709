"""Reproductions: claims in a study file are checked before anything runs, and each claim is
judged on measured metrics with a verdict that follows the stated rule."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from testbed.analysis import repro
from testbed.analysis.compare import Side
from testbed.errors import InputError
from testbed.model.study import load_study

ROOT = Path(__file__).resolve().parent.parent
REPRO = ROOT / "experiments" / "repro"


def side(label: str, per_rep: dict[int, dict]) -> Side:
    return Side(label, {r: {"metrics": m} for r, m in per_rep.items()}, seed=1, study="s")


def claim(**kw) -> dict:
    base = {"claim": "c", "source": "Sec. 1", "published": "x", "metric": "completion_median_s",
            "test": {"op": ">", "value": 0}}
    return {**base, **kw}


def test_mean_rule_reproduced_partly_not():
    # interval wholly above 0 -> reproduced; mean above but interval across -> partly; below -> not
    assert repro.judge([5, 6, 7], {"op": ">", "value": 0})[0] == repro.REPRODUCED
    assert repro.judge([-5, 6, 7], {"op": ">", "value": 0})[0] == repro.PARTLY
    assert repro.judge([-5, -6, 1], {"op": ">", "value": 0})[0] == repro.NOT
    assert repro.judge([5], {"op": ">", "value": 0})[0] == repro.PARTLY      # one run: no interval
    assert repro.judge([], {"op": ">", "value": 0})[0] == repro.NO_DATA


def test_near_rule_uses_the_relative_band():
    t = {"op": "~", "value": 100, "tolerance": 0.2}
    assert repro.judge([95, 105, 110], t)[0] == repro.REPRODUCED
    assert repro.judge([60, 130, 140], t)[0] == repro.REPRODUCED   # mean 110 in [80, 120]
    assert repro.judge([60, 62, 90], t)[0] == repro.PARTLY         # mean 70.7, interval reaches 80
    assert repro.judge([40, 41, 42], t)[0] == repro.NOT


def test_every_run_rule_counts_runs():
    t = {"op": "<=", "value": 1.0, "every_run": True}
    assert repro.judge([0.5, 0.9, 1.0], t)[:1] == (repro.REPRODUCED,)
    v, _, why = repro.judge([0.5, 1.2], t)
    assert v == repro.PARTLY and why == "1 of 2 runs pass"
    assert repro.judge([1.1, 1.2], t)[0] == repro.NOT


def test_runs_without_a_value_count_against_the_claim():
    # four usable runs, one gave no value (its group never completed): the mean of the other
    # three cannot make the claim reproduced, and an every-run test counts it as failed
    assert repro.judge([5, 6, 5.5], {"op": ">", "value": 0})[0] == repro.REPRODUCED
    v, _, why = repro.judge([5, 6, 5.5], {"op": ">", "value": 0}, runs=4)
    assert v == repro.PARTLY and "3 of 4 runs" in why
    assert repro.judge([0.5, 0.6], {"op": "<=", "value": 1, "every_run": True}, runs=3)[:1] == (repro.PARTLY,)
    assert repro.judge([], {"op": ">", "value": 0}, runs=3)[0] == repro.NO_DATA
    # one run inside the band is not an interval inside it
    assert repro.judge([100], {"op": "~", "value": 100})[0] == repro.PARTLY


def test_values_minus_over_and_paired_versus():
    sides = {"base": side("base", {1: {"a": 10.0, "b": 4.0}, 2: {"a": 12.0, "b": 3.0}}),
             "v": side("v", {1: {"a": 15.0, "b": 5.0}, 2: {"a": 13.0}, 3: {"a": 99.0, "b": 1.0}})}
    assert repro.values(claim(metric="a", minus="b"), sides, "base") == {1: 6.0, 2: 9.0}
    assert repro.values(claim(metric="a", over="b"), sides, "base") == {1: 2.5, 2: 4.0}
    # paired: only repetitions both arms measured; the difference of the same quantity
    assert repro.values(claim(metric="a", versus="base"), sides, "v") == {1: 5.0, 2: 1.0}
    assert repro.values(claim(metric="a", minus="b", versus="base"), sides, "v") == {1: 4.0}
    assert repro.values(claim(metric="a", versus="base", relative=True), sides, "v") == {1: 1.5, 2: 13 / 12}


def test_rows_default_arms_and_overall_verdict():
    sides = {"base": side("base", {1: {"m": 1.0}, 2: {"m": 1.1}, 3: {"m": 0.9}}),
             "v": side("v", {1: {"m": 2.0}, 2: {"m": 2.2}, 3: {"m": 2.1}})}
    rep = {"paper": "P", "claims": [claim(metric="m", versus="base", test={"op": ">", "value": 0}),
                                    claim(metric="m", test={"op": "<", "value": 1.5})]}
    table = repro.rows(rep, sides)
    assert [(r["claim"], r["arm"], r["verdict"]) for r in table] == [
        (1, "v", repro.REPRODUCED), (2, "base", repro.REPRODUCED), (2, "v", repro.NOT)]
    assert repro.overall(table) == "partly reproduced"
    assert repro.overall(table[:2]) == repro.REPRODUCED
    assert repro.overall(table[2:]) == repro.NOT
    md = "\n".join(repro.markdown(rep, table, 600.0))
    assert "## Published vs measured" in md and "**Verdict: partly reproduced.**" in md and "10 min" in md


def _study(tmp_path: Path, reproduces: dict) -> Path:
    doc = {"name": "r", "repetitions": 2, "baseline": {
        "name": "b", "content": {"size": "1MiB"},
        "seeders": [{"name": "origin", "access": {"up": "2mbit", "down": "2mbit"}}],
        "peers": [{"name": "p", "count": 2, "access": {"up": "1mbit", "down": "2mbit"}}]},
        "variants": [{"name": "v", "set": {"peers": [{"name": "p", "count": 3}]}}], "reproduces": reproduces}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_claims_are_checked_when_the_study_loads(tmp_path):
    ok = {"paper": "P", "claims": [claim(metric="completion_median_s[p]", versus="baseline")]}
    loaded = load_study(_study(tmp_path, ok))
    with pytest.raises(InputError, match=r"claims\[0\]\.metric: 'completion_mediam_s' is not a metric"):
        load_study(_study(tmp_path, {"paper": "P", "claims": [claim(metric="completion_mediam_s")]}))
    with pytest.raises(InputError, match="no arm 'nope'"):
        load_study(_study(tmp_path, {"paper": "P", "claims": [claim(versus="nope")]}))
    with pytest.raises(InputError, match="relative"):
        load_study(_study(tmp_path, {"paper": "P", "claims": [claim(relative=True)]}))
    with pytest.raises(InputError, match="op"):
        load_study(_study(tmp_path, {"paper": "P", "claims": [claim(test={"op": "=", "value": 1})]}))
    # a group metric names a group every arm it reads has; plain metrics take no group
    with pytest.raises(InputError, match="arm 'baseline' has no peer group 'q'"):
        load_study(_study(tmp_path, {"paper": "P", "claims": [claim(metric="completion_mean_s[q]")]}))
    with pytest.raises(InputError, match="no per-group form"):
        load_study(_study(tmp_path, {"paper": "P", "claims": [claim(metric="leechers_online_end[p]")]}))
    with pytest.raises(InputError, match="compared with itself"):
        load_study(_study(tmp_path, {"paper": "P", "claims": [claim(versus="v", arms=["v"])]}))
    with pytest.raises(InputError, match="cannot be 0"):
        load_study(_study(tmp_path, {"paper": "P", "claims": [claim(test={"op": "~", "value": 0})]}))
    # the claims judge runs and do not make them: they stay out of the study's digest
    other = {"paper": "Q", "claims": [claim(published="y")]}
    assert load_study(_study(tmp_path, other)).digest == loaded.digest


@pytest.mark.parametrize("path", sorted(REPRO.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_reproductions_load_with_claims(path):
    loaded = load_study(path)
    rep = loaded.study.reproduces
    assert rep is not None and rep.claims and rep.scaled, f"{path.name}: a reproduction states its claims and scaling"
    assert re.search(r"\b(19|20)\d\d\b", rep.paper), f"{path.name}: the citation has its year"
    assert all(c.source and c.published for c in rep.claims), f"{path.name}: each claim says where it is published"
    # it says how to run it
    assert f"testbed study run experiments/repro/{path.name}" in path.read_text()
