"""dreamy/runs/enrich.py: one enrichment pass after a run, its steps in order, one write of results.json and
the gallery, every key it leaves declared by the record schema."""

import json

import pytest

import dreamy.report.page
import dreamy.runs.store
from dreamy.cli import main
from dreamy.core.records import RECORD_KEYS, record_kind
from dreamy.runs import dream_targets
from dreamy.runs.enrich import EnrichSteps, MaximaStep, enrich
from dreamy.runs.store import ResultsStore
from dreamy.vision import DreamConfig

PROMPT = ["prompt", "--model", "tiny:lm", "--target", "model.layers.0.mlp.down_proj@in:3", "--target",
          "model.layers.1:7", "--target", "logits:5", "--iters", "1", "--tokens", "3", "--population", "2",
          "--children", "4", "--init", "random", "--quiet"]


@pytest.fixture
def writes(monkeypatch, tmp_path):
    """Counts of what a command writes: results.json rewrites, record batches stored, gallery pages."""
    monkeypatch.setenv("DREAMY_CACHE", str(tmp_path / "cache"))  # no cached maxima of other tests
    counts = {"results.json": 0, "batches": 0, "index.html": 0}
    write_json, add_many, write_page = (dreamy.runs.store.write_json_atomic, ResultsStore.add_many,
                                        dreamy.report.page.write_atomic)

    def counted_json(path, obj):
        counts["results.json"] += str(path).endswith("results.json")
        return write_json(path, obj)

    def counted_batch(self, records):
        counts["batches"] += 1
        return add_many(self, records)

    def counted_page(path, data):
        counts["index.html"] += str(path).endswith("index.html")
        return write_page(path, data)

    monkeypatch.setattr(dreamy.runs.store, "write_json_atomic", counted_json)
    monkeypatch.setattr(ResultsStore, "add_many", counted_batch)
    monkeypatch.setattr(dreamy.report.page, "write_atomic", counted_page)
    return counts


def test_maxima_descriptions_and_steering_after_a_run_write_results_and_the_gallery_once(tmp_path, writes):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The cat sat on the mat. A dog ran in the park. Rain fell on the quiet town all night.\n" * 4)
    assert main(PROMPT + ["--out", str(tmp_path / "plain")]) == 0  # the same dreams, nothing to enrich
    plain = dict(writes)
    assert main(PROMPT + ["--maxima", str(corpus), "--steer", "--steer-prompts", "2", "--steer-tokens", "3",
                          "--out", str(tmp_path / "run")]) == 0
    run = {key: writes[key] - plain[key] for key in writes}
    assert {key: run[key] - plain[key] for key in run} == {"results.json": 1, "batches": 1, "index.html": 1}
    records = json.loads((tmp_path / "run" / "results.json").read_text())["records"]
    assert [r["target"] for r in records] == [r["target"] for r in
                                              json.loads((tmp_path / "plain" / "results.json").read_text())["records"]]
    by_target = {r["target"]: r for r in records}
    neuron = by_target["model.layers.0.mlp.down_proj@in:3"]
    # maxima first, then the description over them and the plot with them, then steering reading them
    assert neuron["maxima"] and neuron["maxima_matched"]
    assert neuron["description"]["token_change"]["contexts"] == "maxima"
    assert neuron["steering"]["input_score"] is not None and "steering_error" in by_target["logits:5"]
    for record in records:
        assert set(record) <= RECORD_KEYS[record_kind(record)], set(record) - RECORD_KEYS[record_kind(record)]


def test_a_pass_with_nothing_to_do_writes_nothing(tmp_path, writes, tiny_lm):
    main(PROMPT + ["--out", str(tmp_path / "run")])
    before = dict(writes)
    assert enrich(tmp_path / "run", tiny_lm, EnrichSteps(maxima=MaximaStep(None), describe=True, progress=False)) == []
    assert writes == before


def test_image_records_keep_to_the_schema_after_maxima_and_judges(tmp_path, tiny_cnn, writes):
    dream_targets(tiny_cnn, ["logits:3", "conv3:1"], DreamConfig(steps=2), out_dir=tmp_path / "run", progress=False)
    steps = EnrichSteps(maxima=MaximaStep("photos", {"limit": 8, "k": 2}), judges=(tiny_cnn,), progress=False)
    before = dict(writes)
    updated = enrich(tmp_path / "run", tiny_cnn, steps)
    assert [r["target"] for r in updated] == ["logits:3", "conv3:1"]
    assert updated[0]["judges"][0]["judge"] == "tiny:cnn" and all(r["maxima"] for r in updated)
    assert all((tmp_path / "run" / m["image"]).exists() for r in updated for m in r["maxima"])
    assert writes["batches"] - before["batches"] == 1 and writes["index.html"] - before["index.html"] == 1
    for record in ResultsStore(tmp_path / "run").records:
        assert set(record) <= RECORD_KEYS["image"], set(record) - RECORD_KEYS["image"]


def test_a_step_that_reads_the_model_without_one_is_refused_before_anything_is_read(tmp_path):
    with pytest.raises(ValueError, match=r"the maxima, steering step\(s\) read the run's model; pass it as `loaded`"):
        enrich(tmp_path / "run", None, EnrichSteps(maxima=MaximaStep("photos"), steering=object()))
    assert not (tmp_path / "run").exists()
