"""The results directory's writers: rows checked against the fields, and on disk by the end
of each tick (flush), not only when the run closes."""
from __future__ import annotations

import csv

import pytest

from testbed.results import RunDir


def test_rows_reach_the_files_at_each_flush_and_unknown_fields_are_refused(tmp_path):
    rd = RunDir(tmp_path / "run")
    try:
        for name in ("samples", "meter"):           # headers at once: a run that dies early has them
            assert (rd.path / f"{name}.csv").read_text().startswith("t,")
        rd.sample({"t": 1.0, "peer": "a", "progress": 0.5})
        rd.row("meter", {"t": 1.0, "scope": "peer", "name": "a", "ip_bytes_up": 7})
        rd.flush()
        [sample] = list(csv.DictReader((rd.path / "samples.csv").open()))
        [meter] = list(csv.DictReader((rd.path / "meter.csv").open()))
        assert (sample["peer"], sample["progress"], sample["tcp_in"]) == ("a", "0.5", "")
        assert (meter["name"], meter["ip_bytes_up"]) == ("a", "7")
        with pytest.raises(ValueError, match="typo"):
            rd.sample({"t": 2.0, "typo": 1})
        with pytest.raises(ValueError, match="peer_bytes"):
            rd.row("meter", {"t": 2.0, "peer_bytes": 1})
    finally:
        rd.close()
