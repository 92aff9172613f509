"""benchmarks/vision_vs_lucent.py runs (2 steps at 32 px; the script always uses the bundled EfficientNet-Lite0)."""

import importlib.util

import pytest


@pytest.mark.skipif(importlib.util.find_spec("lucent") is None, reason="lucent is not installed (pip install torch-lucent)")
def test_vision_vs_lucent_runs_small(run_script):
    rows = run_script("vision_vs_lucent", "--steps", "2", "--size", "32")["figures"]["rows"]
    assert {r["library"] for r in rows} == {"dreamy", "lucent"}
    assert all(r["s/step"] > 0 for r in rows)
