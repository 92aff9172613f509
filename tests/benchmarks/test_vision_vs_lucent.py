"""benchmarks/vision_vs_lucent.py runs (2 steps at 32 px; the script always uses the bundled EfficientNet-Lite0)."""

import importlib.util
import statistics

import pytest


@pytest.mark.skipif(importlib.util.find_spec("lucent") is None, reason="lucent is not installed (pip install torch-lucent)")
def test_vision_vs_lucent_runs_small(run_script):
    rows = run_script("vision_vs_lucent", "--steps", "2", "--size", "32")["figures"]["rows"]
    assert {r["library"] for r in rows} == {"dreamy", "lucent"}
    for row in rows:
        assert row["s/step"] == statistics.median(run["seconds_per_step"] for run in row["runs"]) > 0
        assert row["activation min"] <= row["activation"] <= row["activation max"]
    for scenario in {r["scenario"] for r in rows}:
        ours, theirs = [r for r in rows if r["scenario"] == scenario]
        assert (ours["library"], theirs["library"]) == ("dreamy", "lucent")
        assert ours["speed-up"] == pytest.approx(theirs["s/step"] / ours["s/step"])
