"""dreamy/labels/search.py: the label search recovers planted single-token rules on tiny:lm; the judge's cache, the
thresholds, the baseline rule."""

import pytest
import torch

from dreamy.datasets import TextCorpus
from dreamy.labels import LabelConfig, token_labels
from dreamy.labels.search import Judge, best_threshold, label_candidates, window_activations
from dreamy.models.tiny import CORPUS
from dreamy.sae.activations import corpus_windows, with_start

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model's matrices are small: on a busy machine torch's thread pool costs more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CONFIG = LabelConfig(answers=(" the", " a"), template="{text} mention{label}", context=8, active=40, inactive=40)


@pytest.fixture(scope="module")
def windows(tiny_lm):
    return corpus_windows(tiny_lm.tokenizer, [TextCorpus("tiny", CORPUS * 20)], window=8, heldout_windows=2, seed=0).train


def test_the_search_recovers_planted_labels(tiny_lm, windows):
    """Plant a rule per word token X: a window is active as much as the judge, shown X, answers yes beyond what the
    average label gets. Started from the uniform distribution over the 9 word tokens, the search must find X."""
    candidates = label_candidates(tiny_lm.tokenizer, len(tiny_lm.tokenizer))
    judge = Judge(tiny_lm, windows, CONFIG, 64)
    table = tiny_lm.model.get_input_embeddings().weight[candidates].detach()
    answers = torch.stack([judge.answer_all(e, torch.arange(len(windows))) for e in table])
    recovered = 0
    for k in (0, 3, 5, 8):  # ' the', ' is', ' he', ' le'
        token = int(candidates[k])
        found = token_labels(tiny_lm, "planted", windows, CONFIG, activations=answers[k] - answers.mean(dim=0))
        recovered += found.best.id == token
        if found.best.id == token:
            assert found.best.heldout_accuracy >= 0.9
            others = [label.heldout_accuracy for label in found.labels if label.id != token]
            assert max(others) < found.best.heldout_accuracy  # the planted label predicts best
    assert len(candidates) == 9 and recovered >= 3


def test_a_planted_containment_rule_is_the_baseline(tiny_lm, windows, tmp_path):
    """A target that reads the embedding of token X fires most on X itself, so the active windows are those holding X
    and the baseline rule "the window holds X" is exact."""
    (token,) = tiny_lm.tokenizer(" to", add_special_tokens=False)["input_ids"]
    vector = tiny_lm.model.get_input_embeddings().weight[token].detach()
    torch.save({"x": vector / vector.norm()}, tmp_path / "x.pt")
    target = f"model.embed_tokens:dir={tmp_path}/x.pt#x"
    found = token_labels(tiny_lm, target, windows, CONFIG, steps=3, active=20, inactive=20, inactive_quantile=0.8)
    assert found.baseline.id == token and found.baseline.token == " to"
    assert found.baseline.train_accuracy == found.baseline.heldout_accuracy == 1.0
    assert all(" to" in text for text in found.examples["active"])
    assert found.counts["active"] == found.counts["inactive"] == 20 and found.counts["heldout"] == 10
    record = found.to_records()[0]
    assert record["baseline"]["id"] == token and len(record["history"]) == 3


def test_window_activations_are_the_targets_per_token_values(tiny_lm, windows):
    values = window_activations(tiny_lm, "model.layers.0:5", windows[:3])
    with torch.no_grad():
        hidden = tiny_lm.model(input_ids=with_start(windows[:3], 0), output_hidden_states=True).hidden_states[1]
    assert torch.allclose(values, hidden[:, 1:, 5], atol=1e-5)


def test_the_judge_reuses_the_texts_keys_and_values(tiny_lm, windows):
    """An answer from the cached text part equals a full forward of the whole prompt."""
    config = LabelConfig(answers=(" the", " a"), template="Say {text} now{label} ok", context=8)
    judge = Judge(tiny_lm, windows[:4], config, 2)
    token = label_candidates(tiny_lm.tokenizer, len(tiny_lm.tokenizer))[3]
    embedding = tiny_lm.model.get_input_embeddings().weight[token]
    cached = judge.answer_all(embedding, torch.arange(4))
    tok = tiny_lm.tokenizer
    first, second = (tok(a, add_special_tokens=False)["input_ids"][0] for a in (" the", " a"))
    for row in range(4):
        ids = [0] + tok("Say ", add_special_tokens=False)["input_ids"] + windows[row].tolist() + \
            tok(" now", add_special_tokens=False)["input_ids"] + [int(token)] + tok(" ok", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = tiny_lm.model(input_ids=torch.tensor([ids])).logits[0, -1]
        assert float(cached[row]) == pytest.approx(float(logits[first] - logits[second]), abs=1e-4)


def test_thresholds_and_candidates():
    threshold, accuracy = best_threshold(torch.tensor([3.0, 1.0, 2.0, 0.0]), torch.tensor([1, 0, 1, 0]))
    assert accuracy == 1.0 and 1.0 < threshold < 2.0
    assert best_threshold(torch.tensor([1.0, 2.0]), torch.tensor([1, 0]))[1] == 0.5


def test_bad_settings_say_what_to_fix(tiny_lm, windows):
    with pytest.raises(ValueError, match="single-token answers"):
        token_labels(tiny_lm, "model.layers.1:5", windows, answers=(" the cat", " a"), steps=1)
    with pytest.raises(ValueError, match="at least 2 active and 2 inactive"):
        token_labels(tiny_lm, "planted", windows[:10], CONFIG, activations=torch.zeros(10))
    with pytest.raises(ValueError, match="activations must be"):
        token_labels(tiny_lm, "planted", windows, CONFIG, activations=torch.zeros(3))
    with pytest.raises(Exception, match="must hold {text} and then {label}"):
        LabelConfig(template="{label} {text}")
