"""Helpers for the benchmark smoke tests: run a script's main() in-process with given arguments."""

import importlib
import json
import sys

import pytest


@pytest.fixture
def run_script(monkeypatch, tmp_path):
    """Run `benchmarks.NAME` with `args` (plus --results-dir tmp) and return its parsed JSON result."""

    def run(name, *args, result=None):
        module = importlib.import_module(f"benchmarks.{name}")
        monkeypatch.setattr(sys, "argv", [f"benchmarks/{name}.py", *args, "--results-dir", str(tmp_path)])
        module.main()
        path = tmp_path / f"{result or name}.json"
        assert path.exists(), f"{name} wrote no {path.name}"
        record = json.loads(path.read_text())
        assert {"command", "machine", "date", "figures"} <= set(record)
        assert record["machine"]["cpu_count"] and record["machine"]["torch_version"]
        return record

    return run
