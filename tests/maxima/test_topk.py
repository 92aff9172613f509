"""Tests for dreamy.maxima.topk: the streaming top-k and the resumable scan."""

import pytest
import torch

from dreamy.maxima.topk import StreamingTopK, scan, summarize


def test_streaming_topk_matches_a_global_topk():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(103, 4, generator=gen)
    top = StreamingTopK(4, k=5)
    start = 0
    for size in (1, 17, 40, 45):
        top.update(scores[start:start + size], torch.arange(start, start + size))
        start += size
    expected = scores.t().topk(5, dim=1)
    assert torch.equal(top.values, expected.values)
    assert torch.equal(top.indices, expected.indices)


def test_nan_ranks_last_and_k_may_exceed_the_stream():
    top = StreamingTopK(1, k=5)
    top.update(torch.tensor([[float("nan")], [1.0], [2.0]]), torch.tensor([0, 1, 2]))
    assert top.indices[0].tolist() == [2, 1, 0]
    assert top.values[0, -1] == -torch.inf
    with pytest.raises(ValueError, match="k must be"):
        StreamingTopK(1, k=0)


def _scorer(values, calls, fail_at=None):
    def score(items):
        calls.extend(items)
        if fail_at is not None and items[0] >= fail_at:
            raise KeyboardInterrupt
        rows = values[items]
        return rows, torch.tensor(items), rows
    return score


def test_interrupted_scan_resumes_from_its_checkpoint(tmp_path):
    values = torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    checkpoint = tmp_path / "scan.pt"
    calls = []
    with pytest.raises(KeyboardInterrupt):
        scan(_scorer(values, calls, fail_at=20), 50, n_targets=2, k=3, batch_size=10, checkpoint=checkpoint,
             fingerprint="a", progress=False)
    assert checkpoint.exists()
    calls.clear()
    top, summaries, _ = scan(_scorer(values, calls), 50, n_targets=2, k=3, batch_size=10, checkpoint=checkpoint,
                             fingerprint="a", progress=False)
    assert calls[0] == 20 and len(calls) == 30  # only the unscanned items ran
    assert torch.equal(top.indices, values.t().topk(3, dim=1).indices)
    assert summaries.shape == (50, 2) and not checkpoint.exists()


def test_a_checkpoint_of_other_settings_is_ignored(tmp_path):
    values = torch.randn(30, 1, generator=torch.Generator().manual_seed(2))
    checkpoint = tmp_path / "scan.pt"
    with pytest.raises(KeyboardInterrupt):
        scan(_scorer(values, [], fail_at=10), 30, n_targets=1, k=2, batch_size=10, checkpoint=checkpoint,
             fingerprint="old", progress=False)
    calls = []
    scan(_scorer(values, calls), 30, n_targets=1, k=2, batch_size=10, checkpoint=checkpoint, fingerprint="new", progress=False)
    assert calls[0] == 0 and len(calls) == 30


def test_summarize_ignores_nan():
    summary = summarize(torch.tensor([1.0, float("nan"), 3.0, 2.0]))
    assert summary["count"] == 3 and summary["median"] == 2.0 and summary["max"] == 3.0
    assert summarize(torch.tensor([]))["count"] == 0


def test_kept_contexts_are_the_rows_the_kept_scores_came_from():
    gen = torch.Generator().manual_seed(3)
    contexts = torch.randn(12, 5, 3, generator=gen)  # 12 rows of 5 positions, 3 targets
    scores = contexts.flatten(0, 1)  # every position of every row competes
    top = StreamingTopK(3, k=4, context=5)
    for first in range(0, 12, 5):
        rows = torch.arange(first, min(12, first + 5))
        top.update(scores[first * 5:(first + len(rows)) * 5], torch.arange(first * 5, (first + len(rows)) * 5),
                   contexts[rows], torch.arange(len(rows)).repeat_interleave(5))
    expected = scores.t().topk(4, dim=1)
    assert torch.equal(top.indices, expected.indices)
    for j in range(3):
        for slot, index in enumerate(top.indices[j].tolist()):
            assert torch.equal(top.contexts[j, slot], contexts[index // 5, :, j])
    with pytest.raises(ValueError, match="pass contexts and rows"):
        top.update(scores[:5], torch.arange(5))


def test_scan_takes_scan_batches_and_feeds_its_observers(tmp_path):
    from dreamy.maxima.topk import ScanBatch

    class Counter:
        def __init__(self):
            self.seen = torch.zeros(())

        def observe(self, batch):
            self.seen = self.seen + len(batch.scores)

        def state(self):
            return {"seen": self.seen}

        def restore(self, state):
            self.seen = state["seen"]

    values = torch.randn(20, 2, generator=torch.Generator().manual_seed(4))

    def score(items, fail_at=None):
        if fail_at is not None and items[0] >= fail_at:
            raise KeyboardInterrupt
        rows = values[items]
        return ScanBatch(rows, torch.tensor(items), rows, rows[:, None], torch.arange(len(items)), torch.tensor(items))

    counter = Counter()
    with pytest.raises(KeyboardInterrupt):
        scan(lambda items: score(items, fail_at=10), 20, n_targets=2, k=2, batch_size=5, context=1, observers=[counter],
             checkpoint=tmp_path / "scan.pt", fingerprint="a", progress=False)
    resumed = Counter()
    top, _, _ = scan(score, 20, n_targets=2, k=2, batch_size=5, context=1, observers=[resumed],
                     checkpoint=tmp_path / "scan.pt", fingerprint="a", progress=False)
    assert float(resumed.seen) == 20  # 10 before the interrupt, restored, and 10 after
    assert torch.equal(top.contexts[:, :, 0], values.t().topk(2, dim=1).values)
