"""KV-reuse scoring equals plain full forwards; chunking and OOM halving change nothing."""

import pytest
import torch

from dreamy.language import scoring
from dreamy.language.fluency import span_xentropy
from dreamy.core.memory import run_chunked
from dreamy.language.scoring import score_sequences
from dreamy.targets import Probe
from tests.fixtures import REAL_LMS, real_lm_with_mid_probe


def children_of(parent, n, seed, vocab=300, start=1):
    gen = torch.Generator().manual_seed(seed)
    kids = parent.repeat(n, 1)
    pos = torch.randint(start, len(parent), (n,), generator=gen)
    kids[torch.arange(n), pos] = torch.randint(0, vocab, (n,), generator=gen)
    return kids


def plain(model, probe, ids, span):
    result = probe(input_ids=ids, need_output=True)
    return result.scores, span_xentropy(result.output.logits, ids, span)


@pytest.fixture
def setup(tiny_lm):
    probe = Probe(tiny_lm.model, ["model.layers.1.mlp.down_proj:3", "model.layers.0.mlp@in:7", "logits:11"],
                  sequence_reduce="pos=-1")
    parent = torch.randint(0, 300, (12,), generator=torch.Generator().manual_seed(0))
    parent[0] = 0
    return tiny_lm.model, probe, parent


WAYS = ["packed", "grouped"]


@pytest.mark.parametrize("way", WAYS)
def test_kv_reuse_equals_full_forward(setup, way):
    model, probe, parent = setup
    kids = torch.cat([children_of(parent, 40, 1), parent[None]])
    act, xent = plain(model, probe, kids, (1, 12))
    out = score_sequences(model, probe, kids, xent_span=(1, 12), parent_ids=parent, scoring=way)
    torch.testing.assert_close(out.activation, act, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.xentropy, xent, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("span", [(1, 12), (2, 9)])
def test_kv_reuse_without_logit_targets_equals_full_forward(tiny_lm, setup, span, way):
    # no target reads the logits: group forwards keep only the logits that predict span tokens
    model, _, parent = setup
    probe = Probe(model, ["model.layers.1.mlp.down_proj:3", "model.layers.0.mlp@in:7"], sequence_reduce="pos=-1")
    kids = torch.cat([children_of(parent, 60, 4), parent[None]])
    act, xent = plain(model, probe, kids, span)
    out = score_sequences(model, probe, kids, xent_span=span, parent_ids=parent, scoring=way)
    torch.testing.assert_close(out.activation, act, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.xentropy, xent, atol=1e-4, rtol=1e-4)


def test_non_last_position_targets_fall_back_to_full_forwards(tiny_lm, setup):
    model, _, parent = setup
    probe = Probe(model, ["model.layers.1.mlp.down_proj:3/mean"], sequence_reduce="pos=-1")
    kids = children_of(parent, 20, 2)
    act, xent = plain(model, probe, kids, (1, 12))
    out = score_sequences(model, probe, kids, xent_span=(1, 12), parent_ids=parent)
    torch.testing.assert_close(out.activation, act, atol=1e-5, rtol=1e-5)


def test_chunked_equals_unchunked(setup):
    model, probe, parent = setup
    kids = children_of(parent, 30, 3)
    whole = score_sequences(model, probe, kids, xent_span=(2, 10))
    chunked = score_sequences(model, probe, kids, xent_span=(2, 10), chunk_size=7)
    torch.testing.assert_close(whole.activation, chunked.activation, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole.xentropy, chunked.xentropy, atol=1e-5, rtol=1e-5)


def test_out_of_memory_halves_the_chunk():
    sizes = []

    def fn(rows):
        sizes.append(rows.stop - rows.start)
        if rows.stop - rows.start > 3:
            raise RuntimeError("CUDA out of memory (simulated)")
        return list(range(rows.start, rows.stop))

    parts = run_chunked(fn, 10, 16)
    assert sum(parts, []) == list(range(10))
    assert sizes[:3] == [10, 8, 4]
    with pytest.raises(RuntimeError, match="shape"):
        run_chunked(lambda rows: (_ for _ in ()).throw(RuntimeError("bad shape")), 4, 2)


def xentropy(model, ids, span):
    with torch.no_grad():
        return span_xentropy(model(input_ids=ids).logits, ids, span)


def test_fluency_model_computes_the_cross_entropy(setup, tiny_lm):
    model, probe, parent = setup
    from dreamy.models.tiny import tiny_lm as build

    other, _ = build(seed=1)
    other.eval().requires_grad_(False)
    kids = children_of(parent, 6, 4)
    out = score_sequences(model, probe, kids, xent_span=(1, 12), parent_ids=parent, fluency_model=other)
    torch.testing.assert_close(out.xentropy, xentropy(other, kids, (1, 12)))
    assert not torch.allclose(out.xentropy, xentropy(model, kids, (1, 12)))


def test_span_must_be_scorable():
    with pytest.raises(ValueError, match="start at >= 1"):
        span_xentropy(torch.zeros(1, 3, 5), torch.zeros(1, 3, dtype=torch.long), (0, 3))


@pytest.mark.parametrize("way", ["grouped", "packed"])
def test_kv_reuse_really_runs_only_the_changed_positions(setup, monkeypatch, way):
    model, probe, parent = setup
    shapes = []
    original = probe.__call__

    def spy(*args, **kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return original(*args, **kwargs)

    monkeypatch.setattr(probe, "__call__", spy)
    monkeypatch.setattr(Probe, "__call__", lambda self, *a, **k: spy(*a, **k))
    kids = parent.repeat(8, 1)
    kids[:, 9] = torch.arange(8)
    score_sequences(model, probe, kids, xent_span=(1, 12), parent_ids=parent, scoring=way)
    if way == "grouped":
        assert shapes == [(8, 3)]  # only positions 9..11 ran for the group
    else:
        assert shapes == [(1, 24)]  # the 8 children's positions 9..11 side by side in one row
    assert scoring.MIN_GROUP_FOR_CACHE <= 8


def test_thinly_spread_children_share_merged_groups(setup, monkeypatch):
    model, probe, parent = setup
    kids = parent.repeat(11, 1)
    kids[torch.arange(11), torch.arange(1, 12)] = (parent[1:] + 1) % 300  # one child per position 1..11
    calls = []
    original = Probe.__call__
    monkeypatch.setattr(Probe, "__call__", lambda self, *a, **k: calls.append(k["input_ids"].shape) or original(self, *a, **k))
    out = score_sequences(model, probe, kids, xent_span=(1, 12), parent_ids=parent, scoring="grouped")
    assert len(calls) <= 11 // scoring.MIN_GROUP_FOR_CACHE + 1  # groups of one were merged, not run one by one
    act, xent = plain(model, probe, kids, (1, 12))
    torch.testing.assert_close(out.activation, act, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.xentropy, xent, atol=1e-4, rtol=1e-4)


def test_full_forwards_skip_the_output_layer_on_the_prefix(tiny_lm, setup, monkeypatch):
    model, _, parent = setup
    probe = Probe(model, ["logprobs:5", "model.layers.1.mlp.down_proj:3"], sequence_reduce="pos=-1")
    kids = children_of(parent, 6, 5, start=5)
    shapes = []
    original = Probe.__call__

    def spy(self, *a, **k):
        result = original(self, *a, **k)
        shapes.append(tuple(result.output.logits.shape[:2]))
        return result

    monkeypatch.setattr(Probe, "__call__", spy)
    out = score_sequences(model, probe, kids, xent_span=(5, 12))
    assert shapes == [(6, 8)]  # logits for positions 4..11 only
    monkeypatch.undo()
    act, xent = plain(model, probe, kids, (5, 12))
    torch.testing.assert_close(out.activation, act, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.xentropy, xent, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("way", WAYS)
def test_children_of_many_parents_share_forwards_and_equal_full_forwards(setup, monkeypatch, way):
    from dreamy.language import packed

    model, probe, parent = setup
    parents = torch.stack([parent, (parent * 7 + 3) % 300, (parent * 5 + 1) % 300])
    parents[:, 0] = 0
    kids = torch.cat([children_of(p, 24, 10 + i) for i, p in enumerate(parents)] + [parents[1:2]])
    owner = torch.cat([torch.full((24,), i) for i in range(3)] + [torch.tensor([1])])
    act, xent = plain(model, probe, kids, (1, 12))
    mixed = []
    module = scoring if way == "grouped" else packed  # both build their caches with states.cache_rows
    original = module.cache_rows
    monkeypatch.setattr(module, "cache_rows", lambda layers, rows, *a: mixed.append(len(rows.unique())) or original(layers, rows, *a))
    out = score_sequences(model, probe, kids, xent_span=(1, 12), parent_ids=parents, parent_index=owner, scoring=way)
    torch.testing.assert_close(out.activation, act, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.xentropy, xent, atol=1e-4, rtol=1e-4)
    assert max(mixed) == 3  # a forward ran the children of all three parents together


def test_many_parents_need_a_parent_index(setup):
    model, probe, parent = setup
    kids = children_of(parent, 10, 1)
    with pytest.raises(ValueError, match="parent_index"):
        score_sequences(model, probe, kids, xent_span=(1, 12), parent_ids=parent.repeat(2, 1))
    with pytest.raises(ValueError, match="parent_index"):
        score_sequences(model, probe, kids, xent_span=(1, 12), parent_ids=parent.repeat(2, 1), parent_index=torch.full((10,), 2))


@pytest.mark.real
@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("name", REAL_LMS)
def test_many_parent_reuse_equals_full_forwards_on_real_models(name, way):
    lm, probe = real_lm_with_mid_probe(name)
    gen = torch.Generator().manual_seed(0)
    parents = torch.randint(100, 5000, (2, 10), generator=gen)
    parents[:, 0] = lm.tokenizer.bos_token_id
    kids = torch.cat([children_of(p, 8, 20 + i, vocab=5000) for i, p in enumerate(parents)])
    owner = torch.arange(2).repeat_interleave(8)
    with torch.no_grad():
        act, xent = plain(lm.model, probe, kids, (1, 10))
    out = score_sequences(lm.model, probe, kids, xent_span=(1, 10), parent_ids=parents, parent_index=owner,
                          scoring=way)
    torch.testing.assert_close(out.activation, act, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(out.xentropy, xent, atol=2e-3, rtol=2e-3)
