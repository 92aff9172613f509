"""benchmarks/run.py runs the scripts and summarizes them."""

import pytest

from benchmarks import run


def test_discover_lists_every_script_yardsticks_first():
    names = run.discover()
    assert names[:3] == ["matmul_peak", "probe_overhead", "dataset_scan"]
    assert "dream_vs_maxima" in names and "common" not in names and "run" not in names


def test_run_only_one_script(run_script, tmp_path):
    record = run_script("run", "--only", "matmul_peak")
    assert [r["script"] for r in record["figures"]["scripts"]] == ["matmul_peak", "total"]
    assert record["figures"]["scripts"][0]["ok"]
    assert (tmp_path / "matmul_peak.json").exists()
    summary = (tmp_path / "run.md").read_text()
    assert "python -m benchmarks.matmul_peak --quick" in summary and "GFLOP/s" in summary


def test_unknown_script_is_refused():
    with pytest.raises(SystemExit):
        run.main(["--only", "no_such_script"])
