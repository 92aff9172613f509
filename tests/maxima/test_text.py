"""Tests for dreamy.maxima.text: top corpus windows per target with their cross-entropy."""

import pytest
import torch

from dreamy.datasets import TextCorpus
from dreamy.language.fluency import span_xentropy
from dreamy.maxima import corpus_xentropy, load_cached_maxima, text_maxima
from dreamy.language.layout import start_token
from dreamy.maxima.text import tokenize_corpus
from dreamy.targets import Probe

CORPUS = TextCorpus("toy", "The cat sat on the mat. The dog ran in the park and the bird sang in the tree. "
                           "Paris is the capital of France. Rome is in Italy. The sun is hot and the moon is bright. " * 3)
TARGET = "model.layers.1.mlp.down_proj@in:7"


def _all_windows(tiny_lm, window):
    ids = tokenize_corpus(tiny_lm.tokenizer, CORPUS)
    bos = torch.tensor([start_token(tiny_lm.tokenizer)])
    return torch.stack([torch.cat([bos, ids[e - window + 1:e + 1]]) for e in range(window - 1, len(ids))])


def test_exhaustive_candidates_find_the_best_stride_one_window(tiny_lm):
    window = 6
    rows = _all_windows(tiny_lm, window)
    with torch.no_grad():
        result = Probe(tiny_lm.model, [TARGET], sequence_reduce="pos=-1")(input_ids=rows, need_output=True)
    manual = result.scores[:, 0]
    distinct = torch.tensor(sorted({tuple(r.tolist()): float(a) for r, a in zip(rows, manual)}.values(), reverse=True))
    found = text_maxima(tiny_lm, [TARGET], CORPUS, k=3, window=window, candidates=len(rows), xent_windows=4,
                        batch_size=5, cache_dir=None, progress=False)[TARGET]
    # the corpus repeats itself: equal windows are kept once
    assert [e.activation for e in found.examples] == pytest.approx(distinct[:3].tolist(), rel=1e-4, abs=1e-6)
    best = found.examples[0]
    i = int(manual.argmax())
    assert best.token_ids == rows[i, 1:].tolist() and best.index == i + window - 1
    assert best.xentropy == pytest.approx(span_xentropy(result.output.logits[i:i + 1], rows[i:i + 1], (1, window + 1)).item(), rel=1e-4, abs=1e-6)
    assert best.token_activations[-1] == pytest.approx(best.activation, rel=1e-4, abs=1e-6)
    assert len(best.tokens) == window and best.text == tiny_lm.tokenizer.decode(best.token_ids)


def test_frontier_windows_are_not_dominated(tiny_lm):
    found = text_maxima(tiny_lm, [TARGET], CORPUS, k=4, window=8, candidates=6, xent_windows=4, cache_dir=None,
                        progress=False)[TARGET]
    assert found.frontier and found.frontier[0].activation == found.examples[0].activation
    for point in found.frontier:
        for other in found.examples + found.frontier:
            assert not (other.activation > point.activation and other.xentropy < point.xentropy)
    xents = [p.xentropy for p in found.frontier]
    assert xents == sorted(xents, reverse=True)


def test_stats_cover_every_window_and_the_corpus_xentropy(tiny_lm, tmp_path):
    n_tokens = len(tokenize_corpus(tiny_lm.tokenizer, CORPUS))
    found = text_maxima(tiny_lm, [TARGET, "logits:5"], CORPUS, k=2, window=8, xent_windows=5, cache_dir=tmp_path,
                        progress=False)
    for maxima in found.values():
        assert maxima.stats["activation"]["count"] == n_tokens // 8
        assert maxima.stats["xentropy"]["count"] == 5
        top = maxima.stats["activation"]["max"]
        assert maxima.examples[0].activation >= top - 1e-4 * abs(top) - 1e-6  # refined alone vs scanned in a batch
    cached = load_cached_maxima(tmp_path, "tiny:lm", "logits:5")
    assert cached.dataset == "toy@8tok" and cached.examples == found["logits:5"].examples
    assert corpus_xentropy(tiny_lm, CORPUS, window=8, n_windows=5)["median"] == pytest.approx(
        found["logits:5"].stats["xentropy"]["median"], rel=1e-4)


def test_windows_longer_than_the_corpus_are_refused(tiny_lm):
    with pytest.raises(ValueError, match="fewer than one window"):
        text_maxima(tiny_lm, [TARGET], TextCorpus("tiny", "The cat"), window=64, cache_dir=None, progress=False)
    with pytest.raises(ValueError, match="language model"):
        text_maxima(__import__("tests.fixtures").fixtures.cached("tiny:cnn"), ["conv1:0"], CORPUS, cache_dir=None)


def test_matched_length_windows_come_from_the_same_pass_and_are_scored_like_prompts(tiny_lm, tmp_path, monkeypatch):
    import dreamy.maxima.text as text_module
    from dreamy.language.layout import make_layout

    scans = []
    real_scan = text_module.scan
    monkeypatch.setattr(text_module, "scan", lambda *a, **k: scans.append(1) or real_scan(*a, **k))
    found = text_maxima(tiny_lm, [TARGET], CORPUS, k=3, window=12, lengths=[4], prefix="The", suffix=" cat",
                        xent_windows=4, cache_dir=tmp_path, progress=False)
    assert len(scans) == 1  # one corpus pass serves both lengths
    matched = found.at(4)[TARGET]
    assert matched.dataset.startswith("toy@4tok[") and found[TARGET].dataset == "toy@12tok"
    layout = make_layout(tiny_lm.tokenizer, 4, "The", " cat")
    ids = tokenize_corpus(tiny_lm.tokenizer, CORPUS)
    for example in matched.examples:
        assert len(example.token_ids) == 4 and example.token_ids == ids[example.index - 3:example.index + 1].tolist()
        row = layout.full(torch.tensor([example.token_ids]))
        with torch.no_grad():
            scored = Probe(tiny_lm.model, [TARGET], sequence_reduce="pos=-1")(input_ids=row, need_output=True)
        assert example.activation == pytest.approx(float(scored.scores[0, 0]), rel=1e-4, abs=1e-6)
        assert example.xentropy == pytest.approx(float(span_xentropy(scored.output.logits, row, layout.span)), rel=1e-4, abs=1e-6)
    # cached per length: a second call scans nothing
    again = text_maxima(tiny_lm, [TARGET], CORPUS, k=3, window=12, lengths=[4], prefix="The", suffix=" cat",
                        xent_windows=4, cache_dir=tmp_path, progress=False)
    assert len(scans) == 1 and [e.token_ids for e in again.at(4)[TARGET].examples] == [e.token_ids for e in matched.examples]
    with pytest.raises(KeyError, match="lengths=\\[5\\]"):
        again.at(5)
