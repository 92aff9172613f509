"""Starting spans and gradient-guided swaps."""

import torch

from dreamy.language.gradients import top_tokens
from dreamy.language.proposals import initial_spans, swap_children
from dreamy.language.tokens import allowed_tokens


def test_swaps_use_top_k_allowed_tokens_at_one_position(tiny_lm):
    allowed = allowed_tokens(tiny_lm.tokenizer)
    grad = torch.randn(2, 5, len(allowed), generator=torch.Generator().manual_seed(0))
    spans = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(1))
    children = swap_children(spans, top_tokens(grad, allowed, 4), children=20, generator=torch.Generator().manual_seed(2))
    assert children.shape == (40, 5)
    for i, child in enumerate(children):
        owner = i // 20
        changed = (child != spans[owner]).nonzero().flatten()
        assert len(changed) <= 1
        for pos in changed:
            top = grad[owner, pos].masked_fill(~allowed, float("-inf")).topk(4).indices
            assert child[pos] in top and allowed[child[pos]]


def test_initial_spans_from_text_or_random(tiny_lm):
    allowed = allowed_tokens(tiny_lm.tokenizer)
    from_text = initial_spans(tiny_lm.tokenizer, allowed, 2, 5, init="the cat", generator=torch.Generator())
    assert from_text.shape == (2, 5) and torch.equal(from_text[0], from_text[1])
    rand = initial_spans(tiny_lm.tokenizer, allowed, 3, 4, init=None, generator=torch.Generator().manual_seed(0))
    assert allowed[rand].all()
