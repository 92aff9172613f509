"""dreamy/runs/labeling.py: token labels attached to a finished prompt run's records (the labels step of
`runs.enrich`) and shown on its cards."""

import json

import pytest
import torch

from dreamy.datasets import TextCorpus
from dreamy.language import EPOConfig
from dreamy.labels import LabelConfig, token_labels, window_activations
from dreamy.runs import dream_targets
from dreamy.runs.enrich import EnrichSteps, enrich
from dreamy.runs.labeling import LabelStep
from dreamy.sae.activations import corpus_windows

CORPUS = TextCorpus("toy", "The cat sat on the mat. The dog ran in the park and the sun is hot. A bird sang. " * 40)
TARGETS = ["model.layers.1:3", "model.layers.1.mlp.down_proj@in:7"]


@pytest.fixture(scope="module")
def run(tiny_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("labelled")
    dream_targets(tiny_lm, TARGETS + ["logits:2"], EPOConfig(iters=1, n_tokens=3, population=2, children=4),
                  out_dir=out, progress=False)
    return out


def test_each_record_gets_the_label_search_on_the_corpus_windows(tiny_lm, run):
    step = LabelStep(CORPUS, LabelConfig(steps=2, context=6, answers=(" the", " a")), windows=96, window_tokens=8)
    updated = enrich(run, tiny_lm, EnrichSteps(labels=step, progress=False))
    stored = {r["target"]: r for r in json.loads((run / "results.json").read_text())["records"]}
    assert [r["target"] for r in updated] == TARGETS + ["logits:2"]
    # the same windows and values give the same labels as token_labels called directly on one target
    ids = corpus_windows(tiny_lm.tokenizer, [CORPUS], window=8, heldout_windows=0, seed=0).train[:96]
    direct = token_labels(tiny_lm, TARGETS[0], ids, steps=2, context=6, answers=(" the", " a"))
    entry = stored[TARGETS[0]]["labels"]
    assert [label["id"] for label in entry["labels"]] == [label.id for label in direct.labels]
    assert entry["best"]["heldout_accuracy"] == pytest.approx(direct.best.heldout_accuracy)
    assert entry["counts"]["windows"] == 96 and entry["corpus"] == "toy" and len(entry["history"]) == 1
    page = (run / "index.html").read_text()
    best = entry["best"]
    assert "token labels" in page and "token label (held-out accuracy)" in page
    assert repr(best["token"]).replace("'", "&#x27;") in page


def test_the_values_of_many_targets_are_those_of_each_alone(tiny_lm):
    ids = corpus_windows(tiny_lm.tokenizer, [CORPUS], window=8, heldout_windows=0, seed=0).train[:10]
    together = window_activations(tiny_lm, TARGETS, ids, batch_size=4)
    for j, spec in enumerate(TARGETS):
        assert torch.allclose(together[j], window_activations(tiny_lm, spec, ids, batch_size=3), atol=1e-5)


def test_a_target_the_search_cannot_label_says_why_and_the_others_are_labelled(tiny_lm, tmp_path):
    dream_targets(tiny_lm, TARGETS, EPOConfig(iters=1, n_tokens=3, population=2, children=4), out_dir=tmp_path,
                  progress=False)
    step = LabelStep(CORPUS, LabelConfig(steps=1, context=6), windows=64, window_tokens=8)
    updated = enrich(tmp_path, tiny_lm, EnrichSteps(labels=step, progress=False))  # " Yes" is not one tiny token
    assert all("single-token answers" in r["labels_error"] and "labels" not in r for r in updated)
    assert "no token labels: answer" in (tmp_path / "index.html").read_text()
