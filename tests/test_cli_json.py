"""Machine-readable output of the commands that only read files."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_validate_takes_several_files_studies_too_and_speaks_json():
    r = run_cli("validate", "--json", "experiments/quickstart.yaml", "experiments/studies/bandwidth-shy.yaml")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [o["kind"] for o in out] == ["experiment", "study"]
    assert out[0]["t_min_s"] > 0 and out[1]["runs"] == 20 and len(out[1]["arms"]) == 4


def test_validate_stops_at_the_first_bad_file_with_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nseed: 1\n")
    r = run_cli("validate", "experiments/quickstart.yaml", str(bad))
    assert r.returncode == 2 and str(bad) in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_report_and_compare_refuse_what_is_not_a_results_directory(tmp_path):
    r = run_cli("report", str(tmp_path / "none"))
    assert r.returncode == 2 and "no such run or study directory" in r.stderr
    r = run_cli("compare", str(tmp_path), str(tmp_path))
    assert r.returncode == 2 and "holds no run directory" in r.stderr
