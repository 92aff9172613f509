"""Token gradients: the relaxed objective (label side included), embeddings with the model's own semantics,
per-row fluency weights and targets, the fluency model."""

import pytest
import torch

from dreamy.language.fluency import span_xentropy
from dreamy.language.gradients import token_gradients, top_tokens
from dreamy.language.layout import make_layout
from dreamy.language.scoring import score_sequences
from dreamy.targets import Probe
from tests.fixtures import REAL_LMS, real_lm_with_mid_probe

TARGET = "model.layers.1.mlp.down_proj:3"


def relaxed_objective(model, probe, layout, x, lam):
    """activation(x) - lam * CE(x) with the span relaxed to rows x [N, L, V], as inputs AND as labels."""
    weight = model.get_input_embeddings().weight
    full_ids = layout.full(x.argmax(dim=-1))
    embeds = model.get_input_embeddings()(full_ids)
    start, end = layout.span
    embeds = torch.cat([embeds[:, :start], x @ weight, embeds[:, end:]], dim=1)
    result = probe(inputs_embeds=embeds, need_output=True)
    logprobs = result.output.logits[:, start - 1 : end - 1].log_softmax(dim=-1)
    xent = -(x * logprobs).sum(dim=-1).mean(dim=1)  # the labels are the relaxed rows too
    return result.scores[:, 0] - lam * xent


def test_one_hot_gradient_matches_finite_differences_of_the_relaxed_objective(tiny_lm):
    # directional derivatives in float64; Llama's RMSNorm computes in float32, so a moderate step (1e-3)
    # keeps rounding noise well below the tolerance
    model = tiny_lm.model.double()
    try:
        probe = Probe(model, [TARGET], sequence_reduce="pos=-1")
        layout = make_layout(tiny_lm.tokenizer, 4, suffix=" cat")
        spans = torch.tensor([[10, 20, 30, 40]])
        lam = torch.tensor([2.0])
        grad, act, xent = token_gradients(model, probe, layout, spans, lam)
        one_hot = torch.nn.functional.one_hot(spans, model.get_input_embeddings().weight.shape[0]).double()
        with torch.no_grad():
            at_one_hot = relaxed_objective(model, probe, layout, one_hot, lam)
        torch.testing.assert_close(act - lam * xent, at_one_hot.to(act), rtol=1e-5, atol=1e-6)
        gen = torch.Generator().manual_seed(0)
        eps = 1e-3
        for _ in range(3):
            direction = torch.randn(one_hot.shape, generator=gen, dtype=torch.float64)
            with torch.no_grad():
                fd = (relaxed_objective(model, probe, layout, one_hot + eps * direction, lam)
                      - relaxed_objective(model, probe, layout, one_hot - eps * direction, lam)) / (2 * eps)
            analytic = (grad.double() * direction).sum()
            assert torch.allclose(analytic, fd[0], rtol=1e-2), (analytic, fd)
    finally:
        model.float()


def test_gradient_adds_fluency_weight_log_p_over_length_to_the_input_only_gradient(tiny_lm):
    # the label side of the relaxed cross-entropy contributes +lam * log p(v | < i) / L at position i
    model = tiny_lm.model
    probe = Probe(model, [TARGET], sequence_reduce="pos=-1")
    layout = make_layout(tiny_lm.tokenizer, 3)
    spans = torch.tensor([[10, 20, 30]])
    lam = 1.5
    grad, _, _ = token_gradients(model, probe, layout, spans, torch.tensor([lam]))
    weight = model.get_input_embeddings().weight
    one_hot = torch.nn.functional.one_hot(spans, weight.shape[0]).float().requires_grad_(True)
    full = layout.full(spans)
    embeds = model.get_input_embeddings()(full)
    with torch.enable_grad():
        embeds = torch.cat([embeds[:, :1], one_hot @ weight, embeds[:, 4:]], dim=1)
        result = probe(inputs_embeds=embeds, need_output=True)
        objective = result.scores[:, 0] - lam * span_xentropy(result.output.logits, full, layout.span)  # integer labels
        (input_only,) = torch.autograd.grad(objective.sum(), one_hot)
    logprobs = result.output.logits[0, 0:3].detach().log_softmax(dim=-1)
    torch.testing.assert_close(grad[0] - input_only[0], lam * logprobs / 3, rtol=1e-4, atol=1e-5)


def test_each_row_gets_its_own_fluency_weight(tiny_lm):
    probe = Probe(tiny_lm.model, [TARGET], sequence_reduce="pos=-1")
    layout = make_layout(tiny_lm.tokenizer, 3)
    spans = torch.tensor([[10, 20, 30], [10, 20, 30]])
    grad, _, _ = token_gradients(tiny_lm.model, probe, layout, spans, torch.tensor([0.0, 5.0]))
    alone, _, _ = token_gradients(tiny_lm.model, probe, layout, spans[:1], torch.tensor([5.0]))
    assert not torch.allclose(grad[0], grad[1])
    torch.testing.assert_close(grad[1], alone[0], rtol=1e-4, atol=1e-5 * alone.abs().max().item())  # fp32 noise scales with |grad|


def test_each_row_gets_its_own_target_and_chunks_change_nothing(tiny_lm):
    probe = Probe(tiny_lm.model, [TARGET, "logits:9"], sequence_reduce="pos=-1")
    layout = make_layout(tiny_lm.tokenizer, 3)
    spans = torch.tensor([[10, 20, 30], [10, 20, 30], [11, 21, 31]])
    weights = torch.tensor([0.5, 0.5, 1.0])
    grad, act, _ = token_gradients(tiny_lm.model, probe, layout, spans, weights, row_targets=torch.tensor([0, 1, 1]),
                                   chunk_size=2)
    second = Probe(tiny_lm.model, ["logits:9"], sequence_reduce="pos=-1")
    alone, alone_act, _ = token_gradients(tiny_lm.model, second, layout, spans[1:], weights[1:])
    torch.testing.assert_close(grad[1:], alone, rtol=1e-4, atol=1e-5 * alone.abs().max().item())  # fp32 noise scales with |grad|
    torch.testing.assert_close(act[1:], alone_act, rtol=1e-4, atol=1e-5 * alone_act.abs().max().item())
    assert not torch.allclose(grad[0], grad[1])


def test_top_tokens_skip_disallowed_tokens():
    grad = torch.tensor([[[5.0, 4.0, 3.0, 2.0], [0.0, 1.0, 2.0, 3.0]]])
    allowed = torch.tensor([False, True, True, True])
    assert top_tokens(grad, allowed, 2).tolist() == [[[1, 2], [3, 2]]]
    assert top_tokens(grad, allowed, 10).shape == (1, 2, 3)  # never more than the allowed tokens


def test_fluency_model_gives_the_gradient_its_cross_entropy(tiny_lm):
    from dreamy.models.tiny import tiny_lm as build

    other, _ = build(seed=1)
    other.eval().requires_grad_(False)
    probe = Probe(tiny_lm.model, [TARGET], sequence_reduce="pos=-1")
    layout = make_layout(tiny_lm.tokenizer, 3)
    spans = torch.tensor([[10, 20, 30]])
    lam = torch.tensor([3.0])
    own, act, own_xent = token_gradients(tiny_lm.model, probe, layout, spans, lam)
    with_other, other_act, other_xent = token_gradients(tiny_lm.model, probe, layout, spans, lam, fluency_model=other)
    with torch.no_grad():
        want = span_xentropy(other(input_ids=layout.full(spans)).logits, layout.full(spans), layout.span)
    torch.testing.assert_close(other_xent, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(other_act, act)
    assert not torch.allclose(other_xent, own_xent) and not torch.allclose(with_other, own)


def test_fluency_model_with_another_vocabulary_is_refused(tiny_lm):
    from dreamy.language.search import SearchSetup

    other = torch.nn.Module()
    other.get_input_embeddings = lambda: torch.nn.Embedding(7, 4)
    with pytest.raises(ValueError, match="share the tokenizer"):
        SearchSetup.build(tiny_lm, TARGET, n_tokens=3, fluency_model=other)


@pytest.mark.real
@pytest.mark.parametrize("name", REAL_LMS)
def test_gradient_pass_scores_the_same_prompts_as_score_sequences(name):
    # the gradient forward sees the model's own embeddings (Gemma-3 scales them by sqrt(640) ~ 25 inside its
    # embedding module): its activation and cross-entropy equal plain scoring of the same prompts
    lm, probe = real_lm_with_mid_probe(name)
    layout = make_layout(lm.tokenizer, 6, suffix=" and")
    spans = torch.randint(100, 5000, (3, 6), generator=torch.Generator().manual_seed(0))
    owners = torch.tensor([0, 1, 0])
    _, act, xent = token_gradients(lm.model, probe, layout, spans, torch.tensor([0.5, 1.0, 2.0]), row_targets=owners)
    scored = score_sequences(lm.model, probe, layout.full(spans), xent_span=layout.span)
    want = scored.activation.gather(1, owners[:, None]).squeeze(1)
    # fp32 reduction-order noise differs between CPUs and batch shapes; values are of order 1-10, and a
    # missing embedding scale changes them by far more than this
    torch.testing.assert_close(act, want, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(xent, scored.xentropy, rtol=1e-3, atol=1e-3)
