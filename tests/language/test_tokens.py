"""Allowed tokens, retokenization and duplicate filters."""

import logging

import pytest
import torch

from dreamy.language.tokens import allowed_tokens, filter_candidates, survives_retokenization


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
    bad = tok.convert_tokens_to_ids(list("the"))
    with caplog.at_level(logging.WARNING):
        kept = filter_candidates(tok, [[bad], [bad, bad]])
    assert kept == [[], []] and "no candidate survived" in caplog.text


def test_filter_keeps_distinct_survivors_per_group_in_order(tiny_lm):
    tok = tiny_lm.tokenizer
    a, b = tok("the cat sat")["input_ids"][:3], tok("a dog ran")["input_ids"][:3]
    bad = tok.convert_tokens_to_ids(list("the"))
    kept = filter_candidates(tok, [[b, a, b, bad], [a]])
    assert kept == [[tuple(b), tuple(a)], [tuple(a)]]
    assert filter_candidates(tok, [[bad, a]], retokenize=False) == [[tuple(bad), tuple(a)]]
