"""Token gradients, swaps, token filters and retokenization."""

import logging

import pytest
import torch

from dreamy.language.candidates import (allowed_tokens, filter_candidates, initial_spans, make_layout, sample_swaps,
                                        survives_retokenization, token_gradients, top_tokens)
from dreamy.language.fluency import span_xentropy
from dreamy.targets import Probe

TARGET = "model.layers.1.mlp.down_proj:3"


def objective_of_one_hot(model, probe, layout, one_hot, lam):
    weight = model.get_input_embeddings().weight
    full_ids = layout.full(one_hot.argmax(dim=-1))
    embeds = model.get_input_embeddings()(full_ids)
    start, end = layout.span
    embeds = torch.cat([embeds[:, :start], one_hot @ weight, embeds[:, end:]], dim=1)
    result = probe(inputs_embeds=embeds, need_output=True)
    # the cross-entropy's targets are the discrete ids; only the inputs are relaxed
    return result.scores[:, 0] - lam * span_xentropy(result.output.logits, full_ids, layout.span)


def test_one_hot_gradient_matches_finite_differences(tiny_lm):
    # directional derivatives of the relaxed objective; Llama's RMSNorm computes in float32, so
    # a moderate step (1e-3) keeps rounding noise well below the 3% tolerance
    model = tiny_lm.model.double()
    try:
        probe = Probe(model, [TARGET], sequence_reduce="pos=-1")
        layout = make_layout(tiny_lm.tokenizer, 4, suffix=" cat")
        spans = torch.tensor([[10, 20, 30, 40]])
        lam = torch.tensor([0.7])
        grad, _, _ = token_gradients(model, probe, layout, spans, lam)
        one_hot = torch.nn.functional.one_hot(spans, model.get_input_embeddings().weight.shape[0]).double()
        gen = torch.Generator().manual_seed(0)
        eps = 1e-3
        for _ in range(3):
            direction = torch.randn(one_hot.shape, generator=gen, dtype=torch.float64)
            with torch.no_grad():
                fd = (objective_of_one_hot(model, probe, layout, one_hot + eps * direction, lam)
                      - objective_of_one_hot(model, probe, layout, one_hot - eps * direction, lam)) / (2 * eps)
            analytic = (grad * direction).sum()
            assert torch.allclose(analytic, fd[0], rtol=3e-2), (analytic, fd)
    finally:
        model.float()


def test_each_row_gets_its_own_lambda(tiny_lm):
    probe = Probe(tiny_lm.model, [TARGET], sequence_reduce="pos=-1")
    layout = make_layout(tiny_lm.tokenizer, 3)
    spans = torch.tensor([[10, 20, 30], [10, 20, 30]])
    grad, _, _ = token_gradients(tiny_lm.model, probe, layout, spans, torch.tensor([0.0, 5.0]))
    alone, _, _ = token_gradients(tiny_lm.model, probe, layout, spans[:1], torch.tensor([5.0]))
    assert not torch.allclose(grad[0], grad[1])
    torch.testing.assert_close(grad[1], alone[0], rtol=1e-4, atol=1e-5 * alone.abs().max().item())  # fp32 noise scales with |grad|


def test_swaps_use_top_k_allowed_tokens_at_one_position(tiny_lm):
    allowed = allowed_tokens(tiny_lm.tokenizer)
    grad = torch.randn(2, 5, len(allowed), generator=torch.Generator().manual_seed(0))
    spans = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(1))
    children = sample_swaps(spans, grad, allowed, n_children=20, topk=4, generator=torch.Generator().manual_seed(2))
    assert children.shape == (40, 5)
    for i, child in enumerate(children):
        owner = i // 20
        changed = (child != spans[owner]).nonzero().flatten()
        assert len(changed) <= 1
        for pos in changed:
            top = grad[owner, pos].masked_fill(~allowed, float("-inf")).topk(4).indices
            assert child[pos] in top and allowed[child[pos]]


@pytest.mark.real
def test_special_and_non_ascii_tokens_are_filtered(smollm2):
    tok = smollm2.tokenizer
    strict = allowed_tokens(tok)
    loose = allowed_tokens(tok, ascii_only=False)
    assert not strict[tok.eos_token_id] and not loose[tok.bos_token_id]
    assert strict.sum() < loose.sum()
    sample = strict.nonzero().flatten()[::500]
    assert all(tok.decode([int(i)]).isascii() for i in sample)


def test_retokenization_filter(tiny_lm):
    tok = tiny_lm.tokenizer
    good = tok("the cat sat")["input_ids"]
    # split a word into single characters: decodes to the same text but re-encodes differently
    bad = tok.convert_tokens_to_ids(list("the"))
    spans = torch.tensor([good[:3], (bad + good)[:3]])
    assert survives_retokenization(tok, spans).tolist() == [True, False]


def test_empty_candidate_set_warns_instead_of_crashing(tiny_lm, caplog):
    tok = tiny_lm.tokenizer
    bad = torch.tensor([tok.convert_tokens_to_ids(list("the"))])
    with caplog.at_level(logging.WARNING):
        kept = filter_candidates(tok, bad)
    assert kept.shape[0] == 0 and "no candidate survived" in caplog.text


def test_initial_spans_from_text_or_random(tiny_lm):
    allowed = allowed_tokens(tiny_lm.tokenizer)
    from_text = initial_spans(tiny_lm.tokenizer, allowed, 2, 5, init="the cat", generator=torch.Generator())
    assert from_text.shape == (2, 5) and torch.equal(from_text[0], from_text[1])
    rand = initial_spans(tiny_lm.tokenizer, allowed, 3, 4, init=None, generator=torch.Generator().manual_seed(0))
    assert allowed[rand].all()


def test_each_row_gets_its_own_target_and_chunks_change_nothing(tiny_lm):
    probe = Probe(tiny_lm.model, [TARGET, "logits:9"], sequence_reduce="pos=-1")
    layout = make_layout(tiny_lm.tokenizer, 3)
    spans = torch.tensor([[10, 20, 30], [10, 20, 30], [11, 21, 31]])
    lambdas = torch.tensor([0.5, 0.5, 1.0])
    grad, act, _ = token_gradients(tiny_lm.model, probe, layout, spans, lambdas, row_targets=torch.tensor([0, 1, 1]),
                                   chunk_size=2)
    second = Probe(tiny_lm.model, ["logits:9"], sequence_reduce="pos=-1")
    alone, alone_act, _ = token_gradients(tiny_lm.model, second, layout, spans[1:], lambdas[1:])
    torch.testing.assert_close(grad[1:], alone, rtol=1e-4, atol=1e-5 * alone.abs().max().item())  # fp32 noise scales with |grad|
    torch.testing.assert_close(act[1:], alone_act, rtol=1e-4, atol=1e-5 * alone_act.abs().max().item())
    assert not torch.allclose(grad[0], grad[1])


def test_top_tokens_skip_disallowed_tokens():
    grad = torch.tensor([[[5.0, 4.0, 3.0, 2.0], [0.0, 1.0, 2.0, 3.0]]])
    allowed = torch.tensor([False, True, True, True])
    assert top_tokens(grad, allowed, 2).tolist() == [[[1, 2], [3, 2]]]
    assert top_tokens(grad, allowed, 10).shape == (1, 2, 3)  # never more than the allowed tokens
