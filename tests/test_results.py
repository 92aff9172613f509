"""Atomic writes and the results store."""

import json

import pytest

from dreamy.results import ResultsStore, safe_name, write_atomic, write_json_atomic


def test_store_adds_replaces_and_reloads(tmp_path):
    store = ResultsStore(tmp_path)
    store.add({"target": "a:1", "activation": 1.0})
    store.add_many([{"target": "b:2", "activation": 2.0}, {"target": "a:1", "activation": 3.0}])
    again = ResultsStore(tmp_path)
    assert [(r["target"], r["activation"]) for r in again.records] == [("b:2", 2.0), ("a:1", 3.0)]
    store.add({"target": "c:3", "error": "boom"})
    assert ResultsStore(tmp_path).done() == {"a:1", "b:2"}
    assert ResultsStore(tmp_path).done(include_errors=True) == {"a:1", "b:2", "c:3"}


def test_atomic_write_leaves_no_temp_files_and_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"v": 1})
    import os

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        write_atomic(path, "new")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_foreign_results_file_is_refused(tmp_path):
    (tmp_path / "results.json").write_text("not json")
    with pytest.raises(ValueError, match="not a dreamy results file"):
        ResultsStore(tmp_path)


def test_safe_names():
    assert safe_name("model.layers.5.mlp.down_proj@in:12") == "model.layers.5.mlp.down_proj_in_12"
    assert safe_name("***") == "target"
