"""Studies without the machine: the study file, paired seeds, the statistics, the metrics and
the index bookkeeping (resume, failures). The real runs are in tests/integration/test_study.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from scipy import stats as sst

from testbed.analysis import compare, stats
from testbed.analysis.metrics import run_metrics
from testbed.errors import InputError, PreflightError
from testbed.model.study import load_study, merge, parse_study, remove
from testbed.plan import plan
from testbed.run import RunResult
from testbed.run import study as runner

ROOT = Path(__file__).resolve().parents[1]
BASE = {"name": "b", "content": {"size": "1MiB"}, "seeders": [{"name": "origin", "access": {"up": "1mbit",
        "down": "1mbit"}}], "peers": [{"name": "lee", "count": 3, "access": {"up": "1mbit", "down": "2mbit"},
                                       "arrivals": {"kind": "poisson", "rate": "6/min"}}],
        "end": {"duration": "60s"}}


def study(**over) -> dict:
    return {"name": "s", "seed": 5, "repetitions": 3, "baseline": BASE,
            "variants": [{"name": "more", "set": {"peers": [{"name": "lee", "count": 4}]}}], **over}


# ---------------------------------------------------------------- the file

def test_merge_by_name_appends_new_names_and_replaces_scalars():
    base = {"a": 1, "d": {"x": 1, "y": 2}, "peers": [{"name": "p", "count": 2}, {"name": "q", "count": 1}],
            "faults": [1, 2]}
    out = merge(base, {"d": {"y": 3}, "peers": [{"name": "q", "count": 5}, {"name": "r", "count": 1}],
                       "faults": [3]})
    assert out == {"a": 1, "d": {"x": 1, "y": 3}, "faults": [3],
                   "peers": [{"name": "p", "count": 2}, {"name": "q", "count": 5}, {"name": "r", "count": 1}]}
    assert base["peers"][1]["count"] == 1          # the baseline is not touched


def test_remove_a_key_and_a_named_entry():
    data = {"households": [{"name": "a"}, {"name": "b", "probe": None}], "faults": []}
    assert remove(data, "households.b", "w") == {"households": [{"name": "a"}], "faults": []}
    assert remove(data, "households.b.probe", "w")["households"][1] == {"name": "b"}
    assert remove(data, "faults", "w") == {"households": data["households"]}
    with pytest.raises(InputError, match="no households entry named 'c'"):
        remove(data, "households.c", "w")


def test_each_arm_is_validated_as_an_experiment_and_named():
    bad = study(variants=[{"name": "ok", "set": {}}, {"name": "broken", "set": {"peers": [{"name": "lee",
                                                                                  "acess": {}}]}}])
    with pytest.raises(InputError) as exc:
        parse_study(bad, "s.yaml", ROOT)
    assert "variant 'broken'" in str(exc.value) and "acess" in str(exc.value) and exc.value.exit_code == 2
    with pytest.raises(InputError, match="used twice"):
        parse_study(study(variants=[{"name": "baseline"}]), "s.yaml", ROOT)
    with pytest.raises(InputError, match=r"set\.seed: the study sets"):
        parse_study(study(variants=[{"name": "x", "set": {"seed": 3}}]), "s.yaml", ROOT)
    with pytest.raises(InputError, match="no such experiment file"):
        parse_study(study(baseline="nowhere.yaml"), "s.yaml", ROOT)
    with pytest.raises(InputError, match="unknown key 'variant'"):
        parse_study({**study(), "variant": []}, "s.yaml", ROOT)


def test_arms_of_a_repetition_share_seed_and_draws_and_repetitions_differ():
    st = parse_study(study(), "s.yaml", ROOT)
    (_, _, _, base), (_, _, _, more) = st.arms
    arrivals = {}
    for r in (1, 2):
        pb, pm = plan(base, "x-000001", repetition=r), plan(more, "x-000002", repetition=r)
        assert pb.seeds == pm.seeds
        # the three members both arms have arrive at the same times (the draws are paired)
        tb = sorted(e.t for e in pb.timeline if e.kind == "arrive" and e.host.startswith("lee"))
        tm = sorted(e.t for e in pm.timeline if e.kind == "arrive" and e.host.startswith("lee"))
        assert tb == tm[:3]
        arrivals[r] = tb
    assert arrivals[1] != arrivals[2]


def test_shipped_studies_load():
    for path in (ROOT / "experiments" / "studies").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        if "variants" in data:
            st = load_study(path)
            assert st.study.repetitions >= 5 and len(st.arms) >= 2


# ---------------------------------------------------------------- statistics

def test_t_interval_matches_the_textbook():
    i = stats.mean_ci([1, 2, 3, 4, 5])
    # mean 3, s = sqrt(2.5), t(0.975, 4) = 2.776445: half-width 2.776445 * sqrt(2.5 / 5) = 1.963243
    assert i.estimate == 3 and i.n == 5 and i.method == "t"
    assert i.low == pytest.approx(1.036757, abs=1e-6) and i.high == pytest.approx(4.963243, abs=1e-6)
    assert stats.mean_ci([7.0]).low is None and stats.mean_ci([]).estimate is None
    assert stats.mean_ci([1, None, float("nan"), 3]).n == 2


def test_paired_and_welch_intervals_agree_with_scipy():
    a, b = [10.0, 12.0, 9.5, 11.0, 13.0], [12.5, 13.0, 11.0, 14.5, 13.5]
    ref = sst.ttest_rel(b, a).confidence_interval()
    d = stats.paired_diff(a, b)
    assert (d.low, d.high) == pytest.approx((ref.low, ref.high)) and d.method == "paired t"
    assert d.excludes_zero
    x, y = [1, 2, 3, 4], [2, 4, 5, 9, 11]
    ref = sst.ttest_ind(y, x, equal_var=False).confidence_interval()
    w = stats.welch_diff(x, y)
    assert (w.low, w.high) == pytest.approx((ref.low, ref.high))
    assert not w.excludes_zero
    # a pair with a missing side is dropped
    assert stats.paired_diff([1, None, 3], [2, 5, 5]).n == 2


def test_quantile_is_r_type_7_and_ecdf_steps():
    assert stats.quantile(range(1, 11), 0.95) == pytest.approx(9.55)
    assert stats.quantile([], 0.5) is None
    assert stats.ecdf([3, 1, 2]) == ([1.0, 2.0, 3.0], [1 / 3, 2 / 3, 1.0])


# ---------------------------------------------------------------- metrics and compare

def fake_run(path: Path, times: list[float | None], origin_up: int, rep: int = 1) -> Path:
    """A results directory holding what a run writes (summary, plan), to test the arithmetic."""
    path.mkdir(parents=True)
    peers = [{"name": "origin", "group": "origin", "role": "seeder", "client": "transmission", "completed": True,
              "arrived_s": 0.0, "completion_s": None, "bytes_up": origin_up, "bytes_down": 0, "bill": None}]
    for k, t in enumerate(times):
        peers.append({"name": f"l{k}", "group": "lee", "role": "leecher", "client": "transmission",
                      "completed": t is not None, "arrived_s": 1.0, "completion_s": t, "bytes_up": 50,
                      "bytes_down": 100, "bill": {"total": 2.5}})
    (path / "summary.json").write_text(json.dumps({
        "run_id": path.name, "experiment": "e", "repetition": rep, "status": "complete", "partial": False,
        "t_min_s": 10.0, "swarm_completion_s": 20.0 if None not in times else None, "peers": peers,
        "availability": {"last_full_copy_lost_s": None}}))
    (path / "plan.json").write_text(json.dumps({"run_id": path.name, "name": "e", "hosts": [], "links": []}))
    return path


def test_run_metrics(tmp_path):
    m = run_metrics(fake_run(tmp_path / "r", [10.0, 20.0, 30.0, None], origin_up=160))["metrics"]
    assert m["completion_median_s"] == 20.0
    assert m["completion_p95_s"] == pytest.approx(29.0)
    assert m["completed_fraction"] == 0.75
    assert m["origin_offload"] == pytest.approx(1 - 160 / 400)
    assert m["bill[lee]"] == 10.0 and m["share_ratio[lee]"] == 0.5
    assert m["full_copy_lost"] == 0.0 and "kumar_ross_efficiency" not in m


def test_compare_pairs_arms_of_one_study(tmp_path):
    d = tmp_path / "st"
    runs = []
    for r, (tb, tv) in enumerate([(10, 14), (20, 23), (15, 20)], 1):
        runs.append({"arm": "baseline", "repetition": r, "status": "complete", "run_dir": f"runs/b{r}"})
        runs.append({"arm": "slow", "repetition": r, "status": "complete", "run_dir": f"runs/s{r}"})
        fake_run(d / "runs" / f"b{r}", [tb, tb], 100, r)
        fake_run(d / "runs" / f"s{r}", [tv, tv], 100, r)
    runs.append({"arm": "slow", "repetition": 4, "status": "refused", "run_dir": None, "error": "no ovs"})
    (d / "study.json").write_text(json.dumps({"study": "st", "seed": 1, "repetitions": 3, "baseline": "baseline",
                                              "status": "complete", "arms": [{"name": "baseline"}, {"name": "slow"}],
                                              "runs": runs}))
    a, b = compare.side(str(d)), compare.side(f"{d}:slow")
    assert compare.paired(a, b) and b.skipped[0]["error"] == "no ovs"
    row = next(r for r in compare.table(a, b) if r["metric"] == "completion_median_s")
    ref = sst.ttest_rel([14, 23, 20], [10, 20, 15]).confidence_interval()
    assert row["difference"]["estimate"] == pytest.approx(4.0)
    assert (row["difference"]["low"], row["difference"]["high"]) == pytest.approx((ref.low, ref.high))
    with pytest.raises(InputError, match="no arm 'fast'"):
        compare.side(f"{d}:fast")


# ---------------------------------------------------------------- the index

def test_index_records_failures_and_resume_skips_finished_runs(tmp_path):
    loaded = parse_study(study(repetitions=2), "s.yaml", ROOT)
    calls = []

    state = {"phase": 1}

    def fake(exp, root, emit, repetition, run_id):
        calls.append((run_id, repetition))
        if "-more-r1-" in run_id:
            raise PreflightError("the variant needs Open vSwitch")
        if state["phase"] == 1 and len(calls) == 3:
            raise KeyboardInterrupt
        (root / run_id).mkdir()
        return RunResult(root / run_id, "complete", {"error": None})

    d = tmp_path / "st"
    index = runner.open_study(loaded, d)
    with pytest.raises(KeyboardInterrupt):
        runner.run_study(loaded, d, index, runner=fake)
    saved = json.loads((d / "study.json").read_text())
    assert [r["status"] for r in saved["runs"]] == ["complete", "refused", "interrupted", "pending"]
    assert saved["runs"][1]["error"] == "the variant needs Open vSwitch" and saved["status"] == "partial"
    calls.clear()
    state["phase"] = 2
    index = runner.run_study(loaded, d, saved, runner=fake)
    # the complete run is not repeated; the refused one is tried again (the machine may be fixed)
    assert [(c[0].split("-")[1], c[1]) for c in calls] == [("more", 1), ("baseline", 2), ("more", 2)]
    assert [r["status"] for r in index["runs"]] == ["complete", "refused", "complete", "complete"]
    assert index["runs"][1]["error"] == "the variant needs Open vSwitch"
    assert index["status"] == "partial"               # the refused run can be tried again


def test_a_refused_baseline_stops_the_study(tmp_path):
    loaded = parse_study(study(repetitions=2), "s.yaml", ROOT)

    def refuse(exp, root, emit, repetition, run_id):
        raise PreflightError("testbed run needs root")
    d = tmp_path / "st"
    index = runner.open_study(loaded, d)
    with pytest.raises(PreflightError):
        runner.run_study(loaded, d, index, runner=refuse)
    assert [r["status"] for r in json.loads((d / "study.json").read_text())["runs"]] == ["refused", "pending",
                                                                                          "pending", "pending"]


def test_a_run_interrupted_only_in_its_teardown_is_not_run_again(tmp_path):
    """Ctrl-C while a complete run tears down: the study stops, but the run counts as done."""
    from testbed.errors import InterruptedAfterRun
    loaded = parse_study(study(repetitions=1), "s.yaml", ROOT)
    calls, signalled = [], []

    def fake(exp, root, emit, repetition, run_id):
        calls.append(run_id)
        (root / run_id).mkdir()
        result = RunResult(root / run_id, "complete", {"error": None})
        if not signalled:                   # the first run only
            signalled.append(run_id)
            raise InterruptedAfterRun(result)
        return result

    d = tmp_path / "st"
    index = runner.open_study(loaded, d)
    with pytest.raises(KeyboardInterrupt):
        runner.run_study(loaded, d, index, runner=fake)
    saved = json.loads((d / "study.json").read_text())
    assert [r["status"] for r in saved["runs"]] == ["complete", "pending"]
    calls.clear()
    index = runner.run_study(loaded, d, saved, runner=fake)
    assert calls == [r["run_id"] for r in index["runs"][1:]]      # only the pending one
    assert [r["status"] for r in index["runs"]] == ["complete", "complete"]
