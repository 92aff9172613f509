"""Tests for dreamy.maxima.stats: every target's dashboard statistics from the one scan, equal to a plain
per-target computation."""

import numpy as np
import pytest
import torch

from dreamy.datasets import TextCorpus
from dreamy.language.layout import make_layout
from dreamy.maxima import text_maxima
from dreamy.maxima.stats import BINS_PER_DECADE, LOG10_LOW, ActivationStats, histogram_bins
from dreamy.maxima.records import canonical_target
from dreamy.maxima.text import tokenize_corpus
from dreamy.maxima.topk import ScanBatch
from dreamy.sae.files import save
from dreamy.sae.model import SAE
from dreamy.targets import Probe
from tests.sae.helpers import small_sae

CORPUS = TextCorpus("toy", "The cat sat on the mat. The dog ran in the park and the bird sang in the tree. "
                           "Paris is the capital of France. Rome is in Italy. The sun is hot and the moon is bright. " * 3)
SITE = "model.layers.1.mlp.down_proj"


def _sae_with_a_dead_feature(folder):
    sae = small_sae("relu", d_in=64, d_sae=6, seed=3)
    sae.b_enc.data[0] = -1e4  # feature 0 never fires
    return save(SAE(sae.weights()), folder)


def _plain_values(tiny_lm, target, window):
    """The target alone, every chunk scored as BOS + chunk: its value at every token `[n_chunks, window]`."""
    ids = tokenize_corpus(tiny_lm.tokenizer, CORPUS)
    n = len(ids) // window
    rows = make_layout(tiny_lm.tokenizer, window).full(ids[:n * window].view(n, window))
    probe = Probe(tiny_lm.model, [target], sequence_reduce="pos=-1")
    with torch.no_grad():
        return probe.maps(probe(input_ids=rows, keep_activations=True).activations)[0][:, 1:].float()


def test_statistics_of_every_target_equal_a_plain_per_target_computation(tiny_lm, tmp_path):
    folder = _sae_with_a_dead_feature(tmp_path / "sae")
    targets = [canonical_target(t) for t in [f"{SITE}@in:{i}" for i in (3, 7, 40)] + [f"{SITE}:sae={folder}#{i}" for i in (0, 2, 5)]]
    window = 8
    found = text_maxima(tiny_lm, targets, CORPUS, k=2, window=window, xent_windows=2, batch_size=3, cache_dir=None,
                        progress=False)
    for target in targets:
        values = _plain_values(tiny_lm, target, window).flatten()
        fired = values[values > 0]
        stats = found[target].stats["tokens"]
        assert stats["tokens"] == values.numel() and stats["fired"] == fired.numel()
        assert stats["density"] == pytest.approx(fired.numel() / values.numel())
        if not fired.numel():
            assert stats["max"] is None and stats["histogram"]["counts"] == []
            continue
        assert stats["max"] == pytest.approx(float(fired.max()), rel=1e-5)
        assert stats["mean"] == pytest.approx(float(fired.mean()), rel=1e-5)
        edges = np.array(stats["histogram"]["log10_edges"])
        counts, _ = np.histogram(np.log10(fired.double().numpy()), bins=edges)
        assert stats["histogram"]["counts"] == counts.tolist() and sum(counts) == fired.numel()
        # samples: real tokens with their scanned values, the bands in increasing order of value
        plain = _plain_values(tiny_lm, target, window)
        bands = [e for e in found[target].samples if e.group.startswith("q")]
        assert bands and all(e.activation > 0 for e in bands)
        for example in found[target].samples:
            chunk = example.index // window
            assert example.context_start == chunk * window
            assert example.context_activations == pytest.approx(plain[chunk].tolist(), rel=1e-4, abs=1e-5)
            assert example.activation == pytest.approx(float(plain[chunk, example.index % window]), rel=1e-4, abs=1e-5)
        lows = [min(e.activation for e in bands if e.group == g) for g in dict.fromkeys(e.group for e in bands)]
        assert lows == sorted(lows)
        assert len([e for e in found[target].samples if e.group == "random"]) == min(4, values.numel() // window)
    assert found.dead == [targets[3]]


def test_histogram_bins_are_log_spaced_and_clamped():
    values = torch.tensor([1.0, 10 ** 0.05 * 1.0001, 1e-12, 1e12])
    assert histogram_bins(values).tolist() == [-LOG10_LOW * BINS_PER_DECADE, -LOG10_LOW * BINS_PER_DECADE + 1, 0,
                                               (6 - LOG10_LOW) * BINS_PER_DECADE - 1]


def test_a_resumed_accumulator_counts_as_one_that_ran_through():
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 4, 3, generator=gen) for _ in range(3)]

    def batch(i):
        values = batches[i]
        return ScanBatch(values.flatten(0, 1), torch.arange(8) + 8 * i, values[:, -1], values,
                         torch.arange(2).repeat_interleave(4), torch.tensor([2 * i, 2 * i + 1]))

    whole = ActivationStats(3, 4, n_items=6, samples=5, random_windows=2, seed=1)
    for i in range(3):
        whole.observe(batch(i))
    first = ActivationStats(3, 4, n_items=6, samples=5, random_windows=2, seed=1)
    first.observe(batch(0))
    second = ActivationStats(3, 4, n_items=6, samples=5, random_windows=2, seed=1)
    second.restore(first.state())
    for i in (1, 2):
        second.observe(batch(i))
    for a, b in zip(whole.results(), second.results()):
        assert a.summary == b.summary
        assert {g: [(i, v) for i, v, _ in s] for g, s in a.samples.items()} == \
            {g: [(i, v) for i, v, _ in s] for g, s in b.samples.items()}
    with pytest.raises(ValueError, match="samples must be"):
        ActivationStats(1, 4, n_items=1, samples=0)
