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


def _sae_folder(tmp_path):
    from dreamy.sae.files import save
    from dreamy.sae.model import SAE
    from tests.sae.helpers import small_sae

    return save(SAE(small_sae("relu", d_in=64, d_sae=6, seed=5).weights()), tmp_path / "sae")


def _same_examples(together, alone):
    assert [e.token_ids for e in together] == [e.token_ids for e in alone]
    # the corpus repeats itself: a window may be found at another of its occurrences (ties), same tokens
    ids = tokenize_corpus(__import__("tests.fixtures").fixtures.cached("tiny:lm").tokenizer, CORPUS)
    assert all(ids[e.index - len(e.token_ids) + 1:e.index + 1].tolist() == e.token_ids for e in together)
    for a, b in zip(together, alone):
        assert a.activation == pytest.approx(b.activation, rel=1e-4, abs=1e-5)
        assert a.xentropy == pytest.approx(b.xentropy, rel=1e-4, abs=1e-5)
        assert a.token_activations == pytest.approx(b.token_activations, rel=1e-4, abs=1e-4)


def test_many_targets_in_one_pass_equal_each_target_alone(tiny_lm, tmp_path):
    from dreamy.maxima.records import canonical_target

    folder = _sae_folder(tmp_path)
    targets = [canonical_target(t) for t in ["model.layers.1.mlp.down_proj@in:3", TARGET, "model.layers.0:5", "logits:9",
                                             f"model.layers.1.mlp.down_proj:sae={folder}#1",
                                             f"model.layers.1.mlp.down_proj:sae={folder}#4"]]
    settings = dict(k=3, window=8, lengths=[4], candidates=3, xent_windows=2, cache_dir=None, progress=False)
    together = text_maxima(tiny_lm, targets, CORPUS, **settings)
    for target in targets:
        alone = text_maxima(tiny_lm, [target], CORPUS, **settings)
        _same_examples(together[target].examples, alone[target].examples)
        _same_examples(together[target].frontier, alone[target].frontier)
        _same_examples(together.at(4)[target].examples, alone.at(4)[target].examples)
        mine, plain = dict(together[target].stats["tokens"]), dict(alone[target].stats["tokens"])
        assert mine.pop("histogram") == plain.pop("histogram")
        assert mine == pytest.approx(plain, rel=1e-5)
        assert together[target].settings["candidates_rescored"] == alone[target].settings["candidates_rescored"]


def test_re_scoring_runs_each_window_once_for_every_target(tiny_lm, monkeypatch):
    import dreamy.maxima.text as text_module

    rows_scored = []
    real_call = text_module.Probe.__call__

    def counting(self, *args, **kwargs):
        if kwargs.get("need_output"):  # the re-scoring forwards (the scan needs no output)
            rows_scored.append(len(kwargs["input_ids"]))
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(text_module.Probe, "__call__", counting)
    targets = [f"model.layers.1.mlp.down_proj@in:{i}" for i in range(8)]
    found = text_maxima(tiny_lm, targets, CORPUS, k=2, window=8, candidates=4, xent_windows=0, batch_size=16,
                        cache_dir=None, progress=False)
    asked = sum(m.settings["candidates_rescored"] for m in found.values())
    distinct = len({tuple(e) for m in found.values() for e in [x.token_ids for x in m.examples]})
    assert distinct <= sum(rows_scored) < asked  # windows shared by targets run once
    assert len(rows_scored) == -(-sum(rows_scored) // 16)  # in full batches across targets


def test_scan_only_examples_are_the_scanned_chunks_with_their_values(tiny_lm):
    from dreamy.language.layout import make_layout

    window = 8
    found = text_maxima(tiny_lm, [TARGET, "logits:5"], CORPUS, k=3, window=window, rescore=False, xent_windows=2,
                        cache_dir=None, progress=False)
    ids = tokenize_corpus(tiny_lm.tokenizer, CORPUS)
    n = len(ids) // window
    rows = make_layout(tiny_lm.tokenizer, window).full(ids[:n * window].view(n, window))
    for target in (TARGET, "logits:5"):
        probe = Probe(tiny_lm.model, [target], sequence_reduce="pos=-1")
        with torch.no_grad():
            plain = probe.maps(probe(input_ids=rows, keep_activations=True).activations)[0][:, 1:].float()
        best = plain.flatten().topk(3)
        maxima = found[target]
        # the corpus repeats itself: equal chunks tie, so the values are compared, and each index read back
        assert plain.flatten()[[e.index for e in maxima.examples]].tolist() == pytest.approx(best.values.tolist(), rel=1e-4, abs=1e-5)
        assert [e.activation for e in maxima.examples] == pytest.approx(best.values.tolist(), rel=1e-4, abs=1e-5)
        for example in maxima.examples:
            chunk = example.index // window
            assert example.token_ids == ids[chunk * window:(chunk + 1) * window].tolist()
            assert example.token_activations == pytest.approx(plain[chunk].tolist(), rel=1e-4, abs=1e-4)
            assert example.context_start == chunk * window and example.xentropy is None
        assert maxima.settings["rescore"] is False and maxima.settings["candidates_rescored"] == 0


def test_scan_only_and_re_scored_entries_do_not_stand_in_for_each_other(tiny_lm, tmp_path):
    scanned = text_maxima(tiny_lm, [TARGET], CORPUS, k=2, window=8, rescore=False, xent_windows=2, cache_dir=tmp_path,
                          progress=False)
    rescored = text_maxima(tiny_lm, [TARGET], CORPUS, k=2, window=8, xent_windows=2, cache_dir=tmp_path, progress=False)
    assert scanned[TARGET].examples[0].xentropy is None and rescored[TARGET].examples[0].xentropy is not None


def test_host_copies_per_batch_do_not_grow_with_the_number_of_targets(tiny_lm, monkeypatch):
    import dreamy.maxima.text as text_module

    counts = []
    real_scan = text_module.scan

    def counted_scan(score_batch, *args, **kwargs):
        calls = [0]
        names = ("cpu", "item", "tolist", "numpy", "__bool__", "__int__", "__float__", "nonzero")
        real = {name: getattr(torch.Tensor, name) for name in names}

        def wrap(name):
            def method(self, *a, **k):
                calls[0] += 1
                return real[name](self, *a, **k)
            return method

        for name in names:
            monkeypatch.setattr(torch.Tensor, name, wrap(name))
        try:
            result = real_scan(score_batch, *args, **kwargs)
        finally:
            for name in names:
                monkeypatch.setattr(torch.Tensor, name, real[name])
        counts.append(calls[0])
        return result

    monkeypatch.setattr(text_module, "scan", counted_scan)
    for n in (2, 24):
        text_maxima(tiny_lm, [f"model.layers.1.mlp.down_proj@in:{i}" for i in range(n)], CORPUS, k=2, window=8,
                    rescore=False, xent_windows=0, batch_size=4, cache_dir=None, progress=False)
    assert counts[0] == counts[1] and counts[0] > 0
